"""Rendering one synthetic slide from a target tissue composition.

A slide is a white background with tissue blobs of random shape (a thresholded sum of random
anisotropic Gaussians and smooth noise). The tissue is cut into square cells; each cell belongs
to one morphology class, assigned from K smooth random fields so that classes form blobs and the
tissue area of each class matches the target composition (see ``class_map``). Each cell is
painted with a random real patch of its class; neighbouring patches overlap and are cross-faded
with complementary linear ramps (their weights sum to one), so no hard seams appear. A
per-slide stain change in HED space is applied last.

The rendered composition - the share of the tissue area drawn from each class - is measured on
the final tissue mask and returned with the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from pathgen_batch.errors import ConfigError
from pathgen_batch.synth.morphology import apply_morphology
from pathgen_batch.synth.stain import StainShift
from pathgen_batch.synth.texture import TextureLibrary

# Pixels per cell of the low-resolution tissue field.
FIELD_PX = 32
# Width of the soft tissue edge, in units of the tissue field.
EDGE = 0.004


@dataclass(frozen=True)
class RenderParams:
    """How a slide looks apart from its composition."""

    size_px: int = 2048
    tissue_fraction: tuple[float, float] = (0.4, 0.6)  # uniform range of tissue area share
    region_cells: float = 2.0  # smoothness of class regions, in cells
    stain_scale_sd: float = 0.05  # sd of the per-stain concentration scale
    stain_shift_sd: float = 0.02  # sd of the per-stain concentration shift

    def __post_init__(self) -> None:
        lo, hi = self.tissue_fraction
        if not 0.05 <= lo <= hi <= 0.95:
            raise ConfigError(
                f"tissue_fraction: expected 0.05 <= low <= high <= 0.95, got {self.tissue_fraction}"
            )
        if self.region_cells <= 0:
            raise ConfigError(f"region_cells: expected > 0, got {self.region_cells}")
        if self.stain_scale_sd < 0 or self.stain_shift_sd < 0:
            raise ConfigError("stain_scale_sd and stain_shift_sd must be >= 0")


@dataclass
class RenderedSlide:
    """Pixels (H, W, 3) uint8 and what was rendered."""

    rgb: np.ndarray
    class_fractions: np.ndarray  # (K,) share of the tissue area per class, sums to 1
    tissue_fraction: float  # tissue area / slide area
    stain: StainShift


def tissue_alpha(size: int, tissue_share: float, rng: np.random.Generator) -> np.ndarray:
    """(size, size) float32 tissue opacity in [0, 1] covering about ``tissue_share``."""
    n = size // FIELD_PX + 2
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) / (n - 1)  # (n, n) in [0, 1]
    field = np.zeros((n, n))
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.12, 0.35, 2)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(t) + dx * np.sin(t)) / ry
        v = (-dy * np.sin(t) + dx * np.cos(t)) / rx
        field = np.maximum(field, np.exp(-0.5 * (u * u + v * v)))
    noise = ndi.gaussian_filter(rng.normal(size=(n, n)), sigma=max(1.0, n / 16))
    field += 0.25 * noise / (noise.std() + 1e-12)
    thr = float(np.quantile(field, 1.0 - tissue_share))
    span = float(field.max() - field.min()) + 1e-12
    big = Image.fromarray(field.astype(np.float32), mode="F").resize(
        (size + 2 * FIELD_PX, size + 2 * FIELD_PX), Image.Resampling.BILINEAR
    )
    f = np.asarray(big)[FIELD_PX : FIELD_PX + size, FIELD_PX : FIELD_PX + size]
    return np.clip((f - thr) / (EDGE * span) + 0.5, 0.0, 1.0).astype(np.float32)


def class_map(
    mass: np.ndarray, target: np.ndarray, rng: np.random.Generator, smooth: float
) -> np.ndarray:
    """(ny, nx) int class of each cell whose tissue-weighted shares approach ``target`` (K,).

    ``mass`` (ny, nx) is the tissue area of each cell. Each class k has a smooth random field
    g_k; classes are visited in random order and each takes, among the cells still free, those
    where its field is highest until its tissue area is closest to its target; the last class
    takes the rest. Shares are exact up to the area of one cell, regions are smooth blobs.
    Cells without tissue take the arg-max of the fields.
    """
    k = len(target)
    g = ndi.gaussian_filter(rng.normal(size=(k, *mass.shape)), sigma=(0, smooth, smooth))
    g /= g.std(axis=(1, 2), keepdims=True) + 1e-12  # (K, ny, nx)
    labels = np.argmax(g, axis=0)  # (ny, nx)
    m = mass.ravel()
    free = np.flatnonzero(m > 0)
    total = m.sum()
    order = rng.permutation(k)
    for c in order[:-1]:
        if free.size == 0:
            break
        cand = free[np.argsort(-g[c].ravel()[free], kind="stable")]
        cum = np.cumsum(m[cand])  # (F,)
        want = target[c] * total
        take = int(np.searchsorted(cum, want))  # cum[take - 1] < want <= cum[take]
        if take < cand.size and abs(cum[take] - want) < abs((cum[take - 1] if take else 0) - want):
            take += 1
        labels.ravel()[cand[:take]] = c
        free = np.setdiff1d(free, cand[:take], assume_unique=True)
    labels.ravel()[free] = order[-1]
    return labels


def _ramp_window(patch: int, overlap: int) -> np.ndarray:
    """(patch, patch, 1) float32 separable weights.

    Linear ramps over ``overlap`` pixels at both ends: two patches placed ``patch - overlap``
    apart have weights summing to 1 where they overlap.
    """
    w = np.ones(patch, dtype=np.float32)
    r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    w[:overlap] = r
    w[patch - overlap :] = r[::-1]
    return (w[:, None] * w[None, :])[..., None]


def render_slide(
    library: TextureLibrary,
    target: np.ndarray,
    params: RenderParams,
    rng: np.random.Generator,
    morph_level: float = 0.0,
    morph_rng: np.random.Generator | None = None,
) -> RenderedSlide:
    """Render one slide whose tissue composition approaches ``target`` (K,) (sums to 1).

    morph_level > 0 draws grade morphology (:mod:`pathgen_batch.synth.morphology`) into every
    patch of the last, tumour-like class, with ``morph_rng`` (the draws of ``rng`` stay those
    of a slide without it).
    """
    k = library.n_classes
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (k,) or (target < 0).any() or abs(target.sum() - 1.0) > 1e-6:
        raise ConfigError(
            f"render_slide: target must be {k} non-negative shares summing to 1, got {target}"
        )
    size = params.size_px
    patch = library.patch_px
    overlap = patch // 4
    step = patch - overlap
    if size < patch:
        raise ConfigError(f"render_slide: slide size {size} px is smaller than a {patch} px patch")
    lo, hi = params.tissue_fraction
    alpha = tissue_alpha(size, float(rng.uniform(lo, hi)), rng)  # (S, S)

    n = -(-size // step)  # cells per side
    pad = n * step - size
    a = np.pad(alpha, ((0, pad), (0, pad)))
    mass = a.reshape(n, step, n, step).sum(axis=(1, 3))  # (n, n) tissue area per cell
    labels = class_map(mass, target, rng, params.region_cells)  # (n, n)

    # Cells -1..n on each axis; cell i paints image rows/columns [i * step - half, + patch),
    # so the cores [i * step, (i + 1) * step) are exact and the overlaps cross-fade. The canvas
    # has a margin of `patch` pixels on every side.
    half = overlap // 2
    need = ndi.maximum_filter(np.pad(mass > 0, 1), size=3)  # (n + 2, n + 2) cells to paint
    ext = np.pad(labels, 1, mode="edge")  # (n + 2, n + 2)
    canvas = np.zeros((n * step + 2 * patch, n * step + 2 * patch, 3), dtype=np.float32)
    win = _ramp_window(patch, overlap)  # (P, P, 1)
    buf = np.empty((patch, patch, 3), dtype=np.float32)
    tumour = k - 1
    if morph_level > 0 and morph_rng is None:
        raise ConfigError("render_slide: morph_level > 0 needs morph_rng")
    for iy in range(n + 2):
        y0 = (iy - 1) * step - half + patch
        for ix in range(n + 2):
            if not need[iy, ix]:
                continue
            x0 = (ix - 1) * step - half + patch
            cls = int(ext[iy, ix])
            tex = library.patch(cls, rng)
            if cls == tumour and morph_level > 0 and morph_rng is not None:
                tex = apply_morphology(tex, morph_level, morph_rng)
            np.multiply(tex, win, out=buf)
            canvas[y0 : y0 + patch, x0 : x0 + patch] += buf
    tissue = canvas[patch : patch + size, patch : patch + size]  # (S, S, 3), a view

    # rgb = alpha * tissue + (1 - alpha) * background, in place on the canvas
    bg = np.clip(np.array([242.0, 241.0, 244.0]) + rng.normal(0, 2.0, 3), 0, 255)
    bg32 = bg.astype(np.float32) + 0.5  # + 0.5 rounds on the cast below
    tissue -= bg32
    tissue *= alpha[..., None]
    tissue += bg32
    rgb = tissue.astype(np.uint8)
    stain = StainShift.random(rng, params.stain_scale_sd, params.stain_shift_sd)
    rgb = stain.apply(rgb)

    share = np.bincount(labels.ravel(), weights=mass.ravel(), minlength=k)
    share = share / max(share.sum(), 1e-12)
    return RenderedSlide(
        rgb=rgb, class_fractions=share, tissue_fraction=float(alpha.mean()), stain=stain
    )
