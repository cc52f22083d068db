"""What the denoiser's output means: the noise itself, or the velocity v.

The samplers and the diffusion loss work with a noise prediction ``eps_fn(x_t, t)``. The
network may predict it directly (``"eps"``, as in DDPM) or predict the velocity
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (``"v"``, Salimans & Ho 2022), from which

    eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v

(substitute x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps to check).
At high noise (abar_t -> 0) the eps target is almost x_t itself, which a network without an
input-to-output skip reproduces only roughly; DDIM then divides that error by sqrt(abar_t) in
its x0 estimate and the samples blow up. With ``"v"`` the identity part is exact and
``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` has no such division.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from pathgen_batch.errors import ConfigError
from pathgen_batch.models.diffusion import EpsFn, NoiseSchedule

Prediction = Literal["eps", "v"]
PREDICTIONS: tuple[str, ...] = ("eps", "v")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ConfigError(f"prediction: expected one of {list(PREDICTIONS)}, got {prediction!r}")
    return prediction


def as_eps_fn(
    net_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    prediction: str,
) -> EpsFn:
    """Wrap ``net_fn(x_t (B, G), t (B,)) -> output (B, G)`` into a noise prediction."""
    if check_prediction(prediction) == "eps":
        return net_fn
    abar = schedule.alphas_cumprod  # (T,) float64

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t.detach().cpu()].to(x_t.dtype).to(x_t.device)[:, None]  # (B, 1)
        return (1.0 - a).sqrt() * x_t + a.sqrt() * net_fn(x_t, t)  # (B, G)

    return eps_fn
