"""Write a run's report: ``<out>/index.html`` with its pictures in ``<out>/img/*.png``.

The page references only files under ``<out>`` (no external URLs, no scripts), so it reads
offline and can be copied as one folder.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from PIL import Image

from pathgen_batch import storage
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation.fidelity import expression_fidelity
from pathgen_batch.report import plots
from pathgen_batch.report.data import (
    RunTables,
    clinical_frame,
    fill_patient_ids,
    lineage_rows,
    load_run,
    read_frame,
    synthetic_vs_real,
)
from pathgen_batch.report.heatmap import attention_map, blend, thumbnail_canvas, tile_extent
from pathgen_batch.report.outcomes import confusion_matrix, risk_groups, survival_summary
from pathgen_batch.tables.pseudonyms import Pseudonymiser

log = logging.getLogger(__name__)

_CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:#555;text-align:center}
img{border:1px solid #ddd;max-width:100%}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}pre{margin:0;font-size:11px;white-space:pre-wrap}
.note{color:#777;font-size:12px}
"""


@dataclass(frozen=True)
class ReportConfig:
    """slides: how many slides get a panel (highest risk first); thumb_px: longer side of
    thumbnails; alpha: heatmap opacity at the highest attention; cmap: heatmap colours."""

    slides: int = 12
    thumb_px: int = 512
    alpha: float = 0.6
    cmap: str = "inferno"

    def __post_init__(self) -> None:
        if isinstance(self.slides, bool) or not isinstance(self.slides, int) or self.slides < 0:
            raise ConfigError(f"ReportConfig.slides: expected an integer >= 0, got {self.slides!r}")
        if isinstance(self.thumb_px, bool) or not isinstance(self.thumb_px, int):
            raise ConfigError(f"ReportConfig.thumb_px: expected an integer, got {self.thumb_px!r}")
        if not 32 <= self.thumb_px <= 4096:
            raise ConfigError(f"ReportConfig.thumb_px: expected 32..4096, got {self.thumb_px}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"ReportConfig.alpha: expected a value in (0, 1], got {self.alpha}")


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: object, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


class _Page:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.img = out / "img"
        self.img.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: plots.Figure, name: str, caption: str = "") -> str:
        plots.save(fig, self.img / name)
        return self.ref(name, caption)

    def array(self, rgb: np.ndarray, name: str, caption: str = "") -> str:
        Image.fromarray(rgb).save(self.img / name)
        return self.ref(name, caption)

    def ref(self, name: str, caption: str) -> str:
        cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="img/{_e(name)}" alt="{_e(caption or name)}">{cap}</figure>'

    def write(self, title: str) -> Path:
        body = "\n".join(self.parts)
        doc = (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
            "</body></html>\n"
        )
        path = self.out / "index.html"
        storage.write_bytes(path, doc.encode("utf-8"))
        return path


