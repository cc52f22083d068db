"""Building, reusing and loading the semi-synthetic cohort, in the cohort format.

The folder follows :mod:`pathgen_batch.cohort.format`, so every reader loads it with
:func:`pathgen_batch.cohort.load_cohort`::

    slides/<slide_id>.tiff   one pyramidal Aperio-style TIFF per patient
    clinical.parquet         patient_id, slide_id, slide_uri, grade, time, event, fold, age, er
    expression.parquet       patient_id + one float column per gene (log2), in panel order
    gene_panel.csv           gene -> family (pathgen_batch.omics.GenePanel)
    cohort.toml              expression unit, grade classes, folds, seed

and, as this builder's own bookkeeping (no reader needs them)::

    composition.parquet      ground truth: program weights, target and rendered class shares,
                             morphology score and level (version 2),
                             tissue share and stain change of every slide
    cohort.json              config, counts, per-file sha256/bytes; written last, it marks
                             the build complete

Building is deterministic: the same config gives byte-identical files, whatever the number of
worker processes. Rebuilding into a complete folder with the same config reuses it; a
different config is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathgen_batch import __version__, assets, storage
from pathgen_batch.cohort import Cohort, CohortSettings, load_cohort
from pathgen_batch.cohort.splits import stratified_folds
from pathgen_batch.config import from_dict, to_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.synth.config import CohortConfig
from pathgen_batch.synth.data import GRADE_CLASSES, CohortData, cohort_data, fold_strata
from pathgen_batch.synth.morphology import morphology_scores
from pathgen_batch.synth.render import RenderParams
from pathgen_batch.synth.texture import TextureLibrary, build_library, default_sources
from pathgen_batch.synth.workers import SlideJob, run_jobs
from pathgen_batch.synth.writer import check_fits_in_memory

log = logging.getLogger(__name__)

FORMAT = "pathgen-cohort/1"
SLIDES = "slides"
TABLES = (
    "clinical.parquet",
    "expression.parquet",
    "gene_panel.csv",
    "cohort.toml",
    "composition.parquet",
)
META = "cohort.json"
OLD_TABLES = ("clinical.csv",)  # written by earlier versions; cleared on rebuild


@dataclass(eq=False)
class SynthCohort(Cohort):
    """A built semi-synthetic cohort: the cohort as every reader sees it, plus the builder's
    bookkeeping (``meta``: cohort.json; ``composition``: ground truth per slide)."""

    meta: dict[str, Any] = field(default_factory=dict)
    reused: bool = field(default=False, compare=False)  # build_cohort found it complete
    _composition: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def config(self) -> CohortConfig:
        return from_dict(CohortConfig, config_of_meta(self.meta))

    @property
    def composition(self) -> pd.DataFrame:
        """Ground truth per slide (read on first use)."""
        if self._composition is None:
            path = Path(self.root) / "composition.parquet"
            try:
                self._composition = pd.read_parquet(path)
            except FileNotFoundError as e:
                raise DataError(f"{path}: missing from the cohort folder") from e
        return self._composition

    def inventory(self) -> str:
        """The cohort's inventory plus how it was built: mode, slides, tissue, classes, disk."""
        m, root = self.meta, Path(self.root)
        n = self.n_patients
        lines = [
            super().inventory(),
            f"  built: mode {m['mode']} ({m['source']}), cohort version "
            f"{config_of_meta(m)['version']}, seed {m['seed']}, pathgen_batch {m['version']}",
        ]
        s = m["slide"]
        dims = " > ".join(f"{w}x{h}" for w, h in s["level_dimensions"])
        lines.append(
            f"  slides: {dims} px ({len(s['level_dimensions'])} levels) at {s['mpp']:g} um/px "
            f"({s['magnification']:g}x), JPEG q{s['jpeg_quality']} tiles {s['tile_px']} px"
        )
        comp = self.composition
        tf = comp["tissue_fraction"]
        lines.append(f"  tissue share: {tf.min():.2f}-{tf.max():.2f} (mean {tf.mean():.2f})")
        for cl in m["morphology_classes"]:
            k = cl["class"]
            col = comp[f"fraction_{k}"]
            lines.append(
                f"  class {k}: {cl['patches']} source patches, haematoxylin {cl['h_mean']:.2f}, "
                f"rendered share {col.mean():.2f} +- {col.std():.2f}"
            )
        slide_bytes = sum(
            (root / p).stat().st_size for p in m["files"] if p.startswith(SLIDES + "/")
        )
        total = sum((root / p).stat().st_size for p in m["files"])
        if "morphology_level" in comp.columns:
            lv = comp["morphology_level"]
            lines.append(
                f"  grade morphology of the tumour class: strength "
                f"{config_of_meta(m)['grade_morphology']:g}, slide level {lv.mean():.2f} +- "
                f"{lv.std():.2f} (0 = none)"
            )
        lines.append(
            f"  disk: {total / 1e6:.1f} MB ({slide_bytes / 1e6:.1f} MB slides, "
            f"{slide_bytes / max(n, 1) / 1e6:.2f} MB per slide)"
        )
        return "\n".join(lines)


