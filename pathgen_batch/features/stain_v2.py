"""The ``stain-texture`` v2 feature set: the v1 features computed for a fraction of the cost.

Same features, names and order as v1 (:func:`pathgen_batch.features.stain.feature_names`), the
same science, computed at coarser pixels and with cheaper operators:

1. Pixels are 2x2 means of the tile's intensities (1 um/px at 0.5 mpp, what a 20x scanner's
   detector integrates; nuclei are still 7-10 px across). Colour deconvolution (Ruifrok &
   Johnston) runs on them: ``OD = -log10(I / 255)`` (I clipped to >= 1) and ``c = OD @ inv(M)``.
   Every per-pixel statistic (means, standard deviations, H-E correlation, tissue and
   background, nuclei and eosin fractions, grid) uses these pixels; means of RGB are exact.
2. Quantiles are read from a 512-bin histogram of 4x4-pixel means (v1 sorts the same values),
   linearly interpolated inside the bin and kept inside the values' range (error below one
   bin, 0.0078 OD).
3. Nuclei counts: H smoothed by the binomial kernel [1 4 6 4 1] / 16 (a Gaussian of sigma 1 px)
   and 3x3 local maxima by shifted comparisons, at 2x2 and 4x4 pixels like v1.
4. Texture energies come from one power spectrum per stain: by Parseval's theorem the mean
   energy of a filter's response is the sum of the image's power spectrum weighted by the
   filter's squared frequency response, so the Sobel, Laplacian and 4 Gabor filters of v1 at
   every dyadic scale (the filter dilated by 2^k behind a 2^k box average, as v1's pyramid)
   are one matrix product with precomputed weights. The image (2x2 pixels, weighted mean
   removed) is tapered by a separable Tukey window so that its borders do not wrap.

The window, the box filter and the filter set are symmetric under 90-degree rotations and flips,
so every feature stays invariant to them; every feature is still computed per tile.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

HIST_BINS = 512
HIST_RANGE = (-1.0, 3.0)  # stain concentrations outside this range land in the end bins
TAPER = 1 / 8  # share of each side of the tile tapered by the window, per end


def tukey(n: int, taper: float = TAPER) -> np.ndarray:
    """(n,) symmetric Tukey window: a raised-cosine ramp over ``taper * n`` samples per end."""
    t = max(1, round(taper * n))
    w = np.ones(n)
    ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(t) + 0.5) / t))
    w[:t], w[n - t :] = ramp, ramp[::-1]
    return w


def _dtft(kernel: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """|K(fy, fx)|^2 of a centred square kernel at frequencies (cycles/px) ``fy`` x ``fx``."""
    c = kernel.shape[0] // 2
    taps = np.arange(-c, c + 1)
    ey = np.exp(-2j * np.pi * np.outer(fy, taps))  # (ny, k)
    ex = np.exp(-2j * np.pi * np.outer(fx, taps))  # (nx, k)
    return np.abs(ey @ kernel @ ex.T) ** 2  # (ny, nx)


def _box2(f: np.ndarray, d: int) -> np.ndarray:
    """Squared frequency response of a d-sample box average."""
    if d == 1:
        return np.ones_like(f)
    num, den = np.sin(np.pi * d * f), d * np.sin(np.pi * f)
    out = np.ones_like(f)
    nz = np.abs(den) > 1e-12
    out[nz] = (num[nz] / den[nz]) ** 2
    return out


def spectral_weights(kernels: np.ndarray, n: int, scales: int) -> torch.Tensor:
    """(n * (n // 2 + 1), 6 * scales) float64 weights: per scale, the gradient (Sobel x + y),
    Laplacian and 4 Gabor energies of a windowed n x n image from its ``rfft2`` power spectrum.

    ``kernels``: (7, k, k) Sobel x, Sobel y, Laplacian, Gabor x 4 (as v1's). The 1 / (n^2 *
    sum(window^2)) of Parseval and the half plane's multiplicity are folded in.
    """
    fy = np.fft.fftfreq(n)  # (n,)
    fx = np.fft.rfftfreq(n)  # (n // 2 + 1,)
    mult = np.full(fx.shape, 2.0)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    win = tukey(n)
    norm = n * n * (np.outer(win, win) ** 2).sum()
    cols = []
    for k in range(scales):
        d = 2**k
        box = np.outer(_box2(fy, d), _box2(fx, d))
        resp = [_dtft(kern, d * fy, d * fx) for kern in kernels]  # dilated by d
        for r in [resp[0] + resp[1], resp[2], *resp[3:]]:
            cols.append((box * r * mult[None, :] / norm).ravel())
    return torch.from_numpy(np.stack(cols, axis=1))  # float64


def pool2(x: torch.Tensor) -> torch.Tensor:
    """Sum of 2x2 pixels over the last two dims: (..., h, w) -> (..., h / 2, w / 2)."""
    a = x[..., 0::2, :] + x[..., 1::2, :]
    return a[..., 0::2] + a[..., 1::2]


def hist_quantiles(v: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """(R, n) -> (R, len(qs)) quantiles of each row from a histogram (see module docstring)."""
    R, n = v.shape
    lo, hi = HIST_RANGE
    width = (hi - lo) / HIST_BINS
    idx = ((v - lo) / width).floor_().clamp_(0, HIST_BINS - 1).long()  # (R, n)
    counts = torch.zeros(R, HIST_BINS, dtype=v.dtype, device=v.device)
    counts.scatter_add_(1, idx, torch.ones_like(v))
    cum = counts.cumsum(1)  # (R, bins)
    target = torch.tensor(qs, dtype=v.dtype, device=v.device) * (n - 1) + 0.5  # (Q,)
    target = target.expand(R, -1).contiguous()  # (R, Q): ranks at the middle of a sample
    b = torch.searchsorted(cum, target, right=True).clamp_(max=HIST_BINS - 1)  # (R, Q)
    below = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), torch.zeros_like(target))
    inside = counts.gather(1, b).clamp(min=1.0)
    frac = ((target - below) / inside).clamp_(0.0, 1.0)
    q = lo + (b.to(v.dtype) + frac) * width
    lo_v, hi_v = torch.aminmax(v, dim=1)
    return torch.minimum(torch.maximum(q, lo_v[:, None]), hi_v[:, None])  # inside the values


def binomial_smooth(x: torch.Tensor) -> torch.Tensor:
    """(N, h, w) -> (N, h, w) * 256: separable [1 4 6 4 1] (= [1 1] four times), reflect
    padding; the caller divides by 256."""
    p = F.pad(x[:, None], (2, 2, 2, 2), mode="reflect")[:, 0]  # (N, h + 4, w + 4)
    for _ in range(4):
        p = p[..., :-1] + p[..., 1:]
    for _ in range(4):
        p = p[:, :-1] + p[:, 1:]
    return p


def count_maxima(x: torch.Tensor, level: float) -> torch.Tensor:
    """(N, h, w) -> (N,): pixels that are the maximum of their 3x3 neighbourhood and > level."""
    p = F.pad(x[:, None], (1, 1, 1, 1), value=-math.inf)[:, 0]  # (N, h + 2, w + 2)
    a = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    m = torch.maximum(torch.maximum(a[:, :-2], a[:, 1:-1]), a[:, 2:])  # (N, h, w)
    return ((m <= x) & (x > level)).sum(dim=(1, 2)).to(x.dtype)


def forward_v2(
    images: torch.Tensor,
    deconv: torch.Tensor,
    weights: torch.Tensor,
    window: torch.Tensor,
    *,
    scales: int,
    grid: bool,
    quantiles: tuple[float, ...],
    tissue_od: float,
    nuclei_h: tuple[float, float],
    eosin_e: float,
    energy_floor: float,
) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, D), D and order as ``stain.feature_names``.

    ``deconv``: (3 rgb, 3 stains) inverse of the unit OD vectors; ``weights``: from
    :func:`spectral_weights` for side H / 2;
    ``window``: (H / 2,) Tukey window.
    """
    B, H, W, _ = images.shape
    h2, w2 = H // 2, W // 2
    n_px = float(h2 * w2)
    # 2x2 intensity sums (0..1020) without a float copy of the full tile.
    rows = images.view(B, h2, 2, W * 3)
    s = rows[:, :, 0].to(torch.int16) + rows[:, :, 1]  # (B, h2, W * 3)
    s = s.view(B, h2, w2, 2, 3)
    s = s[:, :, :, 0] + s[:, :, :, 1]  # (B, h2, w2, 3)
    # Stain planes first: log10 of the sums, then OD = log10(1020) - log10(s), conc = OD @ M^-1.
    lg = torch.empty(3, B, h2, w2, dtype=torch.float32, device=images.device)
    lg.copy_(s.permute(3, 0, 1, 2))
    rgb_mean = lg.view(3, B, -1).sum(-1).T / (1020.0 * n_px)  # (B, 3); integer sums < 2^24
    lg.clamp_(min=4.0).log10_()  # (3 rgb, B, h2, w2)
    top = math.log10(1020.0)
    m = deconv.tolist()  # m[rgb][stain]
    conc = torch.empty_like(lg)  # (3 stains, B, h2, w2); a 3-term sum beats a K=3 matmul
    for k in range(3):
        torch.mul(lg[0], -m[0][k], out=conc[k])
        conc[k].add_(lg[1], alpha=-m[1][k]).add_(lg[2], alpha=-m[2][k])
        conc[k].add_(top * (m[0][k] + m[1][k] + m[2][k]))
    h, e = conc[0], conc[1]  # (B, h2, w2)
    feats: list[torch.Tensor] = []

    # Stain statistics; quantiles over 4x4-pixel means as v1.
    flat = conc.view(3, B, -1)  # (3, B, n)
    mean = flat.mean(-1)  # (3, B)
    rows_ = flat.reshape(3 * B, 1, -1)
    sq = torch.bmm(rows_, rows_.transpose(1, 2)).view(3, B) / n_px  # mean of squares
    sd = (sq - mean.square()).clamp_(min=0.0).sqrt_()  # (3, B)
    quarter = pool2(conc) * 0.25  # (3, B, h2 / 2, w2 / 2)
    qs = hist_quantiles(quarter.reshape(3 * B, -1), quantiles).view(3, B, -1)  # (3, B, Q)
    stats = torch.cat([mean[..., None], sd[..., None], qs], dim=-1)  # (3, B, 2 + Q)
    feats.append(stats.permute(1, 0, 2).reshape(B, -1))

    # Tissue: the largest channel OD above tissue_od, i.e. the smallest log10 sum below.
    tissue = torch.minimum(torch.minimum(lg[0], lg[1]), lg[2]) < top - tissue_od  # (B, h2, w2)
    tissue_f = tissue.to(torch.float32)
    n_tissue = tissue_f.sum(dim=(1, 2))
    he = torch.stack([h, e], dim=1).view(B, 2, -1)  # (B, 2, n)
    he_tissue = torch.bmm(he, tissue_f.view(B, -1, 1))[..., 0]  # (B, 2)
    cov = torch.bmm(he[:, :1], he[:, 1:].transpose(1, 2)).view(B) / n_px - mean[0] * mean[1]
    corr = cov / (sd[0] * sd[1]).clamp(min=1e-8)
    od_mean = top - lg.view(3, B, -1).mean(dim=(0, 2))  # (B,)
    feats.append(
        torch.cat(
            [
                he_tissue / n_tissue.clamp(min=1.0)[:, None],
                torch.stack([corr, od_mean, 1.0 - n_tissue / n_px], dim=-1),
            ],
            dim=-1,
        )
    )  # (B, 5)
    feats.append(rgb_mean)  # (B, 3)

    # Nuclei and eosin fractions, nuclei counts at 2x2 and 4x4 pixels.
    dominant_h = h > e
    nuclei = [(h > t) & dominant_h for t in nuclei_h]  # (B, h2, w2) bool
    eosin = (e > eosin_e) & ~dominant_h
    fracs = [m.sum(dim=(1, 2)).to(torch.float32) / n_px for m in (*nuclei, eosin)]
    feats.append(torch.stack(fracs, dim=-1))
    per_kpx = 1000.0 / (H * W)
    counts = [
        count_maxima(binomial_smooth(v), 256.0 * nuclei_h[0]) * per_kpx for v in (h, quarter[0])
    ]
    feats.append(torch.stack(counts, dim=-1))  # (B, 2)

    # Texture energies of H and E from one windowed power spectrum each.
    win2 = window[:, None] * window[None, :]  # (h2, w2)
    xw = conc[:2].reshape(2 * B, h2, w2) * win2  # (2B, h2, w2)
    centre = xw.sum(dim=(1, 2), keepdim=True) / win2.sum()
    xw.addcmul_(centre, win2, value=-1.0)  # the window-weighted mean removed
    spec = torch.fft.rfft2(xw)  # (2B, h2, w2 // 2 + 1)
    power = (spec.real.square() + spec.imag.square()).reshape(2 * B, -1).double()
    # float64 sums: a tile's energies do not depend on the rows beside it in the product.
    en = (power @ weights).float()
    en = en.view(2, B, scales, 6)  # (2, B, S, 6)
    gab = en[..., 2:]  # (2, B, S, 4)
    gab_mean = gab.mean(-1)
    tex = torch.stack(
        [
            torch.log10(en[..., 0] + energy_floor),
            torch.log10(en[..., 1] + energy_floor),
            torch.log10(gab_mean + energy_floor),
            gab.std(-1) / (gab_mean + energy_floor),
        ],
        dim=-1,
    )  # (2 stains, B, S, 4)
    feats.append(tex.permute(1, 2, 0, 3).reshape(B, -1))  # per scale: h x 4, e x 4

    if grid:  # sorted 2x2-quadrant means
        for plane in (h, e, nuclei[0]):
            half_rows = plane.view(B, 2, h2 // 2, w2).sum(dim=2, dtype=torch.float32)
            q = half_rows.view(B, 2, 2, w2 // 2).sum(-1).flatten(1)  # (B, 4)
            feats.append(torch.sort(q * (4.0 / n_px), dim=-1).values)
    return torch.cat(feats, dim=-1)
