"""Samplers of the reverse process: DDPM (ancestral) and DDIM, and their registry.

A sampler is built on a :class:`~pathgen_batch.models.diffusion.GaussianDiffusion` and takes the
network as a callable ``model_fn(x_t (B, G), t (B,) int64) -> output (B, G)``; the diffusion
object turns that output into the noise prediction eps that the update formulas below use, so
the sampler always reads the output as the type the network was trained to produce.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import torch

from pathgen_batch.errors import ConfigError
from pathgen_batch.models.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    ModelFn,
    SamplerConfig,
)
from pathgen_batch.models.validation import check_floating, check_shape


class Sampler(abc.ABC):
    """``sample(model_fn, shape)`` -> x0 of ``shape``. ``model_fn`` is the network; the sampler's
    diffusion object turns its output into the noise. ``generator`` (on the device sampled on)
    seeds x_T and any step noise; ``x_T`` fixes the start instead of drawing it. A sampler
    implements :meth:`reverse`, the walk from x_T to x0."""

    diffusion: GaussianDiffusion

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Draw x0 of ``shape`` (B, G); ``x_T`` fixes the starting noise."""
        x = _start(shape, generator, x_T, device, dtype)  # (B, G)
        return self.reverse(model_fn, x, generator)

    @abc.abstractmethod
    def reverse(
        self, model_fn: ModelFn, x: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """x0 from the starting noise ``x`` (B, G); ``generator`` draws any step noise."""


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


def _eps(diffusion: GaussianDiffusion, model_fn: ModelFn, x: torch.Tensor, t: int) -> torch.Tensor:
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
    return diffusion.eps(model_fn(x, tt), x, tt)  # (B, G)


class DDPMSampler(Sampler):
    """Ancestral sampling, all T steps (DDPM Algorithm 2), no clamping.

    x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps) + sqrt(var_t) z,
    var_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (the posterior variance), z = 0 at t = 0.
    """

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.diffusion = diffusion

    def reverse(
        self, model_fn: ModelFn, x: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        s = self.diffusion.schedule
        for t in range(s.num_timesteps - 1, -1, -1):
            eps = _eps(self.diffusion, model_fn, x, t)  # (B, G)
            c_x = 1.0 / math.sqrt(float(s.alphas[t]))
            c_eps = float(s.betas[t]) / math.sqrt(1.0 - float(s.alphas_cumprod[t]))
            x = c_x * (x - c_eps * eps)  # posterior mean, (B, G)
            if t > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + math.sqrt(float(s.posterior_variance[t])) * z  # (B, G)
        return x


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) on ``steps`` timesteps 0, k, 2k, ... with k = T // steps.

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) and
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
    eta = 0 is deterministic given x_T; eta = 1 with steps = T is ancestral DDPM.
    """

    def __init__(self, diffusion: GaussianDiffusion, steps: int = 50, eta: float = 0.0) -> None:
        T = diffusion.num_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
            raise ConfigError(f"steps: expected an integer in [1, {T}], got {steps!r}")
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta: expected a number in [0, 1], got {eta!r}")
        self.diffusion = diffusion
        self.steps = steps
        self.eta = float(eta)
        # every (T // steps)-th timestep from 0 (Song et al.'s uniform skip): steps = T is every
        # timestep; fewer steps start a little below T-1, which keeps schedules whose last abar
        # is ~0 (cosine) from dividing by sqrt(abar) ~ 0 at the first step
        grid = torch.arange(steps, dtype=torch.long) * (T // steps)  # (steps,)
        self.timesteps = grid.flip(0).tolist()  # descending

    def reverse(
        self, model_fn: ModelFn, x: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        abar = self.diffusion.schedule.alphas_cumprod
        ts = self.timesteps
        for i, t in enumerate(ts):
            a_t = float(abar[t])
            a_prev = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
            eps = _eps(self.diffusion, model_fn, x, t)  # (B, G)
            x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)  # (B, G)
            sigma = self.eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
            c_dir = math.sqrt(max(1.0 - a_prev - sigma**2, 0.0))
            x = math.sqrt(a_prev) * x0_hat + c_dir * eps  # (B, G)
            if sigma > 0.0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + sigma * z  # (B, G)
        return x


SAMPLERS: dict[str, Callable[..., Sampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def build_sampler(cfg: SamplerConfig, diffusion: GaussianDiffusion) -> Sampler:
    """The sampler named by ``cfg`` on ``diffusion``."""
    if cfg.name == "ddpm":
        return DDPMSampler(diffusion)
    if cfg.name == "ddim":
        return DDIMSampler(diffusion, steps=cfg.steps, eta=cfg.eta)
    raise ConfigError(f"sampler: expected one of {sorted(SAMPLERS)}, got {cfg.name!r}")


def check_sampler(sampler: SamplerConfig, diffusion: DiffusionConfig, where: str) -> None:
    """Raise ConfigError unless ``sampler`` can run on ``diffusion``'s schedule."""
    if isinstance(sampler.n_samples, bool) or sampler.n_samples < 1:
        raise ConfigError(f"{where}.n_samples: expected >= 1, got {sampler.n_samples!r}")
    try:
        build_sampler(sampler, GaussianDiffusion.from_config(diffusion))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e


def tile_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, ...) -> (B*n, ...) with row b*n + s holding item b (the layout of :func:`sample_n`)."""
    return x.repeat_interleave(n, dim=0)


@torch.no_grad()
def sample_n(
    sampler: Sampler,
    model_fn: ModelFn,
    batch_size: int,
    n_genes: int,
    n_samples: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_samples`` per item in one sampling run; return mean and per-gene std, (B, G) each.

    The batch is tiled: ``model_fn`` receives x_t of shape (B*n, G) where row b*n + s is sample s
    of item b (item-major, as :func:`tile_batch` lays out conditioning tensors), so one forward
    pass per step serves every sample. The std is the unbiased one over samples (0 when n = 1).
    """
    if batch_size < 1 or n_genes < 1 or n_samples < 1:
        raise ConfigError(
            f"sample_n: expected batch_size, n_genes, n_samples >= 1, "
            f"got {batch_size}, {n_genes}, {n_samples}"
        )
    x = sampler.sample(
        model_fn, (batch_size * n_samples, n_genes), generator=generator, device=device, dtype=dtype
    )  # (B*n, G)
    x = x.view(batch_size, n_samples, n_genes)  # (B, n, G)
    mean = x.mean(dim=1)  # (B, G)
    std = x.std(dim=1, correction=1) if n_samples > 1 else torch.zeros_like(mean)  # (B, G)
    return mean, std


@torch.no_grad()
def posterior_mean(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: tuple[int, ...],
    steps: int = 50,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A deterministic estimate of the posterior mean E[x0 | condition], (B, G).

    DDIM with eta 0 integrates the probability-flow ODE, which carries the prior N(0, I) onto
    the model's conditional distribution; started from the prior's mean x_T = 0 it lands on the
    conditional mean exactly when that distribution is Gaussian, and close to it when it is
    unimodal. One chain per item instead of the n chains of an n-sample mean, with no
    Monte-Carlo noise; the n-sample mean converges to the true posterior mean, this estimate to
    the ODE image of the noise mean.
    """
    x_T = torch.zeros(shape, device=device, dtype=dtype)
    return DDIMSampler(diffusion, steps=steps, eta=0.0).sample(model_fn, shape, x_T=x_T)
