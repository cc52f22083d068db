"""Morphology classes of real H&E texture.

Square patches are cut from real H&E images (the Aperio skin region and the breast-tumour image
of ``pathgen_batch.assets.he_texture_sources``) wherever they are mostly tissue and free of
marking ink. Each patch is described by colour and texture: mean optical density per RGB
channel, mean and spread of haematoxylin, share of nuclear and of empty pixels, plus its source
image (one-hot). K-means groups the patches into K morphology classes, ordered from stroma-like
to tumour-like (by the share of patches from the tumour image, the last source, then by
haematoxylin). The renderer paints each region of a synthetic slide with patches of one class.

All images are brought to the cohort's pixel size (0.5 um/px) before patches are cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.synth.stain import HED_FROM_RGB, optical_density

# Optical density (sum over RGB) above which a pixel counts as tissue.
TISSUE_OD = 0.3
# Haematoxylin concentration above which a pixel counts as nuclear.
NUCLEAR_H = 0.45
# Pixels whose red OD exceeds their green OD by this margin are marking ink, not H&E.
INK_MARGIN = 0.2
FEATURES = ("od_r", "od_g", "od_b", "h_mean", "h_sd", "nuclear", "empty", "ink")
# Features used for clustering (the ink share only excludes patches).
CLUSTER_FEATURES = slice(0, 7)
# Patches with more marking ink than this share of pixels are not used.
MAX_INK = 0.002
# Side of the texture patches painted onto slides (also the smallest slide that can be painted).
PATCH_PX = 128
# Weight of the source image (one-hot) next to the standardised colour/texture features.
SOURCE_WEIGHT = 3.0


@dataclass(frozen=True)
class TextureSource:
    """A real H&E image and the factor that brings it to the cohort's pixel size."""

    path: Path
    scale: float = 1.0


def default_sources(svs: Path, png: Path) -> tuple[TextureSource, TextureSource]:
    """The Aperio region is scanned at 0.499 um/px; the tumour PNG at about 0.25 um/px."""
    return TextureSource(svs, 1.0), TextureSource(png, 0.5)


