"""Typed errors. Every error a user can cause derives from :class:`PathgenError`.

The CLI prints a ``PathgenError`` as one line (``Error: <message>``) and exits non-zero;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class PathgenError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ConfigError(PathgenError):
    """A configuration value or file is invalid."""


class AssetFetchError(PathgenError):
    """A data file could not be fetched from the package registry."""


class DataError(PathgenError):
    """An input table (expression, clinical, panel, features) is malformed."""


class SlideError(PathgenError):
    """Base class for errors about one slide file; carries the path."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class SlideNotFoundError(SlideError):
    """The slide path does not exist or is not a regular file."""


class UnsupportedSlideError(SlideError):
    """The file is not in a format OpenSlide (or the fallback reader) can open."""


class UnreadableSlideError(SlideError):
    """The file looks like a slide but its pixels cannot be read (truncated, corrupt, empty)."""


class MissingMPPError(SlideError):
    """The slide does not record its microns per pixel and no override was given."""


class NoTissueError(SlideError):
    """No tile of the slide holds enough tissue."""
