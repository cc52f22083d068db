"""Gaussian diffusion: noise schedules, the forward process, the training loss and samplers.

The network never sees the schedule. :class:`GaussianDiffusion` and the samplers take the model
as a callable ``eps_fn(x_t (B, G), t (B,) int64) -> eps (B, G)`` that predicts the noise, where
``t`` is the index 0..T-1 of the forward step (t = 0 is the least noisy).

Notation (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"):
  alpha_t = 1 - beta_t,  abar_t = prod_{s<=t} alpha_s,  abar_{-1} = 1.
  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
Schedules are held in float64 and cast to the tensor's dtype at use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models.validation import check_floating, check_integer, check_shape

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# schedules


def linear_betas(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Ho et al.: betas evenly spaced from beta_start to beta_end -> (T,) float64."""
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps: expected >= 1, got {num_timesteps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ConfigError(
            f"linear schedule: expected 0 < beta_start <= beta_end < 1, "
            f"got beta_start={beta_start}, beta_end={beta_end}"
        )
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(
    num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """Nichol & Dhariwal 2021: abar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s) / (1 + s)).

    beta_t = 1 - abar(t+1) / abar(t) for t = 0..T-1, clipped at ``max_beta`` -> (T,) float64.
    """
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps: expected >= 1, got {num_timesteps}")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # (T+1,)
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2  # (T+1,)
    betas = 1.0 - f[1:] / f[:-1]  # (T,)
    return betas.clamp(max=max_beta)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {"linear": linear_betas, "cosine": cosine_betas}


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process; saved with a generator so that sampling uses its training schedule."""

    schedule: Literal["linear", "cosine"] = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4  # linear only
    beta_end: float = 0.02  # linear only
    cosine_s: float = 0.008  # cosine only


class NoiseSchedule:
    """betas (T,) and everything derived from them, in float64."""

    def __init__(self, betas: torch.Tensor) -> None:
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if b.dim() != 1 or b.numel() == 0:
            raise ConfigError(f"betas: expected a non-empty 1-D tensor, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b <= 1)).all()):
            raise ConfigError("betas: every beta must lie in (0, 1]")
        self.betas = b  # (T,)
        self.alphas = 1.0 - b  # (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # (T,) abar_t
        self.alphas_cumprod_prev = torch.cat([b.new_ones(1), self.alphas_cumprod[:-1]])  # (T,)
        # posterior q(x_{t-1} | x_t, x_0) = N(c0 x_0 + ct x_t, var), DDPM eq. (6)-(7)
        one_minus = 1.0 - self.alphas_cumprod  # (T,)
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / one_minus  # (T,)
        self.posterior_mean_coef_x0 = b * self.alphas_cumprod_prev.sqrt() / one_minus  # (T,)
        self.posterior_mean_coef_xt = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / one_minus
        )  # (T,)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.numel())

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> NoiseSchedule:
        if cfg.schedule == "linear":
            return cls(linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end))
        if cfg.schedule == "cosine":
            return cls(cosine_betas(cfg.num_timesteps, cfg.cosine_s))
        raise ConfigError(f"schedule: expected one of {sorted(SCHEDULES)}, got {cfg.schedule!r}")

    @classmethod
    def named(cls, name: str, num_timesteps: int = 1000) -> NoiseSchedule:
        if name not in SCHEDULES:
            raise ConfigError(f"schedule: expected one of {sorted(SCHEDULES)}, got {name!r}")
        return cls(SCHEDULES[name](num_timesteps))


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values (T,) float64 gathered at t (B,) -> (B, 1, ..., 1) in like's dtype and device."""
    out = values[t.detach().cpu()].to(like.dtype).to(like.device)  # (B,), float64 stays on CPU
    return out.view(-1, *([1] * (like.dim() - 1)))  # (B, 1, ...)


# ---------------------------------------------------------------------------------------------
# forward process and loss


class GaussianDiffusion:
    """The forward process q and the training loss for a noise-predicting model."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def _check_t(self, t: object, batch: int) -> torch.Tensor:
        tt = check_integer("t", check_shape("t", t, (batch,), "(B,)"))
        if tt.numel() and (int(tt.min()) < 0 or int(tt.max()) >= self.num_timesteps):
            raise DataError(
                f"t: expected timesteps in [0, {self.num_timesteps}), "
                f"got range [{int(tt.min())}, {int(tt.max())}]"
            )
        return tt.long()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q_sample: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise (B, G) -> (B, G)."""
        check_floating("x0", x0)
        check_shape("noise", noise, tuple(x0.shape), "like x0")
        t = self._check_t(t, x0.shape[0])
        abar = self.schedule.alphas_cumprod
        return _at(abar.sqrt(), t, x0) * x0 + _at((1.0 - abar).sqrt(), t, x0) * noise  # (B, G)

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0), both (B, G) (DDPM eq. 6-7).

        mean = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x0 + (1 - abar_{t-1}) sqrt(alpha_t) /
        (1 - abar_t) x_t;  var = beta_t (1 - abar_{t-1}) / (1 - abar_t)  (0 at t = 0).
        """
        check_floating("x0", x0)
        check_shape("x_t", x_t, tuple(x0.shape), "like x0")
        t = self._check_t(t, x0.shape[0])
        s = self.schedule
        mean = (
            _at(s.posterior_mean_coef_x0, t, x0) * x0 + _at(s.posterior_mean_coef_xt, t, x0) * x_t
        )
        var = _at(s.posterior_variance, t, x0).expand_as(x0)  # (B, G)
        return mean, var

    def predict_x0_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); (B, G) -> (B, G)."""
        check_floating("x_t", x_t)
        check_shape("eps", eps, tuple(x_t.shape), "like x_t")
        t = self._check_t(t, x_t.shape[0])
        abar = self.schedule.alphas_cumprod
        return _at((1.0 / abar).sqrt(), t, x_t) * x_t - _at((1.0 / abar - 1.0).sqrt(), t, x_t) * eps

    def training_loss(
        self,
        model_fn: EpsFn,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        families: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Noise-prediction loss: 0.5 * (L1 + MSE) between predicted and true noise; scalar.

        x0: (B, G). t: (B,) int64, drawn uniformly from [0, T) when None. noise: (B, G), standard
        normal when None. families: optional list of (g_f,) gene-index tensors; then the loss is
        computed per family (mean over its genes and the batch) and averaged over families, so
        every family weighs the same whatever its size.
        """
        check_floating("x0", check_shape("x0", x0, (None, None), "(B, G)"))
        B, G = x0.shape
        if t is None:
            t = torch.randint(0, self.num_timesteps, (B,), generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.add_noise(x0, noise, t)  # (B, G)
        eps = model_fn(x_t, t)  # (B, G)
        check_shape("model output", eps, (B, G), "(B, G)")
        err = eps - noise  # (B, G)
        if not families:
            return 0.5 * (err.abs().mean() + err.pow(2).mean())
        losses = []
        for i, ix in enumerate(families):
            ix = check_integer(f"families[{i}]", check_shape(f"families[{i}]", ix, (None,), "(g,)"))
            if ix.numel() == 0:
                raise DataError(f"families[{i}]: expected at least one gene index, got none")
            e = err.index_select(1, ix.to(err.device))  # (B, g_f)
            losses.append(0.5 * (e.abs().mean() + e.pow(2).mean()))
        return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------
# samplers


class Sampler(Protocol):
    """``sample(eps_fn, shape)`` -> x0 of ``shape``. ``generator`` (on the device sampled on)
    seeds x_T and any step noise; ``x_T`` fixes the start instead of drawing it."""

    def sample(
        self,
        eps_fn: EpsFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor: ...


def _start(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    x_T: torch.Tensor | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    if x_T is not None:
        return check_floating("x_T", check_shape("x_T", x_T, shape, str(shape))).clone()
    dev = device if device is not None else (generator.device if generator is not None else "cpu")
    return torch.randn(shape, generator=generator, device=dev, dtype=dtype)  # x_T ~ N(0, I)


def _eps(eps_fn: EpsFn, x: torch.Tensor, t: int) -> torch.Tensor:
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
    eps = eps_fn(x, tt)  # (B, G)
    if eps.shape != x.shape:
        raise DataError(f"eps_fn: expected output shape {tuple(x.shape)}, got {tuple(eps.shape)}")
    return eps


class DDPMSampler:
    """Ancestral sampling, all T steps (DDPM Algorithm 2), no clamping.

    x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) + sqrt(var_t) z,
    var_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (the posterior variance), z = 0 at t = 0.
    """

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule

    @torch.no_grad()
    def sample(
        self,
        eps_fn: EpsFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw x0 of ``shape`` (B, G); ``x_T`` fixes the starting noise."""
        s = self.schedule
        x = _start(shape, generator, x_T, device, dtype)  # (B, G)
        for t in range(s.num_timesteps - 1, -1, -1):
            eps = _eps(eps_fn, x, t)  # (B, G)
            c_x = 1.0 / math.sqrt(float(s.alphas[t]))
            c_eps = float(s.betas[t]) / math.sqrt(1.0 - float(s.alphas_cumprod[t]))
            x = c_x * (x - c_eps * eps)  # posterior mean, (B, G)
            if t > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + math.sqrt(float(s.posterior_variance[t])) * z  # (B, G)
        return x


class DDIMSampler:
    """DDIM (Song et al. 2021, eq. 12) on ``steps`` timesteps 0, k, 2k, ... with k = T // steps.

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) and
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
    eta = 0 is deterministic given x_T; eta = 1 with steps = T is ancestral DDPM.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0) -> None:
        T = schedule.num_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ConfigError(f"steps: expected an integer in [1, {T}], got {steps!r}")
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta: expected a number in [0, 1], got {eta!r}")
        self.schedule = schedule
        self.steps = steps
        self.eta = float(eta)
        # every (T // steps)-th timestep from 0 (Song et al.'s uniform skip): steps = T is every
        # timestep; fewer steps start a little below T-1, which keeps schedules whose last abar
        # is ~0 (cosine) from dividing by sqrt(abar) ~ 0 at the first step
        grid = torch.arange(steps, dtype=torch.long) * (T // steps)  # (steps,)
        self.timesteps = grid.flip(0).tolist()  # descending

    @torch.no_grad()
    def sample(
        self,
        eps_fn: EpsFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw x0 of ``shape`` (B, G); ``x_T`` fixes the starting noise."""
        abar = self.schedule.alphas_cumprod
        x = _start(shape, generator, x_T, device, dtype)  # (B, G)
        ts = self.timesteps
        for i, t in enumerate(ts):
            a_t = float(abar[t])
            a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            eps = _eps(eps_fn, x, t)  # (B, G)
            x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)  # (B, G)
            sigma = self.eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
            c_dir = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0))
            x = math.sqrt(a_prev) * x0_hat + c_dir * eps  # (B, G)
            if sigma > 0.0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + sigma * z  # (B, G)
        return x


