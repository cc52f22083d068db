"""The README's results section is generated from the committed summary.json of the reference
evaluation, and the verdicts on the paper's claims follow the summary's numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pathgen_batch.cli import main
from pathgen_batch.training.results_table import (
    BEGIN,
    block,
    claims,
    current_block,
    read_summary,
    results_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = "benchmarks/results/summary.json"


def _stats(mean: float, sd: float = 0.05) -> dict:
    return {"mean": mean, "sd": sd, "folds": 5}


def _test(d: float, p: float) -> dict:
    return {"mean_difference": d, "p_corrected": p, "p_holm": min(1.0, 3 * p), "mdd": 0.1}


SMALL = {
    "repeats": {"n": 1, "folds": 5, "seeds": [0]},
    "data": {"patients": 198, "events": 51},
    "seconds": 100.0,
    "config": {"alpha": 0.1},
    "conditions": {"synthetic": "fusion + synthetic transcriptome"},
    "metrics": {
        "synthetic": {"harrell_c": _stats(0.62), "macro_auc": _stats(0.70)},
        "wsi_trained": {"harrell_c": _stats(0.55), "macro_auc": _stats(0.69)},
    },
    "fidelity": {
        "generator": {"mean_pearson": _stats(0.30), "mae": _stats(0.6)},
        "ridge": {"mean_pearson": _stats(0.25), "mae": _stats(0.6)},
    },
    "paired": {
        "synthetic vs wsi_trained": {"harrell_c": _test(0.07, 0.01), "macro_auc": _test(0.01, 0.4)},
        "synthetic vs attention_mil": {"harrell_c": _test(-0.02, 0.5)},
        "real vs coxnet": {"harrell_c": _test(-0.05, 0.2)},
        "generator vs ridge": {"mean_pearson": _test(0.05, 0.02)},
    },
    "equivalence": {
        "synthetic vs real": {
            "harrell_c": {
                "mean_difference": 0.01,
                "margin": 0.03,
                "p_tost": 0.2,
                "equivalent": False,
            },
            "macro_auc": {
                "mean_difference": 0.0,
                "margin": 0.03,
                "p_tost": 0.01,
                "equivalent": True,
            },
        }
    },
    "conformal": {"grade_coverage": _stats(0.91), "grade_set_size": _stats(2.1)},
}


def test_claim_verdicts_follow_the_numbers() -> None:
    got = {c: v for c, v, _ in claims(SMALL)}
    assert got["fusion + synthetic beats the trained WSI-only fusion on Harrell C"] == "holds"
    assert got["fusion + synthetic beats the trained WSI-only fusion on grade macro AUC"] == (
        "not shown"
    )  # a positive difference, Holm p 1.0
    assert got["fusion + synthetic beats attention MIL on Harrell C"] == "does not hold"
    assert got["fusion + synthetic beats attention MIL on grade macro AUC"] == "not measured"
    assert got["synthetic equivalent to real on Harrell C"] == "not shown"
    assert got["synthetic equivalent to real on grade macro AUC"] == "holds"
    assert got["the generator beats ridge on fidelity"] == "holds"
    assert got["fusion + real at least CoxNet on Harrell C"] == "does not hold"
    assert got["conformal coverage within 0.02 of 1 - alpha"] == "holds"
    worse = copy.deepcopy(SMALL)
    worse["fidelity"]["generator"]["mean_pearson"]["mean"] = 0.2
    worse["conformal"]["grade_coverage"]["mean"] = 0.95
    got = {c: v for c, v, _ in claims(worse)}
    assert got["the generator beats ridge on fidelity"] == "does not hold"
    assert got["conformal coverage within 0.02 of 1 - alpha"] == "does not hold"
    # some patients without expression: the TOST on the same patients as real decides
    partial = copy.deepcopy(SMALL)
    same = copy.deepcopy(SMALL["equivalence"]["synthetic vs real"])
    same["harrell_c"]["equivalent"], same["macro_auc"]["equivalent"] = True, False
    partial["equivalence"]["synthetic_rna vs real"] = same
    got = {c: v for c, v, _ in claims(partial)}
    assert got["synthetic equivalent to real on Harrell C"] == "holds"
    assert got["synthetic equivalent to real on grade macro AUC"] == "not shown"
    text = results_markdown(SMALL, "x.json")
    assert "| fusion + synthetic transcriptome (`synthetic`) | 0.620 +- 0.050 |" in text
    assert "| synthetic vs wsi_trained | harrell_c | +0.070 | 0.01 | 0.03 | 0.100 |" in text


def test_readme_results_are_those_of_the_committed_summary() -> None:
    readme = (ROOT / "README.md").read_text()
    if not (ROOT / SUMMARY).exists():
        assert BEGIN not in readme, f"README.md has a results block but {SUMMARY} is missing"
        pytest.skip(f"no reference summary committed yet ({SUMMARY})")
    summary = read_summary(ROOT / SUMMARY)
    assert current_block(readme, "README.md") == block(summary, SUMMARY), (
        f"README.md's results differ from {SUMMARY}: run "
        f"`pathgen-batch results {SUMMARY} --readme README.md`"
    )
    assert summary["repeats"]["n"] >= 1 and "wsi_trained" in summary["metrics"]


def test_cli_writes_and_checks_the_block(tmp_path: Path) -> None:
    s = tmp_path / "summary.json"
    s.write_text(json.dumps(SMALL))
    md = tmp_path / "README.md"
    md.write_text(
        "# x\n\n<!-- results:begin (generated by `pathgen-batch results`; do not edit) -->\n"
        "STALE\n<!-- results:end -->\ntail\n"
    )
    run = CliRunner()
    r = run.invoke(main, ["results", str(s), "--readme", str(md), "--check"])
    assert r.exit_code == 1 and "differ" in r.output
    r = run.invoke(main, ["results", str(s), "--readme", str(md)])
    assert r.exit_code == 0 and "written" in r.output
    assert md.read_text().endswith("<!-- results:end -->\ntail\n") and "STALE" not in md.read_text()
    r = run.invoke(main, ["results", str(s), "--readme", str(md), "--check"])
    assert r.exit_code == 0 and "match" in r.output
    r = run.invoke(main, ["results", str(tmp_path / "none.json")])
    assert r.exit_code == 2 and "none.json: no such file" in r.output
