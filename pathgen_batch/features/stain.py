"""The ``stain-texture`` encoder: hand-built H&E colour and texture features.

Two feature sets with the same names and meaning: ``v2`` (the default) computes them about 20
times faster (see :mod:`pathgen_batch.features.stain_v2`); ``v1``, described below, stays
reproducible by its version (``-o feature_set=v1``, or a contract that names it).

Runs anywhere on the CPU with nothing downloaded, is deterministic, and runs on the GPU when
asked. Every feature is computed per tile, so results do not depend on the batch size, and every
feature is invariant to 90-degree rotations and flips of the tile (tissue has no orientation on
the glass).

Per tile (features listed by :func:`feature_names`):
1. Colour deconvolution (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 2001): optical density
   ``OD = -log10(I / 255)`` per RGB channel (I clipped to >= 1), then stain concentrations
   ``c = OD @ inv(M)`` where the rows of M are the unit optical-density vectors of haematoxylin,
   eosin and DAB. DAB is absent from H&E; its channel collects what the two stains do not explain.
2. Per stain: mean, standard deviation and the 5/25/50/75/95 % quantiles (quantiles over 4x4
   averaged pixels); H and E means over tissue pixels only; H-E correlation; mean OD;
   background fraction; mean RGB.
3. Fractions of nuclei-like pixels (H high and dominant, at two levels) and of eosin-rich pixels,
   and a nuclei count: local maxima (3x3) of the H channel averaged over 2x2 and over 4x4
   pixels and smoothed (Gaussian, sigma 1 px), above the nuclei level, per 1000 tile pixels.
4. Texture energies of the H and E channels at ``scales`` dyadic scales, starting from the tile
   averaged over 2x2 pixels (1 um/px at 0.5 mpp; nuclei are still 7-10 px across) and halving
   again per scale: gradient (Sobel), Laplacian, and an even Gabor filter (wavelength 4 px) at 4
   orientations, summarised by the mean energy over orientations and its anisotropy
   (std / mean). Energies are reported as ``log10(energy + 1e-6)``. Working from half resolution
   keeps the encoder near 4x faster on CPU; colour statistics use every pixel.
5. With ``grid``: the 2x2 quadrants' H mean, E mean and nuclei fraction, each sorted across the
   quadrants (sorting keeps rotation invariance while describing heterogeneity).

With the defaults (3 scales, grid on) the dimension is 70. Features keep their natural scales
(optical densities about 0-2, fractions 0-1, log energies about -6-0); models standardise them
with statistics of their training fold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pathgen_batch.errors import ConfigError
from pathgen_batch.features import stain_v2
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.encoder import Encoder

NAME = "stain-texture"
FEATURE_SETS = ("v1", "v2")
VERSION = "v2"  # the default feature set

# Ruifrok & Johnston (2001) optical-density vectors (R, G, B) of the three stains.
RUIFROK_JOHNSTON = np.array(
    [
        [0.650, 0.704, 0.286],  # haematoxylin
        [0.072, 0.990, 0.105],  # eosin
        [0.268, 0.570, 0.776],  # DAB
    ]
)
STAINS = ("h", "e", "dab")
QUANTILES = (0.05, 0.25, 0.50, 0.75, 0.95)
TISSUE_OD = 0.10  # a pixel is tissue when its largest channel OD exceeds this
NUCLEI_H = (0.35, 0.60)  # nuclei-like: H above this and H above E
EOSIN_E = 0.15  # eosin-rich: E above this and E above H
BLOB_DOWNSAMPLES = (2, 4)  # H is averaged over d x d pixels before counting local maxima
BLOB_SIGMA = 1.0  # Gaussian smoothing (px of the averaged view) before counting
ENERGY_FLOOR = 1e-6
GABOR_WAVELENGTH = 4.0
GABOR_SIGMA = 2.0
GABOR_ANGLES = (0.0, 45.0, 90.0, 135.0)
KERNEL = 7  # side of every texture kernel


@dataclass(frozen=True)
class StainTextureConfig:
    """tile_px, mpp: the tiling the encoder expects; scales: texture scales (1..4);
    grid: add the sorted 2x2-quadrant features; feature_set: ``v2`` (fast) or ``v1``."""

    tile_px: int = 256
    mpp: float = 0.5
    scales: int = 3
    grid: bool = True
    feature_set: str = VERSION

    def __post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise ConfigError(
                f"stain-texture: feature_set must be one of {list(FEATURE_SETS)}, "
                f"got {self.feature_set!r}"
            )
        if self.feature_set == "v2" and self.tile_px % 4:
            raise ConfigError(
                f"stain-texture: feature_set v2 needs tile_px divisible by 4, got {self.tile_px}"
            )
        if not 1 <= self.scales <= 4:
            raise ConfigError(f"stain-texture: scales must be 1..4, got {self.scales}")
        smallest = 16 * 2 ** (self.scales - 1)
        if self.tile_px < smallest:
            raise ConfigError(
                f"stain-texture: tile_px must be >= {smallest} for {self.scales} scale(s), "
                f"got {self.tile_px}"
            )
        if not self.mpp > 0:
            raise ConfigError(f"stain-texture: mpp must be positive, got {self.mpp}")

    @property
    def version(self) -> str:
        """The feature set (``v2``, ``v1``) for the default texture settings, else
        ``<set>-s<scales>-grid<0|1>``."""
        if (self.scales, self.grid) == (3, True):
            return self.feature_set
        return f"{self.feature_set}-s{self.scales}-grid{int(self.grid)}"


def options_for_version(version: str) -> dict[str, Any]:
    """Config options (feature_set, scales, grid) that give ``version``; inverse of
    ``.version``."""
    m = re.fullmatch(r"(v[12])(?:-s([1-4])-grid([01]))?", version)
    if m is None:
        raise ConfigError(
            f"stain-texture: unknown version {version!r}; this code makes 'v2', 'v1' "
            "or '<v2|v1>-s<1-4>-grid<0|1>'"
        )
    if m.group(2) is None:
        return {"feature_set": m.group(1), "scales": 3, "grid": True}
    return {"feature_set": m.group(1), "scales": int(m.group(2)), "grid": m.group(3) == "1"}


def feature_names(cfg: StainTextureConfig | None = None) -> tuple[str, ...]:
    """Names of the feature columns, in output order."""
    cfg = cfg or StainTextureConfig()
    names: list[str] = []
    for s in STAINS:
        names += [f"{s}_mean", f"{s}_std"] + [f"{s}_q{int(q * 100):02d}" for q in QUANTILES]
    names += ["h_mean_tissue", "e_mean_tissue", "he_corr", "od_mean", "background_frac"]
    names += ["rgb_mean_r", "rgb_mean_g", "rgb_mean_b"]
    names += [f"nuclei_frac_{t:g}" for t in NUCLEI_H] + ["eosin_frac"]
    names += [f"nuclei_per_kpx_ds{d}" for d in BLOB_DOWNSAMPLES]
    for k in range(cfg.scales):
        for s in ("h", "e"):
            names += [f"{s}_grad_log_s{k}", f"{s}_lap_log_s{k}"]
            names += [f"{s}_gabor_log_s{k}", f"{s}_gabor_aniso_s{k}"]
    if cfg.grid:
        for what in ("h_mean", "e_mean", "nuclei_frac"):
            names += [f"grid_{what}_{i}" for i in range(4)]
    return tuple(names)


def _texture_kernels() -> torch.Tensor:
    """(3 + len(GABOR_ANGLES), 1, KERNEL, KERNEL): Sobel x, Sobel y, Laplacian, Gabor(theta)."""
    k = np.zeros((3 + len(GABOR_ANGLES), KERNEL, KERNEL))
    c = KERNEL // 2
    sobel = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    k[0, c - 1 : c + 2, c - 1 : c + 2] = sobel
    k[1, c - 1 : c + 2, c - 1 : c + 2] = sobel.T
    k[2, c - 1 : c + 2, c - 1 : c + 2] = [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]
    yy, xx = np.mgrid[-c : c + 1, -c : c + 1].astype(np.float64)
    envelope = np.exp(-(xx**2 + yy**2) / (2 * GABOR_SIGMA**2))
    for i, deg in enumerate(GABOR_ANGLES):
        th = math.radians(deg)
        # Snap cos/sin so that 0/90 and 45/135 degree kernels are exact transposes.
        ct, st = round(math.cos(th), 12), round(math.sin(th), 12)
        u = xx * ct + yy * st
        g = envelope * np.cos(2 * math.pi * u / GABOR_WAVELENGTH)
        g -= envelope * (g.sum() / envelope.sum())  # zero mean: blind to flat intensity
        k[3 + i] = g / np.abs(g).sum()
    return torch.from_numpy(k[:, None]).to(torch.float32)


def _gaussian_1d(sigma: float) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(torch.float32)


def _quantiles(v: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """(R, n) -> (R, len(qs)) linear-interpolated quantiles of each row."""
    n = v.shape[-1]
    srt = torch.sort(v, dim=-1).values  # (R, n)
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        out.append(srt[:, lo] * (1 - frac) + srt[:, hi] * frac)
    return torch.stack(out, dim=-1)


def _log_energy(e: torch.Tensor) -> torch.Tensor:
    return torch.log10(e + ENERGY_FLOOR)


class StainTextureEncoder(Encoder):
    """Colour-deconvolution statistics and multi-scale texture energies; see module docstring."""

    def __init__(
        self, cfg: StainTextureConfig | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.cfg = cfg or StainTextureConfig()
        self.names = feature_names(self.cfg)
        contract = FeatureContract(
            encoder=NAME,
            version=self.cfg.version,
            dim=len(self.names),
            tile_px=self.cfg.tile_px,
            mpp=self.cfg.mpp,
        )
        super().__init__(contract, device)
        m = RUIFROK_JOHNSTON / np.linalg.norm(RUIFROK_JOHNSTON, axis=1, keepdims=True)
        kernels = _texture_kernels()
        self._cpu_tensors = {
            "deconv": torch.from_numpy(np.linalg.inv(m)).to(torch.float32),  # (3 rgb, 3 stains)
            "kernels": kernels,
            "gauss": _gaussian_1d(BLOB_SIGMA),
        }
        if self.cfg.feature_set == "v2":
            half = self.cfg.tile_px // 2
            k = kernels[:, 0].numpy().astype(np.float64)
            self._cpu_tensors["weights"] = stain_v2.spectral_weights(k, half, self.cfg.scales)
            self._cpu_tensors["window"] = torch.from_numpy(stain_v2.tukey(half)).float()
        self._moved()

    def _moved(self) -> None:
        self._t = {k: v.to(self.device) for k, v in self._cpu_tensors.items()}

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with reflect padding: (N, 1, h, w) -> (N, 1, h, w)."""
        g = self._t["gauss"]
        r = g.numel() // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), g.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), g.view(1, 1, -1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, D)."""
        if self.cfg.feature_set == "v2":
            return stain_v2.forward_v2(
                images,
                self._t["deconv"],
                self._t["weights"],
                self._t["window"],
                scales=self.cfg.scales,
                grid=self.cfg.grid,
                quantiles=QUANTILES,
                tissue_od=TISSUE_OD,
                nuclei_h=NUCLEI_H,
                eosin_e=EOSIN_E,
                energy_floor=ENERGY_FLOOR,
            )
        return self._forward_v1(images)

    def _forward_v1(self, images: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = images.shape
        rgb = images.permute(0, 3, 1, 2).to(torch.float32)  # (B, 3, H, W)
        od = -torch.log10(rgb.clamp(min=1.0) / 255.0)  # (B, 3, H, W)
        conc = torch.einsum("bchw,cs->bshw", od, self._t["deconv"])  # (B, 3, H, W)
        h, e = conc[:, 0], conc[:, 1]  # (B, H, W)
        half = F.avg_pool2d(conc, 2)  # (B, 3, H/2, W/2)
        quarter = F.avg_pool2d(half, 2)  # (B, 3, H/4, W/4)
        feats: list[torch.Tensor] = []

        # Stain statistics.
        flat = conc.flatten(2)  # (B, 3, HW)
        mean = flat.mean(-1)  # (B, 3)
        sd = flat.std(-1, correction=0)  # (B, 3)
        qs = _quantiles(quarter.reshape(B * 3, -1), QUANTILES).view(B, 3, -1)  # (B, 3, Q)
        stats = torch.cat([mean[..., None], sd[..., None], qs], dim=-1)  # (B, 3, 2 + Q)
        feats.append(stats.reshape(B, -1))  # (B, 3 * (2 + Q))

        tissue = (od.amax(dim=1) > TISSUE_OD).to(torch.float32)  # (B, H, W)
        n_tissue = tissue.sum(dim=(1, 2)).clamp(min=1.0)  # (B,)
        cov = (h * e).mean(dim=(1, 2)) - mean[:, 0] * mean[:, 1]  # (B,)
        corr = cov / (sd[:, 0] * sd[:, 1]).clamp(min=1e-8)  # (B,)
        feats.append(
            torch.stack(
                [
                    (h * tissue).sum(dim=(1, 2)) / n_tissue,
                    (e * tissue).sum(dim=(1, 2)) / n_tissue,
                    corr,
                    od.mean(dim=(1, 2, 3)),
                    1.0 - tissue.mean(dim=(1, 2)),
                ],
                dim=-1,
            )
        )  # (B, 5)
        feats.append(rgb.mean(dim=(2, 3)) / 255.0)  # (B, 3)

        # Nuclei and eosin fractions, nuclei counts.
        dominant_h = h > e  # (B, H, W)
        nuclei = [((h > t) & dominant_h).to(torch.float32) for t in NUCLEI_H]  # each (B, H, W)
        eosin = ((e > EOSIN_E) & ~dominant_h).to(torch.float32)  # (B, H, W)
        fracs = [n.mean(dim=(1, 2)) for n in nuclei] + [eosin.mean(dim=(1, 2))]
        feats.append(torch.stack(fracs, dim=-1))  # (B, 3)
        counts = []
        views = {2: half, 4: quarter}
        for d in BLOB_DOWNSAMPLES:
            hs = self._smooth(views[d][:, :1])  # (B, 1, H/d, W/d)
            local_max = F.max_pool2d(hs, 3, stride=1, padding=1)  # (B, 1, H/d, W/d)
            blobs = ((local_max == hs) & (hs > NUCLEI_H[0])).to(torch.float32)
            counts.append(blobs.sum(dim=(1, 2, 3)) * (1000.0 / (H * W)))
        feats.append(torch.stack(counts, dim=-1))  # (B, 2)

        # Texture energies of H and E over dyadic scales from half resolution.
        x = half[:, :2].reshape(B * 2, 1, H // 2, W // 2)  # (2B, 1, h, w)
        kern = self._t["kernels"]  # (K, 1, 7, 7)
        p = KERNEL // 2
        for k in range(self.cfg.scales):
            if k > 0:
                x = F.avg_pool2d(x, 2)  # (2B, 1, h / 2^k, w / 2^k)
            r = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), kern)  # (2B, K, ., .)
            en = r.square().mean(dim=(2, 3))  # (2B, K)
            gab = en[:, 3:]  # (2B, n_angles)
            gab_mean = gab.mean(-1)  # (2B,)
            t = torch.stack(
                [
                    _log_energy(en[:, 0] + en[:, 1]),
                    _log_energy(en[:, 2]),
                    _log_energy(gab_mean),
                    gab.std(-1) / (gab_mean + ENERGY_FLOOR),
                ],
                dim=-1,
            )  # (2B, 4)
            feats.append(t.view(B, 2 * 4))

        # Sorted 2x2-quadrant heterogeneity.
        if self.cfg.grid:
            for m in (h, e, nuclei[0]):
                q = F.adaptive_avg_pool2d(m[:, None], 2).flatten(1)  # (B, 4)
                feats.append(torch.sort(q, dim=-1).values)

        return torch.cat(feats, dim=-1)  # (B, D)
