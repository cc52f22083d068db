"""``cohort init``: an empty cohort folder to fill in, with a README of the columns."""

from __future__ import annotations

from pathlib import Path

from pathgen_batch.cohort.format import FORMAT_VERSION, PANEL, SETTINGS, CohortSettings
from pathgen_batch.errors import ConfigError

README = f"""# A cohort folder (pathgen_batch cohort format {FORMAT_VERSION})

Fill in the tables (CSV here; Parquet files with the same names and columns work too), put the
slides under `slides/` (or anywhere: `slide_uri` may be absolute or `s3://`), then run
`pathgen-batch cohort validate .` until it prints the inventory.

## clinical.csv: one row per patient
| column | required | meaning |
|---|---|---|
| patient_id | yes | any text, unique |
| grade | no | a grade class (ordered in cohort.toml unless numbers); empty = unknown |
| time | no | follow-up time (any unit, >= 0); empty = unknown outcome |
| event | no | 1/0 or true/false: the event was observed at `time`; empty = unknown outcome |
| fold | no | cross-validation fold (0, 1, ...) of every patient, or none: folds are made |
| anything else | no | a covariate, kept as given |

## slides.csv: one row per slide (several per patient allowed)
| column | required | meaning |
|---|---|---|
| patient_id | yes | a patient of clinical.csv |
| slide_id | yes | unique; names the slide's features and predictions |
| slide_uri | yes | a path relative to this folder (no `..`), absolute, or `s3://bucket/key` |
| mpp | no | microns per pixel at level 0, for slides that do not record it |

Instead of slides.csv, clinical.csv may carry `slide_id`, `slide_uri` (and `mpp`) itself, one
row per slide with the patient's columns repeated.

## expression.csv: one row per patient with RNA
`patient_id`, then one column per gene (at least every gene of gene_panel.csv; others are
ignored). Values in the unit declared in cohort.toml: `log2` or `z` are used as given; `tpm`,
`fpkm` and `counts` become log2(x + 1). No missing values; no negative values for tpm, fpkm
or counts. A patient without RNA has no row: the generator and the models fed real expression
leave it out, the slide-only models and those fed synthetic expression use it.

## gene_panel.csv: the genes the models use, in order
`gene,family`: each gene of the panel and its family (one token per family in the models).

## cohort.toml (optional)
```toml
{CohortSettings(grade_classes=("G1", "G2", "G3")).to_toml()}```
"""

FILES = {
    "clinical.csv": "patient_id,grade,time,event\n",
    "slides.csv": "patient_id,slide_id,slide_uri,mpp\n",
    "expression.csv": "patient_id\n",
    PANEL: "gene,family\n",
    SETTINGS: CohortSettings().to_toml(),
    "README.md": README,
}


def init_cohort(out_dir: str | Path) -> list[Path]:
    """Write the template into ``out_dir`` (created); refuses to replace any existing file."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a folder")
    taken = [name for name in FILES if (root / name).exists()]
    if taken:
        raise ConfigError(f"{root}: already holds {taken}; choose an empty or new folder")
    (root / "slides").mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in FILES.items():
        (root / name).write_text(text)
        written.append(root / name)
    return written
