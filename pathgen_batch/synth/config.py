"""Configuration of a synthetic cohort."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from pathgen_batch.errors import ConfigError
from pathgen_batch.synth.texture import PATCH_PX
from pathgen_batch.synth.writer import check_pyramid_args

SEMI_PATIENTS = 198  # patients in scikit-survival's breast cancer cohort
SEMI_GENES = 76  # expression probes in that cohort
SYNTHETIC_PATIENTS = 200
SYNTHETIC_GENES = 300
COHORT_VERSIONS = (1, 2)
# strength of the grade morphology of version 2 when the config leaves it unset
DEFAULT_GRADE_MORPHOLOGY = 1.0


@dataclass(frozen=True)
class CohortConfig:
    """How to build a cohort. ``None`` sizes take the mode's default (see ``resolved``).

    mode: ``semi`` takes expression, grade and outcome of real patients (scikit-survival's
    breast cancer cohort: 198 patients, 76 probes); ``synthetic`` simulates them from a latent
    program model, at any size.
    n_programs: expression programs = morphology classes of the slides.
    expression_weight: share of each slide's composition set by the patient's programs; the rest
    is a random composition that expression does not explain.
    concentration: Dirichlet concentration of the slide composition around that mix (larger:
    less sampling noise).
    program_contrast: power applied to the (mean-normalised) programs of real expression before
    renormalising, to spread compositions across patients (semi mode only).
    version: 1 = slides follow expression only (composition, stain, layout); 2 (default) =
    also grade-linked morphology (nuclear size, pleomorphism, density, mitoses, tubule loss) in
    the tumour-like class, which expression does not fully explain
    (:mod:`pathgen_batch.synth.morphology`).
    grade_morphology: strength of that morphology (None = 1.0 in version 2; version 1 has
    none); the level of a slide is strength x the patient's score, grade / 2 plus
    N(0, ``morphology_noise``), clipped to [0, 1].
    """

    mode: Literal["semi", "synthetic"] = "semi"
    n_patients: int | None = None
    n_genes: int | None = None
    n_families: int = 6
    n_programs: int = 4
    slide_px: int = 2048
    levels: int = 3
    downsample: int = 4
    tile_px: int = 256
    mpp: float = 0.5
    magnification: float = 20.0
    jpeg_quality: int = 80
    folds: int = 5
    seed: int = 0
    expression_weight: float = 0.7
    concentration: float = 40.0
    program_contrast: float = 1.0
    tissue_fraction: tuple[float, float] = (0.4, 0.6)
    stain_scale_sd: float = 0.05
    stain_shift_sd: float = 0.02
    version: int = 2
    grade_morphology: float | None = None
    morphology_noise: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or self.version not in COHORT_VERSIONS:
            raise ConfigError(
                f"version: expected one of {list(COHORT_VERSIONS)}, got {self.version!r}"
            )
        gm = self.grade_morphology
        if gm is not None and not (0.0 <= gm <= 2.0):
            raise ConfigError(f"grade_morphology: expected 0..2, got {gm}")
        if self.version == 1 and gm:
            raise ConfigError(
                f"grade_morphology: cohort version 1 has no grade morphology, got {gm} "
                "(use version 2)"
            )
        if not 0.0 <= self.morphology_noise <= 1.0:
            raise ConfigError(f"morphology_noise: expected 0..1, got {self.morphology_noise}")
        if self.mode not in ("semi", "synthetic"):
            raise ConfigError(f"mode: expected 'semi' or 'synthetic', got {self.mode!r}")
        for name, cap, noun, larger in (
            ("n_patients", SEMI_PATIENTS, "patients", "cohorts"),
            ("n_genes", SEMI_GENES, "genes", "panels"),
        ):
            n = getattr(self, name)
            if n is not None and n < 1:
                raise ConfigError(f"{name}: expected >= 1, got {n}")
            if self.mode == "semi" and n is not None and n > cap:
                raise ConfigError(
                    f"{name}: the semi-synthetic cohort has {cap} real {noun}, "
                    f"got {n} (use mode 'synthetic' for larger {larger})"
                )
        if self.n_families < 1:
            raise ConfigError(f"n_families: expected >= 1, got {self.n_families}")
        genes = self.resolved_genes
        if self.n_families > genes:
            raise ConfigError(
                f"n_families: {self.n_families} families need at least as many genes, "
                f"got {genes} genes"
            )
        if self.n_programs < 2:
            raise ConfigError(f"n_programs: expected >= 2, got {self.n_programs}")
        if self.mode == "semi" and self.n_programs > genes:
            raise ConfigError(
                f"n_programs: {self.n_programs} programs need at least as many genes, got {genes}"
            )
        check_pyramid_args(
            self.slide_px,
            self.slide_px,
            self.levels,
            self.downsample,
            self.tile_px,
            self.jpeg_quality,
        )
        if self.slide_px < PATCH_PX:
            raise ConfigError(
                f"slide_px: expected >= {PATCH_PX} (one texture patch), got {self.slide_px}"
            )
        if not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise ConfigError(f"mpp: expected a positive number, got {self.mpp}")
        if not (self.magnification > 0 and math.isfinite(self.magnification)):
            raise ConfigError(
                f"magnification: expected a positive number, got {self.magnification}"
            )
        if self.folds < 2:
            raise ConfigError(f"folds: expected >= 2, got {self.folds}")
        if self.folds > self.resolved_patients:
            raise ConfigError(
                f"folds: {self.folds} folds need at least as many patients, "
                f"got {self.resolved_patients}"
            )
        if self.seed < 0:
            raise ConfigError(f"seed: expected >= 0, got {self.seed}")
        if not 0.0 <= self.expression_weight <= 1.0:
            raise ConfigError(f"expression_weight: expected 0..1, got {self.expression_weight}")
        if self.concentration <= 0:
            raise ConfigError(f"concentration: expected > 0, got {self.concentration}")
        if self.program_contrast <= 0:
            raise ConfigError(f"program_contrast: expected > 0, got {self.program_contrast}")
        lo, hi = self.tissue_fraction
        if not 0.05 <= lo <= hi <= 0.95:
            raise ConfigError(
                f"tissue_fraction: expected 0.05 <= low <= high <= 0.95, got {self.tissue_fraction}"
            )
        if self.stain_scale_sd < 0 or self.stain_shift_sd < 0:
            raise ConfigError(
                f"stain_scale_sd/stain_shift_sd: expected >= 0, got "
                f"{self.stain_scale_sd}/{self.stain_shift_sd}"
            )

    @property
    def resolved_patients(self) -> int:
        if self.n_patients is not None:
            return self.n_patients
        return SEMI_PATIENTS if self.mode == "semi" else SYNTHETIC_PATIENTS

    @property
    def resolved_genes(self) -> int:
        if self.n_genes is not None:
            return self.n_genes
        return SEMI_GENES if self.mode == "semi" else SYNTHETIC_GENES

    @property
    def resolved_morphology(self) -> float:
        if self.version == 1:
            return 0.0
        return DEFAULT_GRADE_MORPHOLOGY if self.grade_morphology is None else self.grade_morphology

    def resolved(self) -> CohortConfig:
        """The same config with every ``None`` size or strength replaced by its value."""
        return dataclasses.replace(
            self,
            n_patients=self.resolved_patients,
            n_genes=self.resolved_genes,
            grade_morphology=self.resolved_morphology,
        )
