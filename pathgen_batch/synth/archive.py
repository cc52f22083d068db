"""An archive to score: the slides of one fold's patients copied into a folder, beside four bad
files (a truncated slide, an empty file, a text file named like a slide and a slide whose pixels
do not decode), so that a scoring run shows both its outputs and its failure reports.

The demo holds that fold out of training and scores this folder; ``synth archive`` writes it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pathgen_batch.assets import openslide_fixtures
from pathgen_batch.cohort import load_cohort
from pathgen_batch.errors import ConfigError, DataError

BAD_FILES = ("truncated.tiff", "notes.svs", "empty.svs", "unreadable.svs")  # as listed above
TRUNCATED_BYTES = 60_000


@dataclass(frozen=True)
class Archive:
    """What :func:`held_out_archive` wrote: the folder, the slides copied, the bad files."""

    root: Path
    slide_ids: list[str]
    bad_files: list[str]

    def summary(self) -> str:
        return (
            f"{self.root}: {len(self.slide_ids)} held-out slides + {len(self.bad_files)} bad files"
        )


def held_out_archive(
    cohort_dir: str | Path, out: str | Path, fold: int = 0, bad_files: bool = True
) -> Archive:
    """Copy the slides of the patients of ``fold`` (a local cohort) into ``out``, with the bad
    files of ``BAD_FILES`` when ``bad_files``. Slides already there are kept."""
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise ConfigError(f"fold: expected an integer >= 0, got {fold!r}")
    cohort = load_cohort(str(cohort_dir))
    folds = cohort.folds()
    patients = {p for p, f in zip(cohort.patient_ids, folds, strict=True) if f == fold}
    if not patients:
        have = ", ".join(str(f) for f in sorted(set(folds.tolist())))
        raise DataError(f"{cohort_dir}: no patients in fold {fold} (folds: {have})")
    ids = cohort.slides.loc[cohort.slides["patient_id"].isin(patients), "slide_id"].tolist()
    files = [cohort.slide_path(s) for s in ids]
    names = [f.name for f in files]
    clash = sorted({n for n in names if names.count(n) > 1} | set(names) & set(BAD_FILES))
    if clash:
        raise DataError(f"{cohort_dir}: slides of fold {fold} share file names {clash[:3]}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for src in files:
        dst = root / src.name
        if not dst.exists():
            shutil.copyfile(src, dst)
    if not bad_files:
        return Archive(root, ids, [])
    with files[0].open("rb") as f:
        (root / "truncated.tiff").write_bytes(f.read(TRUNCATED_BYTES))
    (root / "notes.svs").write_text("not a slide\n")
    (root / "empty.svs").write_bytes(b"")
    shutil.copyfile(openslide_fixtures() / "unreadable.svs", root / "unreadable.svs")
    return Archive(root, ids, list(BAD_FILES))


__all__ = ["BAD_FILES", "TRUNCATED_BYTES", "Archive", "held_out_archive"]
