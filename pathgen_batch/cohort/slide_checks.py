"""Checking a cohort's slide files: present, readable by OpenSlide, with a known MPP.

Local slides are opened (headers only, no pixels); slides under ``s3://`` are checked for
existence, and their MPP is left to extraction, which stages them to local scratch.
"""

from __future__ import annotations

import pandas as pd

from pathgen_batch import storage
from pathgen_batch.errors import PathgenError, SlideNotFoundError
from pathgen_batch.slides import open_slide


def check_slide_files(slides: pd.DataFrame) -> list[tuple[int, str]]:
    """(0-based row, message) for every slide of ``slides`` (patient_id, slide_id, slide_uri,
    mpp) that is missing, unreadable or without MPP."""
    out: list[tuple[int, str]] = []
    for r, (uri, mpp) in enumerate(zip(slides["slide_uri"], slides["mpp"], strict=True)):
        if not uri:
            continue  # already reported
        if storage.is_s3(uri):
            try:
                if not storage.exists(uri):
                    out.append((r, f"{uri}: no such slide object"))
            except PathgenError as e:
                out.append((r, f"{uri}: cannot be reached ({e})"))
            continue
        try:
            with open_slide(uri, None if pd.isna(mpp) else float(mpp), direct=False) as s:
                if not s.has_mpp:
                    out.append((r, f"{uri}: the slide records no MPP; give it in column mpp"))
        except SlideNotFoundError:
            out.append((r, f"{uri}: no such slide file"))
        except PathgenError as e:
            out.append((r, f"unreadable slide ({e})"))
    return out
