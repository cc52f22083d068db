"""The archive the demo scores (``synth archive``): one fold's slides of a cohort and four bad
files, on a cohort of four rendered patients."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_training import render_tiny_cohort

from pathgen_batch.cli import main
from pathgen_batch.cohort import load_cohort
from pathgen_batch.errors import DataError
from pathgen_batch.synth.archive import BAD_FILES, TRUNCATED_BYTES, held_out_archive


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("four") / "cohort"
    render_tiny_cohort(root, 4)  # two folds of two patients
    return root


def test_archive_holds_the_folds_slides_and_four_bad_files(
    four: Path, tmp_path: Path, openslide_fixtures: Path
) -> None:
    cohort = load_cohort(str(four))
    fold0 = {p for p, f in zip(cohort.patient_ids, cohort.folds(), strict=True) if f == 0}
    want = cohort.slides[cohort.slides["patient_id"].isin(fold0)]["slide_id"].tolist()
    assert 0 < len(want) < len(cohort.slide_ids)
    out = tmp_path / "archive"
    a = held_out_archive(four, out, fold=0)
    assert a.slide_ids == want and a.bad_files == list(BAD_FILES)
    assert a.summary() == f"{out}: {len(want)} held-out slides + 4 bad files"
    srcs = [cohort.slide_path(s) for s in want]
    assert sorted(p.name for p in out.iterdir()) == sorted([*(s.name for s in srcs), *BAD_FILES])
    for src in srcs:
        assert (out / src.name).read_bytes() == src.read_bytes()
    assert (out / "truncated.tiff").read_bytes() == srcs[0].read_bytes()[:TRUNCATED_BYTES]
    assert srcs[0].stat().st_size > TRUNCATED_BYTES  # so it is cut short
    assert (out / "empty.svs").stat().st_size == 0
    assert (out / "notes.svs").read_text() == "not a slide\n"
    fixture = openslide_fixtures / "unreadable.svs"
    assert (out / "unreadable.svs").read_bytes() == fixture.read_bytes()
    # a rerun keeps what is there; without bad files only the slides are written
    again = held_out_archive(four, out, fold=0)
    assert again == a
    only = held_out_archive(four, tmp_path / "only", fold=1, bad_files=False)
    assert only.bad_files == [] and len(list((tmp_path / "only").iterdir())) == len(only.slide_ids)
    assert not set(only.slide_ids) & set(a.slide_ids)


def test_archive_of_an_empty_fold_is_one_line_naming_the_folds(four: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no patients in fold 7 \(folds: 0, 1\)"):
        held_out_archive(four, tmp_path / "a", fold=7)
    r = CliRunner().invoke(main, ["synth", "archive", str(four), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("held-out slides + 4 bad files")
    r = CliRunner().invoke(
        main, ["synth", "archive", str(four), "--out", str(tmp_path / "c"), "--fold", "7"]
    )
    assert r.exit_code == 2 and "no patients in fold 7" in r.output
