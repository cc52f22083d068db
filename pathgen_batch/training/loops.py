"""Fit loops: AdamW, gradient clipping, masked mini-batches, early stopping, determinism.

Each loop trains on mini-batches of padded, masked tile bags (``max_tiles`` tiles drawn at
random per bag at every step), evaluates a validation loss on the inner validation patients
with all their tiles after every epoch, keeps the weights of the best epoch and restores them at
the end; it stops after ``patience`` epochs without improvement.

Randomness: parameter initialisation and dropout draw from torch's global generator, forked and
seeded for the duration of the fit (the caller's random state is left as it was); batches and
tile draws come from a seeded numpy Generator; diffusion timesteps and noise from a seeded
torch.Generator. On CPU, with ``torch.use_deterministic_algorithms`` on during the fit, the
same seed gives identical weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathgen_batch.errors import DataError
from pathgen_batch.features.bags import padded
from pathgen_batch.models.diffusion import GaussianDiffusion
from pathgen_batch.models.fusion import FusionOutput
from pathgen_batch.models.generator import TranscriptomeDenoiser
from pathgen_batch.models.survival import survival_nll
from pathgen_batch.training.config import FusionTrainConfig, GeneratorTrainConfig, OptimConfig

EVAL_BATCH = 64


@dataclass(frozen=True)
class EpochLog:
    """One epoch of one fit, as handed to a progress callback."""

    model: str
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    val_loss: float
    best_epoch: int
    seconds: float

    def line(self) -> str:
        star = " *" if self.best_epoch == self.epoch else ""
        return (
            f"{self.model} epoch {self.epoch}/{self.epochs}: train {self.train_loss:.4f} "
            f"val {self.val_loss:.4f} ({self.seconds:.1f}s){star}"
        )


Progress = Callable[[EpochLog], None]


@dataclass(frozen=True)
class FitHistory:
    """Losses per epoch; the weights kept are those of ``best_epoch`` (1-based)."""

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    seconds: float

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_loss": list(self.train_loss),
            "val_loss": list(self.val_loss),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "stopped_early": self.stopped_early,
            "epochs_run": self.epochs_run,
            "seconds": self.seconds,
        }


@dataclass(frozen=True, eq=False)
class Examples:
    """Patients as the loops see them (already scaled).

    bags: list of (N_i, D) float32; omics: (P, G) float32 or None; grade: (P,) int64, -1 =
    unknown; bins: (P,) int64 time bin, -1 = outcome unknown; censored: (P,) bool (True = no
    event observed).
    """

    bags: Sequence[np.ndarray]
    omics: np.ndarray | None = None
    grade: np.ndarray | None = None
    bins: np.ndarray | None = None
    censored: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.bags)

    def need(self, name: str) -> np.ndarray:
        v = getattr(self, name)
        if v is None:
            raise DataError(f"examples: {name} is required for this model")
        return np.asarray(v)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Fork torch's global random state, seed it, and turn deterministic algorithms on.

    Everything is restored on exit. On CUDA, deterministic algorithms warn instead of failing
    where no deterministic kernel exists.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_det, warn_only=was_warn)


def _chunks(idx: np.ndarray, size: int) -> list[np.ndarray]:
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> None:
    if not torch.isfinite(loss):
        raise DataError(f"training diverged: loss {loss.item()}; lower lr or check the inputs")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


class _Stopper:
    """Keeps the best weights (by validation loss) and says when patience has run out."""

    def __init__(self, model: nn.Module, patience: int) -> None:
        self.model = model
        self.patience = patience
        self.best = math.inf
        self.best_epoch = 0
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record ``epoch``'s loss; True when training should stop."""
        if not math.isfinite(val_loss):
            raise DataError(f"validation loss is {val_loss} at epoch {epoch}; training diverged")
        if val_loss < self.best:
            self.best, self.best_epoch = val_loss, epoch
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def _run(
    name: str,
    model: nn.Module,
    cfg: OptimConfig,
    train_epoch: Callable[[int], float],
    val_loss: Callable[[], float],
    progress: Progress | None,
) -> FitHistory:
    stopper = _Stopper(model, cfg.patience)
    t0 = time.perf_counter()
    train_hist: list[float] = []
    val_hist: list[float] = []
    stopped = False
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        model.train()
        tl = train_epoch(epoch)
        model.eval()
        with torch.no_grad():
            vl = val_loss()
        train_hist.append(tl)
        val_hist.append(vl)
        stop = stopper.update(epoch, vl)
        if progress is not None:
            progress(
                EpochLog(
                    name, epoch, cfg.epochs, tl, vl, stopper.best_epoch, time.perf_counter() - te
                )
            )
        if stop and epoch < cfg.epochs:
            stopped = True
            break
    stopper.restore()
    model.eval()
    return FitHistory(
        tuple(train_hist),
        tuple(val_hist),
        stopper.best_epoch,
        stopper.best,
        stopped,
        time.perf_counter() - t0,
    )