def read_source(src: TextureSource) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a texture source at the cohort's pixel size."""
    p = Path(src.path)
    try:
        if p.suffix.lower() in (".svs", ".tif", ".tiff"):
            rgb = tifffile.imread(p, key=0)
        else:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot read texture source ({e})") from e
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise DataError(f"{p}: expected an RGB image, got shape {rgb.shape}")
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    if src.scale != 1.0:
        h, w = rgb.shape[:2]
        size = (max(1, round(w * src.scale)), max(1, round(h * src.scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return rgb


def _box_mean(a: np.ndarray, size: int, stride: int) -> np.ndarray:
    """(H, W) -> (ny, nx) mean over size x size windows at the given stride (integral image)."""
    ii = np.zeros((a.shape[0] + 1, a.shape[1] + 1), dtype=np.float64)
    ii[1:, 1:] = a.cumsum(0).cumsum(1)
    ys = np.arange(0, a.shape[0] - size + 1, stride)
    xs = np.arange(0, a.shape[1] - size + 1, stride)
    s = (
        ii[np.ix_(ys + size, xs + size)]
        - ii[np.ix_(ys, xs + size)]
        - ii[np.ix_(ys + size, xs)]
        + ii[np.ix_(ys, xs)]
    )
    return s / float(size * size)


def patch_features(
    rgb: np.ndarray, size: int, stride: int, subsample: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every size x size window of one image at the given stride.

    Window means are taken over every ``subsample``-th pixel and row (size and stride must be
    multiples of it). Returns (corners (P, 2) int64 top-left y, x; features (P, 8) float64 in
    ``FEATURES`` order).
    """
    if size % subsample or stride % subsample:
        raise ConfigError(
            f"patch_features: size {size} and stride {stride} must be multiples of {subsample}"
        )
    size, stride = size // subsample, stride // subsample
    rgb = rgb[::subsample, ::subsample]
    od = optical_density(rgb).astype(np.float64)  # (H, W, 3)
    hed = od @ HED_FROM_RGB  # (H, W, 3)
    h = hed[..., 0]
    tissue = od.sum(-1) > TISSUE_OD
    ink = tissue & (od[..., 0] > od[..., 1] + INK_MARGIN)
    maps = [
        od[..., 0],
        od[..., 1],
        od[..., 2],
        h,
        h * h,
        (h > NUCLEAR_H).astype(np.float64),
        1.0 - tissue,
        ink.astype(np.float64),
    ]
    m = [_box_mean(a, size, stride) for a in maps]
    h_sd = np.sqrt(np.maximum(m[4] - m[3] * m[3], 0.0))
    ny, nx = m[0].shape
    step = stride * subsample
    yy, xx = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    corners = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.int64)
    feats = np.stack([m[0], m[1], m[2], m[3], h_sd, m[5], m[6], m[7]], -1).reshape(-1, 8)
    return corners, feats


@dataclass
class TextureLibrary:
    """Real H&E images and, per morphology class, the patches that belong to it.

    ``images``: list of (H, W, 3) uint8; ``patches[k]``: (P_k, 3) int64 rows (image, y, x) of
    the top-left corners of class-k patches of side ``patch_px``; ``centroids``: (K, 8) class
    means of ``FEATURES`` (unstandardised). Classes run from stroma-like to tumour-like.
    """

    images: list[np.ndarray]
    patch_px: int
    patches: list[np.ndarray]
    centroids: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.patches)

    def patch(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """A random class-k patch (patch_px, patch_px, 3) uint8, randomly flipped/rotated."""
        rows = self.patches[k]
        i, y, x = rows[int(rng.integers(len(rows)))]
        p = self.images[i][y : y + self.patch_px, x : x + self.patch_px]
        t = int(rng.integers(8))
        if t & 4:
            p = p.transpose(1, 0, 2)
        if t & 2:
            p = p[::-1]
        if t & 1:
            p = p[:, ::-1]
        return p

    def describe(self) -> list[dict[str, float | int]]:
        """Per class: number of candidate patches and the mean features."""
        out: list[dict[str, float | int]] = []
        for k in range(self.n_classes):
            row: dict[str, float | int] = {"class": k + 1, "patches": len(self.patches[k])}
            row.update(
                {f: round(float(v), 4) for f, v in zip(FEATURES, self.centroids[k], strict=True)}
            )
            out.append(row)
        return out


def build_library(
    sources: Sequence[TextureSource],
    n_classes: int,
    patch_px: int = PATCH_PX,
    stride: int = 16,
    min_tissue: float = 0.7,
    seed: int = 0,
) -> TextureLibrary:
    """Cut patches from the sources, keep those with >= min_tissue tissue, cluster into classes."""
    if n_classes < 1:
        raise ConfigError(f"texture library: n_classes must be >= 1, got {n_classes}")
    images = [read_source(s) for s in sources]
    rows, feats = [], []
    for i, img in enumerate(images):
        if min(img.shape[:2]) < patch_px:
            raise DataError(
                f"{sources[i].path}: image {img.shape[:2]} smaller than a {patch_px} px patch"
            )
        c, f = patch_features(img, patch_px, stride)
        keep = (f[:, 6] <= 1.0 - min_tissue) & (f[:, 7] <= MAX_INK)
        rows.append(np.column_stack([np.full(keep.sum(), i), c[keep]]))
        feats.append(f[keep])
    r = np.concatenate(rows).astype(np.int64)
    f = np.concatenate(feats)
    if len(r) < n_classes * 4:
        raise DataError(
            f"texture library: only {len(r)} tissue patches of {patch_px} px, "
            f"need at least {n_classes * 4} for {n_classes} classes"
        )
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = f[:, CLUSTER_FEATURES]
    z = (x - x.mean(0)) / (x.std(0) + 1e-9)  # (P, 7)
    onehot = np.eye(len(images))[r[:, 0]] * SOURCE_WEIGHT  # (P, n_sources)
    with threadpool_limits(1):  # a few thousand points: threads only add contention
        km = KMeans(n_clusters=n_classes, n_init=10, random_state=seed)
        km.fit(np.hstack([z, onehot]))
    labels = km.labels_
    cents = np.stack([f[labels == k].mean(0) for k in range(n_classes)])
    last_share = np.array([(r[labels == k, 0] == len(images) - 1).mean() for k in range(n_classes)])
    order = np.lexsort((cents[:, 3], np.round(last_share, 1)))
    return TextureLibrary(
        images=images,
        patch_px=patch_px,
        patches=[r[labels == k] for k in order],
        centroids=cents[order],
    )