def config_of_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The config of a cohort.json; cohorts built before versions existed are version 1."""
    cfg = dict(meta.get("config", {}))
    cfg.setdefault("version", 1)
    return cfg


def load_built_cohort(root: str | Path) -> SynthCohort:
    """A cohort this builder completed (its cohort.json exists), with its bookkeeping."""
    r = Path(root)
    meta_path = r / META
    if not meta_path.is_file():
        raise DataError(
            f"{r}: not a complete semi-synthetic cohort (no {META}); build it with "
            f"`pathgen-batch synth cohort --out {r}`, or check a cohort of your own with "
            f"`pathgen-batch cohort validate {r}`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    c = load_cohort(r)
    fields = {f.name: getattr(c, f.name) for f in dataclasses.fields(Cohort) if f.init}
    return SynthCohort(**fields, meta=meta)


# ---------------------------------------------------------------- building


def compositions(
    programs: np.ndarray, weight: float, concentration: float, seed: int
) -> np.ndarray:
    """(N, K) programs -> (N, K) slide compositions, partly explained by expression.

    ``c_i ~ Dirichlet(concentration * (weight * p_i + (1 - weight) * u_i))`` with an unexplained
    random composition ``u_i ~ Dirichlet(1, ..., 1)``.
    """
    rng = np.random.default_rng([seed, 21])
    n, k = programs.shape
    u = rng.dirichlet(np.ones(k), size=n)  # (N, K)
    mix = weight * programs + (1.0 - weight) * u  # (N, K)
    out = np.stack([rng.dirichlet(np.maximum(concentration * m, 1e-3)) for m in mix])
    return out / out.sum(1, keepdims=True)


def _is_known_entry(p: Path) -> bool:
    if p.name in TABLES + OLD_TABLES or p.name == META or p.name.startswith(f".{META}"):
        return True
    if p.name == SLIDES and p.is_dir():
        return all(
            c.is_file() and (c.suffix == ".tiff" or c.name.endswith(".part")) for c in p.iterdir()
        )
    return False


def _clear(root: Path) -> None:
    """Remove what a (partial) cohort build leaves; refuse folders holding anything else."""
    entries = list(root.iterdir())
    foreign = [p.name for p in entries if not _is_known_entry(p)]
    if foreign:
        raise ConfigError(
            f"{root}: folder holds files that are not part of a cohort ({sorted(foreign)[:5]}); "
            f"choose an empty or new folder"
        )
    meta = root / META
    if meta.exists():
        meta.unlink()  # first: the folder stops being complete before anything else goes
    for p in entries:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _files_intact(root: Path, meta: dict[str, Any]) -> bool:
    files = meta.get("files", {})
    return bool(files) and all(
        (root / p).is_file() and (root / p).stat().st_size == info["bytes"]
        for p, info in files.items()
    )


def build_cohort(
    out_dir: str | Path,
    config: CohortConfig | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> SynthCohort:
    """Build the cohort described by ``config`` into ``out_dir`` (or reuse it) and load it.

    workers: processes rendering slides (default: the machine's CPU count); results do not
    depend on it. With more than one, slides are rendered in spawned processes, so a script
    calling this must guard its entry point with ``if __name__ == "__main__":``.
    overwrite: replace a complete cohort built with a different config. Files that are not part
    of a cohort are never deleted: a folder holding any is refused.
    """
    cfg = (config or CohortConfig()).resolved()
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers < 1:
        raise ConfigError(f"workers: expected >= 1, got {n_workers}")
    check_fits_in_memory(cfg.slide_px, cfg.slide_px, min(n_workers, cfg.resolved_patients))
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a folder")
    meta_path = root / META
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = {}
        same = old.get("config") == json.loads(json.dumps(to_dict(cfg)))
        if same and _files_intact(root, old):
            log.info("%s: complete cohort with the same config, reused", root)
            cohort = load_built_cohort(root)
            cohort.reused = True
            return cohort
        if same:
            log.warning("%s: cohort files are missing or changed; rebuilding", root)
        elif not overwrite:
            raise ConfigError(
                f"{root}: holds a cohort built with a different config "
                f"({_config_diff(old.get('config', {}), to_dict(cfg))}); "
                f"pass overwrite (--overwrite) to replace it or choose another folder"
            )
    if root.exists():
        _clear(root)
    t0 = time.perf_counter()
    (root / SLIDES).mkdir(parents=True, exist_ok=True)

    data = cohort_data(cfg)
    library = _library(cfg.n_programs, cfg.seed)
    targets = compositions(data.programs, cfg.expression_weight, cfg.concentration, cfg.seed)
    clinical = _clinical_table(data, cfg)
    score = morphology_scores(data.clinical["grade_index"], cfg.morphology_noise, cfg.seed)
    levels = cfg.resolved_morphology * score  # (N,) 0 everywhere in version 1
    jobs = [
        SlideJob(
            slide_id=sid,
            path=str(root / rel),
            target=tuple(float(v) for v in targets[i]),
            seed=(cfg.seed, 22, int(pid[1:])),
            morph_level=float(levels[i]),
        )
        for i, (sid, rel, pid) in enumerate(
            zip(clinical["slide_id"], clinical["slide_uri"], clinical["patient_id"], strict=True)
        )
    ]
    params = RenderParams(
        size_px=cfg.slide_px,
        tissue_fraction=cfg.tissue_fraction,
        stain_scale_sd=cfg.stain_scale_sd,
        stain_shift_sd=cfg.stain_shift_sd,
    )
    write = {
        "mpp": cfg.mpp,
        "magnification": cfg.magnification,
        "levels": cfg.levels,
        "tile": cfg.tile_px,
        "quality": cfg.jpeg_quality,
        "downsample": cfg.downsample,
        "threads": 1,
    }
    t_setup = time.perf_counter() - t0
    results = run_jobs(jobs, library, params, write, n_workers)
    t_render = time.perf_counter() - t0 - t_setup

    comp = _composition_table(clinical, data.programs, targets, results)
    if cfg.version >= 2:
        comp["morphology_score"] = score
        comp["morphology_level"] = levels
    clinical.to_parquet(root / "clinical.parquet", index=False)
    data.expression.reset_index().to_parquet(root / "expression.parquet", index=False)
    data.panel.write(root / "gene_panel.csv")
    settings = CohortSettings(
        expression_unit="log2", grade_classes=GRADE_CLASSES, folds=cfg.folds, seed=cfg.seed
    )
    (root / "cohort.toml").write_text(settings.to_toml())
    comp.to_parquet(root / "composition.parquet", index=False)

    files: dict[str, dict[str, Any]] = {}
    for name in TABLES:
        p = root / name
        files[name] = {"sha256": storage.sha256(p), "bytes": p.stat().st_size}
    for sid, rel in zip(clinical["slide_id"], clinical["slide_uri"], strict=True):
        res = results[sid]
        files[str(rel)] = {"sha256": res["sha256"], "bytes": res["bytes"]}
    meta = _meta(cfg, data, clinical, library, results, files)
    storage.write_bytes(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
    log.info(
        "%s: %d slides built in %.1f s (setup %.1f s, render+write %.1f s, %d workers)",
        root,
        len(jobs),
        time.perf_counter() - t0,
        t_setup,
        t_render,
        n_workers,
    )
    return load_built_cohort(root)


@functools.lru_cache(maxsize=2)
def _library(n_classes: int, seed: int) -> TextureLibrary:
    """The texture library of the packaged H&E sources (kept for repeated builds)."""
    return build_library(default_sources(*assets.he_texture_sources()), n_classes, seed=seed)


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:4]) or "unreadable config"


def _clinical_table(data: CohortData, cfg: CohortConfig) -> pd.DataFrame:
    c = data.clinical
    slide_ids = [f"{p}-S1" for p in c["patient_id"]]
    folds = stratified_folds(fold_strata(c), cfg.folds, cfg.seed)
    return pd.DataFrame(
        {
            "patient_id": c["patient_id"].astype(str).to_numpy(),
            "slide_id": slide_ids,
            "slide_uri": [f"{SLIDES}/{s}.tiff" for s in slide_ids],
            "grade": c["grade"].to_numpy(),
            "time": c["time"].to_numpy(dtype=np.float64),
            "event": c["event"].to_numpy(dtype=bool),
            "fold": folds.astype(np.int64),
            "age": c["age"].to_numpy(dtype=np.float64),
            "er": c["er"].to_numpy(),
        }
    )


def _composition_table(
    clinical: pd.DataFrame,
    programs: np.ndarray,
    targets: np.ndarray,
    results: dict[str, dict[str, Any]],
) -> pd.DataFrame:
    k = programs.shape[1]
    sids = clinical["slide_id"].tolist()
    frac = np.array([results[s]["fractions"] for s in sids])  # (N, K)
    cols: dict[str, Any] = {"patient_id": clinical["patient_id"].to_numpy(), "slide_id": sids}
    for j in range(k):
        cols[f"program_{j + 1}"] = programs[:, j]
    for j in range(k):
        cols[f"target_{j + 1}"] = targets[:, j]
    for j in range(k):
        cols[f"fraction_{j + 1}"] = frac[:, j]
    cols["tissue_fraction"] = [results[s]["tissue_fraction"] for s in sids]
    for j, stain in enumerate("hed"):
        cols[f"stain_scale_{stain}"] = [results[s]["stain_alpha"][j] for s in sids]
    for j, stain in enumerate("hed"):
        cols[f"stain_shift_{stain}"] = [results[s]["stain_beta"][j] for s in sids]
    return pd.DataFrame(cols)


def _meta(
    cfg: CohortConfig,
    data: CohortData,
    clinical: pd.DataFrame,
    library: TextureLibrary,
    results: dict[str, dict[str, Any]],
    files: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    first = results[clinical["slide_id"].iloc[0]]
    grades = clinical["grade"]
    return {
        "format": FORMAT,
        "version": __version__,
        "mode": cfg.mode,
        "source": data.source,
        "seed": cfg.seed,
        "config": to_dict(cfg),
        "counts": {
            "patients": len(clinical),
            "slides": len(clinical),
            "genes": data.panel.n_genes,
            "families": data.panel.n_families,
            "events": int(clinical["event"].sum()),
            "grade": {g: int((grades == g).sum()) for g in GRADE_CLASSES}
            | {"unknown": int(grades.isna().sum())},
            "folds": {str(f): int((clinical["fold"] == f).sum()) for f in range(cfg.folds)},
        },
        "grade_classes": list(GRADE_CLASSES),
        "panel_digest": data.panel.digest,
        "families": dict(zip(data.panel.family_names, data.panel.family_sizes, strict=True)),
        "slide": {
            "level_dimensions": first["level_dimensions"],
            "downsample": cfg.downsample,
            "mpp": cfg.mpp,
            "magnification": cfg.magnification,
            "tile_px": cfg.tile_px,
            "jpeg_quality": cfg.jpeg_quality,
            "vendor": "aperio",
        },
        "morphology_classes": library.describe(),
        "texture_sources": [
            f"{a.package}=={a.version}:{a.member}" for a in (assets.CMU_SVS, assets.TIA_PNG)
        ],
        "files": files,
    }