def _check_sets(train: Examples, val: Examples) -> None:
    if len(train) == 0 or len(val) == 0:
        raise DataError(
            f"fit: expected training and validation patients, got {len(train)} and {len(val)}"
        )


# ---------------------------------------------------------------------------------- generator


def fit_generator(
    model: TranscriptomeDenoiser,
    diffusion: GaussianDiffusion,
    train: Examples,
    val: Examples,
    cfg: GeneratorTrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    name: str = "generator",
) -> FitHistory:
    """Train the denoiser on the diffusion loss per family (``omics`` = scaled x0).

    Validation: ``cfg.val_draws`` fixed (timestep, noise) pairs per validation patient, drawn
    once from ``cfg.seed``; the loss is their mean, comparable across epochs.
    """
    _check_sets(train, val)
    dev = torch.device(device)
    x_train = torch.from_numpy(train.need("omics").astype(np.float32))  # (P, G)
    x_val = torch.from_numpy(val.need("omics").astype(np.float32)).to(dev)  # (Pv, G)
    G, T = x_train.shape[1], diffusion.num_timesteps
    with seeded(cfg.seed, dev):
        model.to(dev)
        fams = [ix.to(dev) for ix in model.layout.indices()]
        opt = _optimizer(model, cfg.optim)
        rng = np.random.default_rng([cfg.seed, 1])
        g = torch.Generator().manual_seed(cfg.seed * 7919 + 11)
        gv = torch.Generator().manual_seed(cfg.seed * 7919 + 13)
        Pv = len(val)
        val_t = torch.randint(0, T, (cfg.val_draws, Pv), generator=gv)  # (V, Pv)
        val_noise = torch.randn(cfg.val_draws, Pv, G, generator=gv)  # (V, Pv, G)

        def train_epoch(epoch: int) -> float:
            total, n = 0.0, 0
            for _ in range(cfg.repeats):
                for idx in _chunks(rng.permutation(len(train)), cfg.batch_size):
                    feats, mask = padded(train.bags, idx, dev, cfg.max_tiles, rng)
                    x0 = x_train[idx].to(dev)  # (B, G)
                    t = torch.randint(0, T, (len(idx),), generator=g).to(dev)  # (B,)
                    noise = torch.randn(len(idx), G, generator=g).to(dev)  # (B, G)
                    loss = diffusion.training_loss(
                        lambda x, tt: model(x, tt, feats, mask),  # noqa: B023
                        x0,
                        t=t,
                        noise=noise,
                        families=fams,
                    )
                    _step(model, opt, loss, cfg.grad_clip)
                    total += loss.item() * len(idx)
                    n += len(idx)
            return total / n

        def val_loss() -> float:
            total = 0.0
            for idx in _chunks(np.arange(Pv), EVAL_BATCH):
                feats, mask = padded(val.bags, idx, dev)
                memory = model.encode_bag(feats, mask)
                x0 = x_val[idx]  # (B, G)
                for v in range(cfg.val_draws):
                    loss = diffusion.training_loss(
                        lambda x, tt: model.denoise(x, tt, memory),  # noqa: B023
                        x0,
                        t=val_t[v, idx].to(dev),
                        noise=val_noise[v, idx].to(dev),
                        families=fams,
                    )
                    total += loss.item() * len(idx)
            return total / (Pv * cfg.val_draws)

        return _run(name, model, cfg.optim, train_epoch, val_loss, progress)


