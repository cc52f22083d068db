"""Grade-linked tumour morphology (cohort version 2).

Pathologists grade a tumour from the glass: larger, more variable and darker nuclei, more of
them per area, mitoses, and loss of tubules (glandular lumens). Cohort v2 draws these into the
texture of the tumour-like morphology class of every slide, with a per-slide ``level`` =
configured strength x the patient's morphology score (see :func:`morphology_scores`), so the
slide carries grade information that expression does not fully explain. Level 0 leaves a patch
untouched (cohort v1).

Every change acts in haematoxylin-eosin-DAB concentration space on one real texture patch
(``apply_morphology``), with a random generator of its own so that the v1 draws of the slide
are unchanged:

- tubule loss: empty pixels inside the patch (lumens) are filled towards the patch's median
  tissue stain, by ``min(level, 1)``;
- nuclear size: the haematoxylin channel is blended with its grey dilation by a disk of radius
  2 px, by ``min(level, 1)``;
- pleomorphism: the haematoxylin channel is warped by a smooth random displacement field of
  ``2.5 x level`` px (random knots every 8 px, bilinear in between);
- density: nuclei of a randomly shifted copy of the patch are added at ``0.8 x level`` of their
  stain;
- hyperchromasia: nuclear haematoxylin is scaled by ``1 + 0.3 x level``;
- mitoses: ``Poisson(3 x level)`` small dark figures per patch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage as ndi

from pathgen_batch.errors import ConfigError
from pathgen_batch.synth.stain import HED_FROM_RGB, RGB_FROM_HED, optical_density
from pathgen_batch.synth.texture import NUCLEAR_H, TISSUE_OD

BILINEAR = Image.Resampling.BILINEAR
_DISK2 = np.hypot(*np.mgrid[-2:3, -2:3]) <= 2.0  # (5, 5) footprint of the nuclear dilation


def morphology_scores(grade_index: pd.Series, noise_sd: float, seed: int) -> np.ndarray:
    """(N,) per-patient morphology score in [0, 1]: grade / 2 plus N(0, noise_sd) noise.

    Patients of unknown grade take the cohort's mean grade (no information). The noise is
    what neither grade nor expression explains.
    """
    g = pd.to_numeric(grade_index, errors="coerce").to_numpy(dtype=np.float64)  # (N,)
    known = np.isfinite(g)
    fill = float(np.mean(g[known])) if known.any() else 1.0
    g = np.where(known, g, fill)
    rng = np.random.default_rng([seed, 23])
    return np.clip(g / 2.0 + rng.normal(0.0, noise_sd, g.size), 0.0, 1.0)


def _to_rgb(hed: np.ndarray) -> np.ndarray:
    od = hed @ RGB_FROM_HED  # (P, P, 3)
    rgb = 256.0 * np.exp(-od) - 1.0
    return np.clip(rgb + 0.5, 0.0, 255.0).astype(np.uint8)


def apply_morphology(patch: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """(P, P, 3) uint8 tumour patch -> (P, P, 3) uint8 with grade morphology of ``level``."""
    if level < 0 or not np.isfinite(level):
        raise ConfigError(f"morphology level: expected a number >= 0, got {level}")
    if level == 0:
        return patch
    p = patch.shape[0]
    od = optical_density(np.ascontiguousarray(patch)).astype(np.float64)  # (P, P, 3)
    hed = od @ HED_FROM_RGB  # (P, P, 3)
    f = min(level, 1.0)
    lumen = od.sum(-1) <= TISSUE_OD  # (P, P)
    if lumen.any() and (~lumen).any():
        tissue = np.median(hed[~lumen], axis=0)  # (3,)
        hed[lumen] = (1.0 - f) * hed[lumen] + f * tissue
    h = hed[..., 0]
    h = (1.0 - f) * h + f * ndi.grey_dilation(h, footprint=_DISK2, mode="reflect")
    amp = 2.5 * level
    if amp > 0:
        coarse = rng.normal(size=(2, p // 8 + 1, p // 8 + 1)).astype(np.float32)  # knots
        d = np.stack(
            [np.asarray(Image.fromarray(c, mode="F").resize((p, p), BILINEAR)) for c in coarse]
        ).astype(np.float64)  # (2, P, P)
        d *= amp / (d.std() + 1e-12)
        yy, xx = np.mgrid[0:p, 0:p].astype(np.float64)
        h = ndi.map_coordinates(h, [yy + d[0], xx + d[1]], order=1, mode="reflect")
    shift = rng.integers(p // 4, 3 * p // 4, 2)
    other = np.roll(h, (int(shift[0]), int(shift[1])), axis=(0, 1))
    h = np.maximum(h, 0.8 * level * np.where(other > NUCLEAR_H, other, 0.0))
    h = np.where(h > NUCLEAR_H, h * (1.0 + 0.3 * level), h)
    n_mit = int(rng.poisson(3.0 * level))
    if n_mit:
        ly, lx = np.mgrid[-3:4, -3:4]
        for cy, cx in rng.integers(3, p - 3, (n_mit, 2)):
            disk = np.hypot(ly, lx) <= rng.uniform(1.5, 3.0)  # (7, 7)
            win = h[cy - 3 : cy + 4, cx - 3 : cx + 4]
            win[disk] = np.maximum(win[disk], 1.2)
    hed[..., 0] = h
    return _to_rgb(hed)
