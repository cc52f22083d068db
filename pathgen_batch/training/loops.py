"""Fit loops: AdamW, gradient clipping, masked mini-batches, early stopping, determinism.

Each loop trains on mini-batches of padded, masked tile bags (``max_tiles`` tiles drawn at
random per bag at every step), evaluates the inner validation patients with all their tiles
after every epoch (the validation loss and the selection score of the config's ``select_on``:
the generator's per-gene Pearson of its posterior-mean estimate, the predictor's survival NLL or
C-index), keeps the weights of the epoch with the best selection score and restores them at the
end; it stops after ``patience`` epochs without improvement.

Randomness: parameter initialisation and dropout draw from torch's global generator, forked and
seeded for the duration of the fit (the caller's random state is left as it was); batches and
tile draws come from a seeded numpy Generator; diffusion timesteps and noise from a seeded
torch.Generator. On CPU, with ``torch.use_deterministic_algorithms`` on during the fit, the
same seed gives identical weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pathgen_batch.errors import DataError
from pathgen_batch.evaluation.fidelity import mean_per_gene_pearson
from pathgen_batch.features.bags import padded
from pathgen_batch.models.diffusion import GaussianDiffusion
from pathgen_batch.models.generator import TranscriptomeDenoiser
from pathgen_batch.models.samplers import posterior_mean
from pathgen_batch.training.config import GeneratorTrainConfig, OptimConfig

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
    val_score: float | None = None  # the selection score, when it is not the loss
    select_on: str = "loss"

    def line(self) -> str:
        star = " *" if self.best_epoch == self.epoch else ""
        score = "" if self.val_score is None else f" {self.select_on} {self.val_score:.4f}"
        return (
            f"{self.model} epoch {self.epoch}/{self.epochs}: train {self.train_loss:.4f} "
            f"val {self.val_loss:.4f}{score} ({self.seconds:.1f}s){star}"
        )


Progress = Callable[[EpochLog], None]


@dataclass(frozen=True)
class FitHistory:
    """Losses and selection scores per epoch (the learning curves); the weights kept are those
    of ``best_epoch`` (1-based), the epoch with the best ``select_on`` score (``val_score``,
    or the validation loss when ``select_on`` is ``loss``); ``best_val_loss`` is the
    validation loss of that epoch."""

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    seconds: float
    select_on: str = "loss"
    val_score: tuple[float, ...] = ()
    val_scores: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_loss": list(self.train_loss),
            "val_loss": list(self.val_loss),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "select_on": self.select_on,
            "val_score": list(self.val_score),
            "best_val_score": (
                self.val_score[self.best_epoch - 1] if self.val_score else self.best_val_loss
            ),
            **{f"val_{k}": list(v) for k, v in self.val_scores.items()},
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
    time: np.ndarray | None = None  # (P,) follow-up time, NaN = outcome unknown

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


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterable[np.ndarray],
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    clip: float,
) -> float:
    """One optimiser step per batch of patient indices; the mean of ``batch_loss`` over the
    epoch, each batch weighted by its size."""
    total, n = 0.0, 0
    for idx in batches:
        loss = batch_loss(idx)
        _step(model, opt, loss, clip)
        total += loss.item() * len(idx)
        n += len(idx)
    return total / n


class _Stopper:
    """Keeps the best weights (by the selection score: lower is better unless ``maximize``)
    and says when patience has run out. A NaN score (e.g. a C-index without comparable pairs)
    never counts as an improvement."""

    def __init__(self, model: nn.Module, patience: int, maximize: bool = False) -> None:
        self.model = model
        self.patience = patience
        self.sign = -1.0 if maximize else 1.0
        self.best = math.inf
        self.best_epoch = 0
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_loss: float, score: float | None = None) -> bool:
        """Record ``epoch``'s loss and score (None: select on the loss); True to stop."""
        if not math.isfinite(val_loss):
            raise DataError(f"validation loss is {val_loss} at epoch {epoch}; training diverged")
        key = self.sign * (val_loss if score is None else score)
        key = key if math.isfinite(key) else math.inf
        if key < self.best or self.best_epoch == 0:
            self.best, self.best_epoch = key, epoch
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