# ---------------------------------------------------------------------------------- predictors


def prediction_loss(
    out: FusionOutput,
    bins: torch.Tensor,
    censored: torch.Tensor,
    grade: torch.Tensor,
    survival_weight: float,
    grade_weight: float,
) -> torch.Tensor:
    """survival_weight x survival NLL + grade_weight x grade cross-entropy; scalar.

    bins (B,) int64 with -1 = outcome unknown, censored (B,) bool, grade (B,) int64 with -1 =
    unknown: unknown outcomes are left out of the survival NLL and unknown grades out of the
    cross-entropy (each 0 when nothing in the batch is known).
    """
    has = bins >= 0  # (B,)
    if bool(has.any()):
        surv = survival_nll(out.hazard_logits[has], bins[has], censored[has])
    else:
        surv = out.hazard_logits.sum() * 0.0
    known = grade >= 0  # (B,)
    if bool(known.any()):
        ce = F.cross_entropy(out.grade_logits[known], grade[known])
    else:
        ce = out.grade_logits.sum() * 0.0
    return survival_weight * surv + grade_weight * ce


def predictor_inputs(
    model_name: str,
    ex: Examples,
    idx: np.ndarray,
    dev: torch.device,
    max_tiles: int | None,
    rng: np.random.Generator | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(omics (B, G) | None, feats (B, N, D) | None, mask (B, N) | None) for a predictor."""
    omics = None
    if model_name != "attention_mil":
        omics = torch.from_numpy(ex.need("omics")[idx].astype(np.float32)).to(dev)
    if model_name == "omics_mlp":
        return omics, None, None
    feats, mask = padded(ex.bags, idx, dev, max_tiles, rng)
    return omics, feats, mask


def fit_predictor(
    model: nn.Module,
    model_name: str,
    train: Examples,
    val: Examples,
    cfg: FusionTrainConfig,
    *,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    name: str | None = None,
) -> FitHistory:
    """Train a fusion model or baseline on 0.3 x survival NLL + 0.7 x grade CE (by default)."""
    _check_sets(train, val)
    dev = torch.device(device)

    def labels(ex: Examples, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bins = torch.from_numpy(ex.need("bins")[idx].astype(np.int64)).to(dev)
        cens = torch.from_numpy(ex.need("censored")[idx].astype(bool)).to(dev)
        grade = torch.from_numpy(ex.need("grade")[idx].astype(np.int64)).to(dev)
        return bins, cens, grade

    with seeded(cfg.seed, dev):
        model.to(dev)
        opt = _optimizer(model, cfg.optim)
        rng = np.random.default_rng([cfg.seed, 2])

        def train_epoch(epoch: int) -> float:
            total, n = 0.0, 0
            for idx in _chunks(rng.permutation(len(train)), cfg.batch_size):
                out = model(*predictor_inputs(model_name, train, idx, dev, cfg.max_tiles, rng))
                loss = prediction_loss(
                    out, *labels(train, idx), cfg.survival_weight, cfg.grade_weight
                )
                _step(model, opt, loss, cfg.grad_clip)
                total += loss.item() * len(idx)
                n += len(idx)
            return total / n

        def val_loss() -> float:
            outs = []
            allv = np.arange(len(val))
            for idx in _chunks(allv, EVAL_BATCH):
                outs.append(model(*predictor_inputs(model_name, val, idx, dev, None, None)))
            out = FusionOutput(
                torch.cat([o.hazard_logits for o in outs]),
                torch.cat([o.grade_logits for o in outs]),
                None,
            )
            loss = prediction_loss(out, *labels(val, allv), cfg.survival_weight, cfg.grade_weight)
            return float(loss.item())

        return _run(name or model_name, model, cfg.optim, train_epoch, val_loss, progress)