def _table(rows: list[tuple[str, str]], pre: bool = False) -> str:
    cells = []
    for k, v in rows:
        val = f"<pre>{_e(v)}</pre>" if pre and "\n" in v else _e(v)
        cells.append(f"<tr><th>{_e(k)}</th><td>{val}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _slide_section(page: _Page, i: int, row: pd.Series, run: RunTables, cfg: ReportConfig) -> None:
    sid = str(row["slide_id"])
    att = run.attention.filter(pc.equal(run.attention["slide_id"], sid)).to_pandas()
    page.add(f'<h3 id="slide-{i}">{i + 1}. {_e(sid)}</h3>')
    classes = [str(c) for c in row["grade_classes"]]
    probs = [float(p) for p in row["grade_probs"]]
    gset = row["grade_set"]
    members = [str(c) for c in gset] if gset is not None else None
    in_set = [c in members for c in classes] if members is not None else [False] * len(classes)
    in_set[int(row["grade_pred_index"])] = in_set[int(row["grade_pred_index"])] or members is None
    figs = []
    if att.empty:
        figs.append('<p class="note">no tile attention rows for this slide</p>')
    else:
        size_l0 = int(att["size_l0"].iloc[0])
        extent = tile_extent(att["x"].to_numpy(), att["y"].to_numpy(), size_l0)
        canvas = thumbnail_canvas(run.thumbnails.get(sid), cfg.thumb_px, extent)
        figs.append(page.array(canvas.image, f"slide{i:03d}_thumb.png", "slide"))
        for f, fam in enumerate(sorted(att["family"].unique())):
            sub = att[att["family"] == fam]
            amap = attention_map(
                sub["x"].to_numpy(),
                sub["y"].to_numpy(),
                size_l0,
                sub["attention"].to_numpy(),
                canvas.dims_l0,
                canvas.image.shape[:2],
            )
            over = blend(canvas.image, amap, alpha=cfg.alpha, cmap=cfg.cmap)
            figs.append(page.array(over, f"slide{i:03d}_attn{f:02d}.png", f"attention: {fam}"))
        if not canvas.is_thumbnail:
            figs.append(f'<p class="note">{_e(canvas.source)}</p>')
    page.add('<div class="row">' + "".join(figs) + "</div>")
    probs_fig = page.figure(
        plots.grade_probs(classes, probs, in_set), f"slide{i:03d}_grade.png", "grade probabilities"
    )
    lo, hi = row.get("risk_lo"), row.get("risk_hi")
    interval = "n/a" if lo is None or pd.isna(lo) else f"[{_fmt(lo)}, {_fmt(hi)}]"
    info = [
        ("patient", _fmt(row.get("patient_id"))),
        ("tiles", _fmt(row.get("n_tiles"))),
        ("predicted grade", str(row["grade_pred"])),
        (
            "prediction set",
            "n/a (no calibration)"
            if members is None
            else f"{{{', '.join(members)}}} (alpha {_fmt(row.get('grade_set_alpha'))})",
        ),
        ("risk", _fmt(float(row["risk"]))),
        ("risk interval", f"{interval} (alpha {_fmt(row.get('risk_interval_alpha'))})"),
        ("risk group (relative)", _fmt(row.get("risk_group"))),
        (
            "median survival",
            f"bin {_fmt(row.get('median_survival_bin'))} "
            f"({_fmt(row.get('median_survival_group'))})",
        ),
        ("source", str(row["source_uri"])),
    ]
    page.add('<div class="row">' + probs_fig + _table(info) + "</div>")


def _cut_values(preds: pd.DataFrame) -> list[float]:
    """The fusion model's risk-group cut points (one model per run: the first row's)."""
    cuts = preds["risk_cuts"].iloc[0] if "risk_cuts" in preds else None
    return [] if cuts is None else [float(c) for c in cuts]


def _cuts(preds: pd.DataFrame) -> str:
    cuts = _cut_values(preds)
    return ", ".join(_fmt(c) for c in cuts) if cuts else "none (model without cut points)"


def _outcomes(page: _Page, run: RunTables, clinical: pd.DataFrame) -> None:
    preds = run.predictions
    joined = clinical_frame(preds, clinical)
    page.add(f"<h2>Outcomes</h2><p>{len(joined)} scored slides matched the clinical table.</p>")
    if {"time", "event"} <= set(joined.columns):
        groups, how = risk_groups(joined["risk"].to_numpy(), joined["risk_group"].to_numpy())
        s = survival_summary(
            joined["time"].to_numpy(),
            joined["event"].to_numpy(),
            joined["risk"].to_numpy(),
            groups,
            how,
        )
        note = (
            "relative risk group (the fusion model's risk cut points)"
            if how == "risk_group"
            else "a split at the median risk (the fusion model has no risk cut points)"
        )
        page.add(page.figure(plots.kaplan_meier(s), "km.png", f"Kaplan-Meier by {note}"))
        page.add(
            _table(
                [
                    ("slides with outcome", str(s.n)),
                    ("risk cut points", _cuts(preds)),
                    (
                        "slides per group",
                        ", ".join(f"{c.group} {c.n} ({c.n_events} events)" for c in s.curves),
                    ),
                    ("log-rank chi2 / p", f"{_fmt(s.logrank_chi2)} / {_fmt(s.logrank_p)}"),
                    ("Harrell C-index (risk)", _fmt(s.c_index)),
                ]
            )
        )
    else:
        page.add('<p class="note">no time/event columns: no survival curves</p>')
    known = joined["true_grade_index"].to_numpy() >= 0
    if known.any():
        classes = [str(c) for c in preds["grade_classes"].iloc[0]]
        cm = confusion_matrix(
            joined["true_grade_index"].to_numpy(),
            joined["grade_pred_index"].to_numpy(),
            len(classes),
        )
        acc = np.trace(cm) / max(1, cm.sum())
        page.add(
            page.figure(
                plots.confusion(classes, cm), "confusion.png", f"grade (accuracy {acc:.2f})"
            )
        )
    else:
        page.add('<p class="note">no grade column: no confusion matrix</p>')


def _fidelity(page: _Page, run: RunTables, expression: pd.DataFrame) -> None:
    if run.transcriptomes is None:
        raise DataError(f"run {run.run_id}: no transcriptomes table to compare with expression")
    real, syn = synthetic_vs_real(run.predictions, run.transcriptomes, expression)
    rep = expression_fidelity(real, syn, list(real.columns))
    page.add("<h2>Expression fidelity</h2>")
    page.add(
        page.figure(
            plots.fidelity(rep.per_gene["gene"].tolist(), rep.per_gene["pearson"].to_numpy()),
            "fidelity.png",
            f"per-gene Pearson r across {len(real)} slides",
        )
    )
    summ = rep.summary
    page.add(
        _table(
            [
                ("genes", _fmt(summ["n_genes"])),
                (
                    "mean / median Pearson",
                    f"{_fmt(summ['mean_pearson'])} / {_fmt(summ['median_pearson'])}",
                ),
                (f"genes with r > 0 and q < {summ['fdr']}", _fmt(summ["n_significant_pearson"])),
            ]
        )
    )


def write_report(
    output: str,
    out_dir: str | Path,
    *,
    run_id: str | None = None,
    clinical: str | None = None,
    expression: str | None = None,
    config: ReportConfig | None = None,
    pseudonyms: Pseudonymiser | None = None,
) -> Path:
    """Write the report of ``run_id`` (default: the latest complete run) under ``output``.

    clinical: CSV/Parquet with slide_id or patient_id, time, event, grade or grade_index;
    expression: CSV/Parquet with patient_id (or slide_id) and one column per gene.
    pseudonyms: the key of a pseudonymised run: the ids of the clinical and expression tables
    are pseudonymised the same way before they are joined, so none reaches the page.
    Returns the path of ``index.html``.
    """
    cfg = config or ReportConfig()
    run = load_run(output, run_id, thumbnails=cfg.slides)
    clin = read_frame(clinical, "clinical table") if clinical is not None else None
    expr = read_frame(expression, "expression table") if expression is not None else None
    if pseudonyms is not None:
        clin = pseudonyms.frame(clin) if clin is not None else None
        expr = pseudonyms.frame(expr) if expr is not None else None
    if clin is not None:
        fill_patient_ids(run.predictions, clin)
    page = _Page(Path(out_dir))
    preds = run.predictions
    page.add(f"<h1>Scoring run {_e(run.run_id)}</h1>")
    page.add(f"<p>{len(preds)} scored slides, output {_e(run.output)}.</p>")
    page.add("<h2>Cohort</h2>")
    classes = [str(c) for c in preds["grade_classes"].iloc[0]]
    counts = np.bincount(preds["grade_pred_index"].to_numpy(), minlength=len(classes))
    page.add(
        '<div class="row">'
        + page.figure(
            plots.risk_distribution(
                preds["risk"].to_numpy(),
                preds["risk_group"].fillna("no cut points").to_numpy(),
                _cut_values(preds),
            ),
            "risk.png",
            "risk",
        )
        + page.figure(plots.grade_distribution(classes, counts), "grades.png", "grade")
        + "</div>"
    )
    if clin is not None:
        _outcomes(page, run, clin)
    if expr is not None:
        _fidelity(page, run, expr)
    shown = preds.head(cfg.slides)
    page.add(f"<h2>Slides ({len(shown)} of {len(preds)}, highest risk first)</h2>")
    for i, (_, row) in enumerate(shown.iterrows()):
        _slide_section(page, i, row, run, cfg)
    page.add("<h2>Lineage</h2>")
    page.add(_table(lineage_rows({**run.run, "run_id": run.run_id}), pre=True))
    return page.write(f"pathgen-batch report: {run.run_id}")