ValEval = Callable[[], tuple[float, dict[str, float]]]  # -> (val loss, named val scores)


def _run(
    name: str,
    model: nn.Module,
    cfg: OptimConfig,
    train_epoch: Callable[[int], float],
    validate: ValEval,
    progress: Progress | None,
    select_on: str = "loss",
    maximize: bool = False,
) -> FitHistory:
    """The epoch loop; ``validate`` returns the validation loss and scores, and the score named
    ``select_on`` (or the loss, for ``loss``) chooses the kept epoch."""
    stopper = _Stopper(model, cfg.patience, maximize)
    t0 = time.perf_counter()
    train_hist: list[float] = []
    val_hist: list[float] = []
    scores: dict[str, list[float]] = {}
    stopped = False
    for epoch in range(1, cfg.epochs + 1):
        te = time.perf_counter()
        model.train()
        tl = train_epoch(epoch)
        model.eval()
        with torch.no_grad():
            vl, vs = validate()
        train_hist.append(tl)
        val_hist.append(vl)
        for k, v in vs.items():
            scores.setdefault(k, []).append(v)
        score = None if select_on == "loss" else vs[select_on]
        stop = stopper.update(epoch, vl, score)
        if progress is not None:
            progress(
                EpochLog(
                    name,
                    epoch,
                    cfg.epochs,
                    tl,
                    vl,
                    stopper.best_epoch,
                    time.perf_counter() - te,
                    score,
                    select_on,
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
        val_hist[stopper.best_epoch - 1],
        stopped,
        time.perf_counter() - t0,
        select_on,
        () if select_on == "loss" else tuple(scores[select_on]),
        {k: tuple(v) for k, v in scores.items()},
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

    Validation, every epoch: the loss on ``cfg.val_draws`` fixed (timestep, noise) pairs per
    validation patient, drawn once from ``cfg.seed`` (their mean, comparable across epochs),
    and ``pearson``, the mean per-gene Pearson correlation across validation patients of the
    posterior-mean estimate (:func:`~pathgen_batch.models.samplers.posterior_mean`,
    ``cfg.select_steps`` DDIM steps) with their real expression; ``cfg.select_on`` chooses.
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

        def batch_loss(idx: np.ndarray) -> torch.Tensor:
            feats, mask = padded(train.bags, idx, dev, cfg.max_tiles, rng)
            x0 = x_train[idx].to(dev)  # (B, G)
            t = torch.randint(0, T, (len(idx),), generator=g).to(dev)  # (B,)
            noise = torch.randn(len(idx), G, generator=g).to(dev)  # (B, G)
            return diffusion.training_loss(
                lambda x, tt: model(x, tt, feats, mask), x0, t=t, noise=noise, families=fams
            )

        def train_epoch(epoch: int) -> float:
            batches = (
                idx
                for _ in range(cfg.repeats)
                for idx in _chunks(rng.permutation(len(train)), cfg.batch_size)
            )
            return _train_epoch(model, opt, batches, batch_loss, cfg.grad_clip)

        def validate() -> tuple[float, dict[str, float]]:
            total = 0.0
            means = []
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
                pm = posterior_mean(
                    diffusion,
                    lambda x, tt: model.denoise(x, tt, memory),  # noqa: B023
                    (len(idx), G),
                    steps=cfg.select_steps,
                    device=dev,
                )
                means.append(pm.cpu().numpy())
            pearson = (
                mean_per_gene_pearson(x_val.cpu().numpy(), np.concatenate(means))
                if Pv >= 3
                else float("nan")
            )
            return total / (Pv * cfg.val_draws), {"pearson": pearson}

        return _run(
            name,
            model,
            cfg.optim,
            train_epoch,
            validate,
            progress,
            cfg.select_on,
            maximize=cfg.select_on == "pearson",
        )
