"""Gaussian diffusion: noise schedules, the forward process, the training loss and samplers.

The network never sees the schedule. :class:`GaussianDiffusion` and the samplers take the model
as a callable ``model_fn(x_t (B, G), t (B,) int64) -> output (B, G)``, where ``t`` is the index
0..T-1 of the forward step (t = 0 is the least noisy). What that output means is a property of
the diffusion process, its ``prediction`` (as ``prediction_type`` in diffusers' schedulers):

- ``"eps"``: the noise itself (DDPM);
- ``"v"``: the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022),
  from which ``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v`` (substitute
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps to check).

The diffusion object turns the output into a noise prediction (:meth:`GaussianDiffusion.eps`)
for its loss and for the samplers built on it, so a network is never sampled or trained with
the wrong output type. At high noise (abar_t -> 0) the eps target is almost x_t itself, which a
network without an input-to-output skip reproduces only roughly; DDIM then divides that error by
sqrt(abar_t) in its x0 estimate and the samples blow up. With ``"v"`` the identity part is exact.

Notation (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"):
  alpha_t = 1 - beta_t,  abar_t = prod_{s<=t} alpha_s,  abar_{-1} = 1.
  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
Schedules are held in float64 and cast to the tensor's dtype at use. The samplers are in
:mod:`pathgen_batch.models.samplers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models.validation import check_floating, check_integer, check_shape

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> output, (B, G)

Prediction = Literal["eps", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "v")


def check_prediction(prediction: str) -> str:
    """``prediction`` if it names an output type in PREDICTIONS, else a ConfigError."""
    if prediction not in PREDICTIONS:
        raise ConfigError(f"prediction: expected one of {list(PREDICTIONS)}, got {prediction!r}")
    return prediction


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
    """The forward process and what the network outputs; saved with a generator so that
    sampling uses its training schedule and output type.

    prediction: ``eps`` (the noise) or ``v`` (the velocity, the default: see the module
    docstring). The loss is on the noise either way.
    """

    schedule: Literal["linear", "cosine"] = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4  # linear only
    beta_end: float = 0.02  # linear only
    cosine_s: float = 0.008  # cosine only
    prediction: Prediction = "v"

    def __post_init__(self) -> None:
        try:
            check_prediction(self.prediction)
        except ConfigError as e:
            raise ConfigError(f"DiffusionConfig.{e}") from e


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
    """The forward process q, the training loss, and the meaning of the network's output.

    ``prediction`` (``eps`` | ``v``) says what ``model_fn`` returns; it has no default, so a
    diffusion object always states it.
    """

    def __init__(self, schedule: NoiseSchedule, prediction: str) -> None:
        self.schedule = schedule
        self.prediction = check_prediction(prediction)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> GaussianDiffusion:
        return cls(NoiseSchedule.from_config(cfg), cfg.prediction)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def eps(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction from the network's ``output`` at (x_t, t); all (B, G).

        eps: the output itself; v: eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v.
        """
        if output.shape != x_t.shape:
            raise DataError(
                f"model output: expected shape {tuple(x_t.shape)} (B, G), got {tuple(output.shape)}"
            )
        if self.prediction == "eps":
            return output
        abar = self.schedule.alphas_cumprod
        return _at((1.0 - abar).sqrt(), t, x_t) * x_t + _at(abar.sqrt(), t, x_t) * output

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0; (B, G) -> (B, G)."""
        check_floating("x0", x0)
        check_shape("noise", noise, tuple(x0.shape), "like x0")
        t = self._check_t(t, x0.shape[0])
        abar = self.schedule.alphas_cumprod
        return _at(abar.sqrt(), t, x0) * noise - _at((1.0 - abar).sqrt(), t, x0) * x0

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
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        families: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Noise-prediction loss: 0.5 * (L1 + MSE) between predicted and true noise; scalar.

        The prediction is :meth:`eps` of ``model_fn``'s output, whatever ``prediction`` is.
        x0: (B, G). t: (B,) int64, drawn uniformly from [0, T) when None. noise: (B, G), standard
        normal when None. families: optional list of (g_f,) gene-index tensors; then the loss is
        computed per family (mean over its genes and the batch) and averaged over families, so
        every family weighs the same whatever its size.
        """
        check_floating("x0", check_shape("x0", x0, (None, None), "(B, G)"))
        B = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (B,), generator=generator, device=x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.add_noise(x0, noise, t)  # (B, G)
        eps = self.eps(model_fn(x_t, t), x_t, t)  # (B, G)
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


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample at scoring time: ``name`` in ``samplers.SAMPLERS``; steps and eta apply
    to DDIM (built by :func:`pathgen_batch.models.samplers.build_sampler`)."""

    name: Literal["ddpm", "ddim"] = "ddim"
    steps: int = 50
    eta: float = 0.0
    n_samples: int = 3
