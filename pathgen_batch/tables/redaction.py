"""Log redaction for pseudonymised runs: real slide locations and ids out of every log record.

A pseudonymised run (:mod:`pathgen_batch.tables.pseudonyms`) writes its tables with pseudonyms
only, but the libraries it runs log what they touch: the slide reader names the file it opened,
botocore names the key it retries, an error names the path it failed on. :func:`redacting`
installs a log record factory in the process (the driver, and each Ray worker of the run) that
rewrites every record, of every logger, as it is made: its message (arguments applied), its
exception text and its stack, with each spelling of a run's real locations and ids replaced by
its pseudonym (:meth:`.pseudonyms.SourceMap.replacements`).

Matching is by word, so its cost does not grow with the archive: a message is split into words
at path and punctuation characters, each word cut at its first ``.`` (``P12.svs`` -> ``P12``),
and only the spellings whose last word is among them are tried, as whole words (a slide id
``S1`` is not replaced inside ``PS10``).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

_DELIMITERS = re.compile(r"[\s/\\:'\"(),;=\[\]{}<>|`]+")
_WORD = "A-Za-z0-9_-"


def _keys(text: str) -> list[str]:
    """The words of ``text``, each cut at its first ``.``."""
    return [w.split(".", 1)[0] or w for w in _DELIMITERS.split(text) if w]


@functools.lru_cache(maxsize=512)
def _pattern(spellings: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(re.escape(s) for s in spellings)
    return re.compile(f"(?<![{_WORD}])(?:{alts})(?![{_WORD}])")


class Redactor:
    """Replaces the given spellings (whole words, longest first) by their pseudonyms."""

    def __init__(self, replacements: Mapping[str, str]) -> None:
        self._repl = {k: v for k, v in replacements.items() if k and k != v}
        self._by_key: dict[str, set[str]] = {}
        for spelling in self._repl:
            keys = _keys(spelling)
            if keys:
                self._by_key.setdefault(keys[-1], set()).add(spelling)

    def __call__(self, text: str) -> str:
        found: set[str] = set()
        for key in _keys(text):
            found |= self._by_key.get(key, set())
        if not found:
            return text
        order = tuple(sorted(found, key=lambda s: (-len(s), s)))
        return _pattern(order).sub(lambda m: self._repl[m.group(0)], text)

    def record(self, record: logging.LogRecord) -> logging.LogRecord:
        """``record`` with its message, exception text and stack redacted (arguments applied)."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format: keep what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self(message), ()
        if record.exc_info:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self(text), None
        elif record.exc_text:
            record.exc_text = self(record.exc_text)
        if record.stack_info:
            record.stack_info = self(record.stack_info)
        return record


def install(redactor: Redactor) -> Callable[[], None]:
    """Redact every log record made in this process from now on; returns the undo."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redactor.record(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)

    def undo() -> None:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)

    return undo


@contextmanager
def redacting(redactor: Redactor | None) -> Iterator[None]:
    """Every log record made inside the block redacted by ``redactor`` (None: as made)."""
    if redactor is None:
        yield
        return
    undo = install(redactor)
    try:
        yield
    finally:
        undo()
