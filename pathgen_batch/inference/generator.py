"""The trained generator as used at scoring time: raw tile bags -> synthetic transcriptomes.

A :class:`TrainedGenerator` carries the denoiser with its diffusion process (schedule and
output type), its default sampler, both scalers, the gene panel, the feature contract and
provenance; :mod:`pathgen_batch.inference.bundle` saves and loads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypedDict, Unpack

import numpy as np
import torch

from pathgen_batch.errors import DataError
from pathgen_batch.features.bags import padded
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.inference.inputs import (
    DEFAULT_BATCH,
    OnDevice,
    check_bags,
    check_batch_size,
)
from pathgen_batch.inference.scaling import ZScoreScaler
from pathgen_batch.models.diffusion import DiffusionConfig, GaussianDiffusion, SamplerConfig
from pathgen_batch.models.generator import BagMemory, TranscriptomeDenoiser
from pathgen_batch.models.samplers import build_sampler, check_sampler, posterior_mean
from pathgen_batch.omics.panel import GenePanel


def _bag_seed(seed: int, bag: np.ndarray) -> int:
    """A 63-bit seed from ``seed`` and the bag's bytes: the same slide gets the same noise
    whatever the batch it is scored in."""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(8, "little", signed=True))
    h.update(np.ascontiguousarray(bag, dtype=np.float32).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


class GenerateOptions(TypedDict, total=False):
    """The keyword options of :meth:`TrainedGenerator.sample_scaled` (and of ``samples``,
    ``generate_scaled`` and ``generate``, which pass them on)."""

    n_samples: int | None
    sampler: SamplerConfig | None
    seed: int
    batch_size: int


@dataclass(eq=False)
class TrainedGenerator(OnDevice):
    """The conditional diffusion generator with its process, sampler, scalers and contract.

    ``diffusion`` says what the network outputs (``diffusion.prediction``); ``train_config`` is
    the training configuration as plain data, kept for provenance only.
    """

    kind: ClassVar[str] = "generator"
    model_name: ClassVar[str] = "generator"

    model: TranscriptomeDenoiser
    diffusion: DiffusionConfig
    sampler: SamplerConfig
    expression_scaler: ZScoreScaler
    feature_scaler: ZScoreScaler
    panel: GenePanel
    contract: FeatureContract
    grade_classes: tuple[str, ...]
    train_config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    name: str = "pathgen-generator"

    def __post_init__(self) -> None:
        c = self.model.config
        if c.feature_dim != self.contract.dim or c.n_genes != self.panel.n_genes:
            raise DataError(
                f"generator: model expects D={c.feature_dim}, G={c.n_genes}; contract has "
                f"D={self.contract.dim}, panel G={self.panel.n_genes}"
            )
        if self.feature_scaler.dim != self.contract.dim:
            raise DataError("generator: feature scaler and contract differ in dimension")
        if self.expression_scaler.dim != self.panel.n_genes:
            raise DataError("generator: expression scaler and gene panel differ in length")
        check_sampler(self.sampler, self.diffusion, "generator sampler")
        self.model.eval()

    def _encoded(
        self, raw: Sequence[np.ndarray], batch_size: int
    ) -> Iterator[tuple[np.ndarray, BagMemory]]:
        """(indices (B,), memory) per ``batch_size`` checked raw bags: the bags scaled, padded
        and projected once by the denoiser's bag encoder, for every denoising step to attend."""
        scaled = self.feature_scaler.transform_all(raw)
        self.model.eval()
        for s in range(0, len(scaled), batch_size):
            idx = np.arange(s, min(s + batch_size, len(scaled)))
            feats, mask = padded(scaled, idx, self.device)  # (B, N, D), (B, N)
            yield idx, self.model.encode_bag(feats, mask)

    @torch.no_grad()
    def sample_scaled(
        self,
        bags: Sequence[np.ndarray],
        n_samples: int | None = None,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH,
    ) -> np.ndarray:
        """``n_samples`` samples per slide in the scaler's space (z-scores), (B, n, G).

        Each slide's starting noise is seeded by ``seed`` and the slide's features, so with a
        deterministic sampler (DDIM, eta 0) a slide's output does not depend on the batch it
        is in; stochastic samplers also draw step noise for the whole batch from ``seed``.
        """
        scfg = sampler or self.sampler
        n = scfg.n_samples if n_samples is None else n_samples
        scfg = dataclasses.replace(scfg, n_samples=n)
        check_sampler(scfg, self.diffusion, "sampler")
        check_batch_size(batch_size)
        raw = check_bags(bags, self.contract.dim)
        smp = build_sampler(scfg, GaussianDiffusion.from_config(self.diffusion))
        dev, G = self.device, self.panel.n_genes
        out = []
        for idx, memory in self._encoded(raw, batch_size):
            x_T = torch.cat(
                [
                    torch.randn(
                        n, G, generator=torch.Generator().manual_seed(_bag_seed(seed, raw[i]))
                    )
                    for i in idx
                ]
            ).to(dev)  # (B*n, G), row b*n + s = sample s of bag b
            g = torch.Generator(device=dev).manual_seed(seed)
            x = smp.sample(
                lambda x_t, t: self.model.denoise(x_t, t, memory),  # noqa: B023
                (len(idx) * n, G),
                generator=g,
                x_T=x_T,
            )  # (B*n, G)
            out.append(x.view(len(idx), n, G).cpu().numpy())  # (B, n, G)
        if not out:
            return np.zeros((0, n, G), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def generate_scaled(
        self, bags: Sequence[np.ndarray], **options: Unpack[GenerateOptions]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and per-gene std over samples (:meth:`sample_scaled`, whose options these are)
        in the scaler's space (z-scores), (B, G) each; the std is 0 for one sample."""
        x = self.sample_scaled(bags, **options)  # (B, n, G)
        mean = x.mean(axis=1)
        sd = x.std(axis=1, ddof=1) if x.shape[1] > 1 else np.zeros_like(mean)
        return mean.astype(np.float32), sd.astype(np.float32)

    def samples(self, bags: Sequence[np.ndarray], **options: Unpack[GenerateOptions]) -> np.ndarray:
        """:meth:`sample_scaled` in expression units, (B, n, G)."""
        x = self.sample_scaled(bags, **options)
        B, n, G = x.shape
        return self.expression_scaler.inverse_transform(x.reshape(B * n, G)).reshape(B, n, G)

    @torch.no_grad()
    def posterior_mean(
        self, bags: Sequence[np.ndarray], steps: int | None = None, batch_size: int = DEFAULT_BATCH
    ) -> np.ndarray:
        """The deterministic posterior-mean estimate (DDIM eta 0 from x_T = 0, ``steps``
        steps, default the stored sampler's; :func:`~pathgen_batch.models.samplers.posterior_mean`)
        of raw bags, in expression units, (B, G)."""
        check_batch_size(batch_size)
        raw = check_bags(bags, self.contract.dim)
        diffusion = GaussianDiffusion.from_config(self.diffusion)
        k = self.sampler.steps if steps is None else steps
        dev, G = self.device, self.panel.n_genes
        out = []
        for idx, memory in self._encoded(raw, batch_size):
            x = posterior_mean(
                diffusion,
                lambda x_t, t: self.model.denoise(x_t, t, memory),  # noqa: B023
                (len(idx), G),
                steps=k,
                device=dev,
            )
            out.append(x.cpu().numpy())
        z = np.concatenate(out) if out else np.zeros((0, G), dtype=np.float32)
        return self.expression_scaler.inverse_transform(z.astype(np.float32))

    def generate(
        self, bags: Sequence[np.ndarray], **options: Unpack[GenerateOptions]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic transcriptomes of raw bags (each (N_i, D)) in expression units.

        Returns (mean (B, G), std (B, G)) over ``n_samples`` samples per slide (default: the
        stored sampler's), drawn with ``sampler`` (default: the stored one); the options are
        :meth:`generate_scaled`'s.
        """
        mean_z, std_z = self.generate_scaled(bags, **options)
        return (
            self.expression_scaler.inverse_transform(mean_z),
            self.expression_scaler.inverse_scale(std_z),
        )
