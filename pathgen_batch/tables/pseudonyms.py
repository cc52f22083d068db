"""Pseudonyms: slide ids, patient ids and source URIs replaced by keyed hashes.

With a key file (``pathgen-batch score --pseudonymise KEYFILE``), every identifier of a slide
that would reach a table, a run's state files, a log line or a report becomes

    ps-<the first 16 hex digits of HMAC-SHA256(key, identifier as UTF-8)>

so results can be joined back to patients only by whoever holds the key (hash the known ids
with the same key: :meth:`Pseudonymiser.token`). The key is the key file's bytes with
surrounding white space removed, at least 16 of them (``openssl rand -hex 32 > KEYFILE``); it
is never written anywhere, and its id (:attr:`Pseudonymiser.key_id`, a hash of a fixed text)
tells runs made with different keys apart without revealing it.

A scoring run reads its slides through their real locations: :class:`SourceMap` (made by the
driver, sent to the workers without the key) turns a pseudonymised source back into the real
one for staging, and scrubs the real location out of error messages;
:mod:`pathgen_batch.tables.redaction` does the same for every log record of the driver and
the workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pathgen_batch.errors import ConfigError
from pathgen_batch.storage import SlideSource, basename, is_s3, local_path, split_s3

PREFIX = "ps-"
HEX_DIGITS = 16
MIN_KEY_BYTES = 16
ID_COLUMNS = ("slide_id", "patient_id", "source_uri", "slide_uri")


class Pseudonymiser:
    """Keyed hashes of identifiers (see the module docstring). The key never shows in a repr."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"pseudonym key: expected at least {MIN_KEY_BYTES} bytes, got {len(key)}"
            )
        self._key = key

    @classmethod
    def from_file(cls, path: str | Path) -> Pseudonymiser:
        p = Path(path).expanduser()
        try:
            key = p.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"--pseudonymise {p}: cannot read the key file ({e.strerror})") from e
        try:
            return cls(key)
        except ConfigError as e:
            raise ConfigError(f"--pseudonymise {p}: {e}") from None

    def __repr__(self) -> str:
        return f"Pseudonymiser(key_id={self.key_id!r})"

    def token(self, value: str) -> str:
        """``ps-<16 hex>`` of ``value``."""
        mac = hmac.new(self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return PREFIX + mac.hexdigest()[:HEX_DIGITS]

    @property
    def key_id(self) -> str:
        return self.token("pathgen-batch key id")

    def optional(self, value: str | None) -> str | None:
        return None if value is None else self.token(value)

    def source(self, src: SlideSource) -> SlideSource:
        """``src`` as every output sees it: its URI, slide id and patient id pseudonymised."""
        return dataclasses.replace(
            src,
            uri=self.token(src.uri),
            slide_id=self.token(src.slide_id),
            patient_id=self.optional(src.patient_id),
        )

    def column(self, values: Iterable[object]) -> list[str | None]:
        """A column of identifiers (None, NaN and empty values kept as None)."""
        return [None if v is None or v != v or v == "" else self.token(str(v)) for v in values]

    def frame(self, table: pd.DataFrame) -> pd.DataFrame:
        """A copy of a side table (clinical, expression) with its id columns pseudonymised,
        so that it joins the tables of a pseudonymised run."""
        out = table.copy()
        for col in ID_COLUMNS:
            if col in out.columns:
                out[col] = self.column(out[col].tolist())
        return out


def _spellings(src: SlideSource) -> list[str]:
    """The ways a slide's real location or name can show in an error message, longest first."""
    out = {src.uri, basename(src.uri), src.slide_id}
    if is_s3(src.uri):
        out.add(split_s3(src.uri)[1])  # the key, as botocore's messages name it
    else:
        p = local_path(src.uri)
        out |= {str(p), str(p.resolve()), p.stem}
    return sorted((s for s in out if s), key=len, reverse=True)


@dataclass(frozen=True)
class SourceMap:
    """Pseudonymised URI -> the real source, for the slides of one run (no key inside), and
    the pseudonyms of the real slide ids, patient ids and archive location (for log lines)."""

    real: Mapping[str, SlideSource]
    names: Mapping[str, str] = field(default_factory=dict)  # real id -> its pseudonym

    @classmethod
    def build(
        cls, sources: Iterable[SlideSource], ps: Pseudonymiser, archive: str | None = None
    ) -> SourceMap:
        srcs = list(sources)
        names = {s.slide_id: ps.token(s.slide_id) for s in srcs}
        names |= {s.patient_id: ps.token(s.patient_id) for s in srcs if s.patient_id}
        if archive:
            names[archive] = ps.token(archive)
        return cls({ps.token(s.uri): s for s in srcs}, names)

    def locate(self, src: SlideSource) -> SlideSource:
        """The real source of a pseudonymised one (as given when it is not pseudonymised)."""
        return self.real.get(src.uri, src)

    def scrub(self, text: str, src: SlideSource) -> str:
        """``text`` with the real location and name of ``src`` replaced by its pseudonym."""
        real = self.real.get(src.uri)
        if real is None:
            return text
        for spelling in _spellings(real):
            text = text.replace(spelling, src.uri)
        return text

    def replacements(self) -> dict[str, str]:
        """Every spelling of a real location or id -> the pseudonym that replaces it: a
        slide's ids and names by its slide id's pseudonym, its paths and URI by its URI's."""
        out: dict[str, str] = {}
        for token, real in self.real.items():
            for spelling in _spellings(real):
                out.setdefault(spelling, token)
        for name, token in self.names.items():
            out[name] = token
            if is_s3(name) and (prefix := split_s3(name)[1].rstrip("/")):
                out[prefix + "/"] = token  # the archive's prefix at the head of a key
            elif not is_s3(name) and name.startswith(("/", "file:")):
                out[str(local_path(name))] = token
        for real in self.real.values():
            stem = basename(real.uri).split(".", 1)[0]
            if stem and real.slide_id in self.names:
                out[stem] = self.names[real.slide_id]
        return out