SAMPLERS: dict[str, Callable[..., Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample at scoring time: ``name`` in SAMPLERS; steps and eta apply to DDIM."""

    name: Literal["ddpm", "ddim"] = "ddim"
    steps: int = 50
    eta: float = 0.0
    n_samples: int = 3


def build_sampler(cfg: SamplerConfig, schedule: NoiseSchedule) -> Sampler:
    """The sampler named by ``cfg`` on ``schedule``."""
    if cfg.name == "ddpm":
        return DDPMSampler(schedule)
    if cfg.name == "ddim":
        return DDIMSampler(schedule, steps=cfg.steps, eta=cfg.eta)
    raise ConfigError(f"sampler: expected one of {sorted(SAMPLERS)}, got {cfg.name!r}")


def tile_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, ...) -> (B*n, ...) with row b*n + s holding item b (the layout of :func:`sample_n`)."""
    return x.repeat_interleave(n, dim=0)


@torch.no_grad()
def sample_n(
    sampler: Sampler,
    eps_fn: EpsFn,
    batch_size: int,
    n_genes: int,
    n_samples: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_samples`` per item in one sampling run; return mean and per-gene std, (B, G) each.

    The batch is tiled: ``eps_fn`` receives x_t of shape (B*n, G) where row b*n + s is sample s
    of item b (item-major, as :func:`tile_batch` lays out conditioning tensors), so one forward
    pass per step serves every sample. The std is the unbiased one over samples (0 when n = 1).
    """
    if batch_size < 1 or n_genes < 1 or n_samples < 1:
        raise ConfigError(
            f"sample_n: expected batch_size, n_genes, n_samples >= 1, "
            f"got {batch_size}, {n_genes}, {n_samples}"
        )
    x = sampler.sample(
        eps_fn, (batch_size * n_samples, n_genes), generator=generator, device=device, dtype=dtype
    )  # (B*n, G)
    x = x.view(batch_size, n_samples, n_genes)  # (B, n, G)
    mean = x.mean(dim=1)  # (B, G)
    std = x.std(dim=1, correction=1) if n_samples > 1 else torch.zeros_like(mean)  # (B, G)
    return mean, std
