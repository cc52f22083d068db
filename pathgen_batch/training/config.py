"""Training configurations: frozen dataclasses, loaded strictly (unknown keys are errors).

The data-dependent sizes of a model (feature dimension, gene families, grade classes, time bins)
come from the training data; these configs hold everything else. A config is saved with every
model bundle, and ``pathgen_batch.config.load_json`` reads one from a file.

Defaults train the 198-patient demo cohort (bags of tens of tiles, 70-d features, 76 genes) in
minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pathgen_batch.config import from_dict
from pathgen_batch.errors import ConfigError
from pathgen_batch.models import config_class
from pathgen_batch.models.diffusion import DiffusionConfig, SamplerConfig
from pathgen_batch.models.generator import GeneratorArch
from pathgen_batch.models.samplers import check_sampler

FusionModelName = Literal["fusion", "attention_mil", "omics_mlp"]
FUSION_MODELS: tuple[str, ...] = ("fusion", "attention_mil", "omics_mlp")

# fields of the model configs that the training data decides
DATA_FIELDS = frozenset(
    {"feature_dim", "family_sizes", "gene_families", "n_grades", "n_bins", "n_genes"}
)


@dataclass(frozen=True)
class OptimConfig:
    """Shared optimisation settings of a fit loop (the training configs below extend it, so
    they carry these fields flat, as in their JSON, each with its own defaults).

    epochs: upper bound; early stopping ends sooner after ``patience`` epochs without a better
    validation loss. lr, weight_decay: AdamW. grad_clip: max global gradient norm (0 = none).
    max_tiles: tiles drawn at random per bag at each training step (all tiles at evaluation).
    """

    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    grad_clip: float = 1.0
    max_tiles: int = 32
    patience: int = 10

    def __post_init__(self) -> None:
        _positive_ints(self, ("epochs", "batch_size", "max_tiles", "patience"))
        _check_optim(self)


def _check_optim(cfg: Any) -> None:
    if not cfg.lr > 0:
        raise ConfigError(f"{type(cfg).__name__}.lr: expected > 0, got {cfg.lr}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        raise ConfigError(
            f"{type(cfg).__name__}: weight_decay and grad_clip must be >= 0, "
            f"got {cfg.weight_decay}, {cfg.grad_clip}"
        )


def _positive_ints(cfg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{type(cfg).__name__}.{name}: expected an integer >= 1, got {v!r}")


def _check_choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        raise ConfigError(
            f"{type(cfg).__name__}.{name}: expected one of {list(choices)}, got {v!r}"
        )


def _check_split(cfg: Any) -> None:
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ConfigError(
            f"{type(cfg).__name__}.val_fraction: expected a number in (0, 1), "
            f"got {cfg.val_fraction}"
        )
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"{type(cfg).__name__}.seed: expected an integer >= 0, got {cfg.seed!r}")


@dataclass(frozen=True)
class _TrainConfig(OptimConfig):
    """An :class:`OptimConfig` with the inner validation split (``val_fraction``, ``seed``)
    a model uses when it is trained on its own."""

    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_split(self)

    @property
    def optim(self) -> OptimConfig:
        """The optimiser fields alone."""
        names = [f.name for f in dataclasses.fields(OptimConfig)]
        return OptimConfig(**{n: getattr(self, n) for n in names})


@dataclass(frozen=True)
class GeneratorTrainConfig(_TrainConfig):
    """How to train the conditional diffusion generator.

    diffusion: the forward process and what the network outputs (``diffusion.prediction``,
    the noise ``eps`` or the velocity ``v``; see :mod:`pathgen_batch.models.diffusion`).
    repeats: passes over the training patients per epoch, each with fresh timesteps, noise and
    tile draws (an epoch of a few hundred patients is only a handful of optimiser steps).
    val_draws: fixed (timestep, noise) draws per validation patient; the validation loss uses
    the same draws every epoch (seeded), so epochs are comparable.
    sampler: how the trained generator samples by default (saved with the model).
    select_on: what chooses the kept epoch: ``pearson`` (the default), the mean per-gene
    Pearson correlation across validation patients of the posterior-mean estimate (DDIM,
    eta 0, ``select_steps`` steps from x_T = 0: see
    :func:`~pathgen_batch.models.samplers.posterior_mean`), higher is better; or ``loss``, the
    validation diffusion loss, lower is better. Both are recorded every epoch.
    val_fraction, seed: the inner validation split when the generator is trained on its own.
    sampler_steps: candidate step counts of the sampler, chosen after training on the
    validation patients (the mean per-gene Pearson of their n-sample mean against their real
    expression, seeded); the chosen count is the saved sampler's. Empty: ``sampler.steps``.
    """

    model: GeneratorArch = field(default_factory=GeneratorArch)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(
        default_factory=lambda: SamplerConfig(name="ddim", steps=20, eta=0.0, n_samples=10)
    )
    epochs: int = 80
    batch_size: int = 32
    patience: int = 20
    repeats: int = 4
    val_draws: int = 32
    select_on: Literal["pearson", "loss"] = "pearson"
    select_steps: int = 10
    sampler_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_ints(self, ("repeats", "val_draws", "select_steps"))
        for k in self.sampler_steps:
            check_sampler(
                dataclasses.replace(self.sampler, steps=k),
                self.diffusion,
                "GeneratorTrainConfig.sampler_steps",
            )
        if len(set(self.sampler_steps)) < len(self.sampler_steps):
            raise ConfigError(
                f"GeneratorTrainConfig.sampler_steps: expected distinct step counts, got "
                f"{list(self.sampler_steps)}"
            )
        _check_choice(self, "select_on", ("pearson", "loss"))
        if self.select_steps > self.diffusion.num_timesteps:
            raise ConfigError(
                f"GeneratorTrainConfig.select_steps: expected at most "
                f"diffusion.num_timesteps={self.diffusion.num_timesteps}, got {self.select_steps}"
            )
        check_sampler(self.sampler, self.diffusion, "GeneratorTrainConfig.sampler")
        try:  # the architecture on placeholder data sizes: bad widths fail here, not later
            self.model.for_data(feature_dim=1, family_sizes=(1,))
        except ConfigError as e:
            raise ConfigError(f"GeneratorTrainConfig.model: {e}") from e


@dataclass(frozen=True)
class FusionTrainConfig(_TrainConfig):
    """How to train a predictor: the fusion model or one of its single-modality baselines.

    model: ``fusion`` | ``attention_mil`` | ``omics_mlp``. options: that model's config fields
    other than the data-dependent ones (e.g. ``{"width": 64, "dropout": 0.25}``); unknown
    names are errors. The loss is ``survival_weight`` x survival NLL + ``grade_weight`` x grade
    cross-entropy (unknown grades left out), with ``n_bins`` time bins whose edges are fit on
    the training patients' event times. ``risk_quantiles`` (one or two, increasing in (0, 1);
    tertiles by default) are where the relative risk groups are cut: at those quantiles of the
    risk the trained model predicts for its training and validation patients.
    select_on: what chooses the kept epoch on the validation patients: ``survival_nll`` (the
    default: the discrete-time survival NLL alone, smooth and not dominated by the grade term),
    ``c_index`` (Harrell's C of the predicted risk; coarse with few validation events) or
    ``loss`` (the weighted training loss). All three are recorded every epoch, with the
    validation grade cross-entropy.
    survival_weights: candidate survival shares of the loss, chosen on the validation patients
    (each in [0, 1], the grade share 1 - s): one model is trained per candidate on the same
    patients, each kept at its best ``select_on`` epoch, and the one with the lowest validation
    survival NLL + grade cross-entropy (unweighted: the same yardstick for every candidate) is
    kept. Empty: ``survival_weight`` and ``grade_weight`` as given, one model.
    validate_slide_only: validate (choose the epoch and the loss weighting) with the validation
    patients' transcriptomes withheld, as a slide-only comparator is scored: a fusion model
    with ``options.modality_dropout`` > 0 only (its absent-transcriptome token stands in).
    """

    model: FusionModelName = "fusion"
    options: dict[str, Any] = field(default_factory=lambda: {"width": 64, "dropout": 0.25})
    n_bins: int = 4
    survival_weight: float = 0.3
    grade_weight: float = 0.7
    lr: float = 5e-4
    weight_decay: float = 1e-3
    patience: int = 12
    risk_quantiles: tuple[float, ...] = (1 / 3, 2 / 3)
    select_on: Literal["survival_nll", "c_index", "loss"] = "survival_nll"
    survival_weights: tuple[float, ...] = ()
    validate_slide_only: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_ints(self, ("n_bins",))
        if self.validate_slide_only and not (
            self.model == "fusion" and self.options.get("modality_dropout", 0.0) > 0
        ):
            raise ConfigError(
                "FusionTrainConfig.validate_slide_only: needs model 'fusion' with "
                "options.modality_dropout > 0 (an absent-transcriptome token to validate with)"
            )
        w = self.survival_weights
        if any(isinstance(v, bool) or not 0.0 <= v <= 1.0 for v in w) or len(set(w)) < len(w):
            raise ConfigError(
                "FusionTrainConfig.survival_weights: expected distinct numbers in [0, 1] (the "
                f"survival share of each candidate loss, e.g. [0.3, 0.5, 0.7]), got {list(w)}"
            )
        _check_choice(self, "select_on", ("survival_nll", "c_index", "loss"))
        q = self.risk_quantiles
        if len(q) not in (1, 2) or not all(0.0 < v < 1.0 for v in q) or list(q) != sorted(set(q)):
            raise ConfigError(
                "FusionTrainConfig.risk_quantiles: expected 1 or 2 increasing numbers in (0, 1) "
                f"(e.g. [0.3333, 0.6667] for tertiles), got {list(q)}"
            )
        if self.model not in FUSION_MODELS:
            raise ConfigError(
                f"FusionTrainConfig.model: expected one of {list(FUSION_MODELS)}, "
                f"got {self.model!r}"
            )
        allowed = {f.name for f in dataclasses.fields(config_class(self.model))} - DATA_FIELDS
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            raise ConfigError(
                f"FusionTrainConfig.options: unknown option(s) {unknown} for model "
                f"{self.model!r}; valid options are {sorted(allowed)}"
            )
        placeholder: dict[
            str, Any
        ] = {  # data sizes stand-ins: option values are checked here, not later
            "fusion": {"feature_dim": 1, "family_sizes": [1], "n_grades": 2},
            "attention_mil": {"feature_dim": 1, "n_grades": 2},
            "omics_mlp": {"n_genes": 1, "n_grades": 2},
        }
        from_dict(
            config_class(self.model),
            {**placeholder[self.model], "n_bins": self.n_bins, **self.options},
            _where=f"FusionTrainConfig.options ({self.model})",
        )
        if self.survival_weight < 0 or self.grade_weight < 0:
            raise ConfigError(
                "FusionTrainConfig: survival_weight and grade_weight must be >= 0, got "
                f"{self.survival_weight}, {self.grade_weight}"
            )
        if self.survival_weight + self.grade_weight <= 0:
            raise ConfigError("FusionTrainConfig: survival_weight + grade_weight must be > 0")


# the survival shares of the loss every predictor of the protocol chooses among, on its
# validation patients (FusionTrainConfig.survival_weights)
LOSS_WEIGHT_CANDIDATES = (0.3, 0.5, 0.7)
# the sampler step counts the protocol's generator chooses among (sampler_steps)
SAMPLER_STEP_CANDIDATES = (10, 20, 50)


def _generator_default() -> GeneratorTrainConfig:
    return GeneratorTrainConfig(sampler_steps=SAMPLER_STEP_CANDIDATES)


def _fusion_default() -> FusionTrainConfig:
    return FusionTrainConfig(survival_weights=LOSS_WEIGHT_CANDIDATES)


def _mil_default() -> FusionTrainConfig:
    return FusionTrainConfig(
        model="attention_mil",
        options={"width": 64, "dropout": 0.25},
        survival_weights=LOSS_WEIGHT_CANDIDATES,
    )


def _omics_default() -> FusionTrainConfig:
    return FusionTrainConfig(
        model="omics_mlp",
        options={"width": 64, "dropout": 0.25},
        survival_weights=LOSS_WEIGHT_CANDIDATES,
    )


# share of training examples whose transcriptome the trained WSI-only comparator drops
WSI_TRAINED_DROPOUT = 0.5


def _wsi_trained_default() -> FusionTrainConfig:
    return FusionTrainConfig(
        model="fusion",
        options={"width": 64, "dropout": 0.25, "modality_dropout": WSI_TRAINED_DROPOUT},
        survival_weights=LOSS_WEIGHT_CANDIDATES,
        validate_slide_only=True,
    )


@dataclass(frozen=True)
class CVConfig:
    """Patient-level cross-validation of generator, fusion model and baselines.

    folds: None = the cohort's ``fold`` column; k = new stratified folds (grade x event) drawn
    with ``seed``. Inside each fold the training part is split three ways (stratified,
    ``seed``): ``val_fraction`` of it early-stops every model, ``cal_fraction`` of it calibrates
    the conformal sets and nothing else, the rest trains; the models' own ``val_fraction`` and
    ``seed`` apply only when they are trained alone.
    fidelity_samples: the n-samples sweep of the generator's fidelity (sample means of the
    first n of ``max(fidelity_samples)`` samples per test patient, and their CRPS).
    alpha: conformal miscoverage; conformal_method: ``lac`` | ``aps`` grade-set score (``lac``
    by default: with a weak 3-class grade model, ``aps`` sets measured on the demo cohort were
    always the full set).
    noise_seed: the standard-normal transcriptome of the ``wsi_only`` diagnostic (the fusion
    model fed noise it never saw in training).
    wsi_trained: the trained WSI-only comparator of the repeated CV (condition ``wsi_trained``):
    the fusion model trained with modality dropout (an absent-transcriptome token), validated
    (``validate_slide_only``, the default) and scored from the slide alone; its
    ``options.modality_dropout`` must be > 0.
    registry names: the model names bundles are registered under.
    The predictors' defaults choose their loss weights among ``LOSS_WEIGHT_CANDIDATES`` and
    the generator its sampler's steps among ``SAMPLER_STEP_CANDIDATES`` on each fold's
    validation patients (``survival_weights``, ``sampler_steps``); every model its epochs by
    early stopping on the same patients.
    """

    generator: GeneratorTrainConfig = field(default_factory=_generator_default)
    fusion: FusionTrainConfig = field(default_factory=_fusion_default)
    attention_mil: FusionTrainConfig = field(default_factory=_mil_default)
    omics_mlp: FusionTrainConfig = field(default_factory=_omics_default)
    wsi_trained: FusionTrainConfig = field(default_factory=_wsi_trained_default)
    folds: int | None = None
    val_fraction: float = 0.2
    cal_fraction: float = 0.2
    seed: int = 0
    alpha: float = 0.1
    conformal_method: Literal["aps", "lac"] = "lac"
    noise_seed: int = 1234
    fidelity_samples: tuple[int, ...] = (1, 5, 10, 25)
    generator_name: str = "pathgen-generator"
    fusion_name: str = "pathgen-fusion"

    def __post_init__(self) -> None:
        checks = (
            ("fusion", self.fusion, "fusion"),
            ("attention_mil", self.attention_mil, "attention_mil"),
            ("omics_mlp", self.omics_mlp, "omics_mlp"),
            ("wsi_trained", self.wsi_trained, "fusion"),
        )
        for name, cfg, model in checks:
            if cfg.model != model:
                raise ConfigError(f"CVConfig.{name}.model: expected {model!r}, got {cfg.model!r}")
        if not self.wsi_trained.options.get("modality_dropout", 0.0) > 0:
            raise ConfigError(
                "CVConfig.wsi_trained.options.modality_dropout: expected > 0 (the comparator "
                "learns an absent-transcriptome token), got "
                f"{self.wsi_trained.options.get('modality_dropout', 0.0)}"
            )
        if self.folds is not None and (isinstance(self.folds, bool) or self.folds < 2):
            raise ConfigError(f"CVConfig.folds: expected None or >= 2, got {self.folds!r}")
        _check_split(self)
        if not 0.0 < self.cal_fraction < 1.0 or self.val_fraction + self.cal_fraction >= 1.0:
            raise ConfigError(
                "CVConfig.cal_fraction: expected a number in (0, 1) with val_fraction + "
                f"cal_fraction < 1, got {self.cal_fraction} (val_fraction {self.val_fraction})"
            )
        ns = self.fidelity_samples
        if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns):
            raise ConfigError(f"CVConfig.fidelity_samples: expected integers >= 1, got {list(ns)}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"CVConfig.alpha: expected a number in (0, 1), got {self.alpha}")
        if self.conformal_method not in ("aps", "lac"):
            raise ConfigError(
                f"CVConfig.conformal_method: expected 'aps' or 'lac', got {self.conformal_method!r}"
            )
        for name in ("generator_name", "fusion_name"):
            if not getattr(self, name).strip():
                raise ConfigError(f"CVConfig.{name}: expected a non-empty name")
