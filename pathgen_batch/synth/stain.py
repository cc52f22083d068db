"""Stain colour in haematoxylin-eosin-DAB (HED) space.

Colour deconvolution (Ruifrok and Johnston, Anal. Quant. Cytol. Histol. 2001): optical density
``OD = -ln((I + 1) / 256)`` per RGB channel is a linear mix of stain concentrations,
``OD = HED @ RGB_FROM_HED``. A slide-level stain change scales and shifts each stain's
concentration, ``HED' = HED * alpha + beta``, which is one affine map in OD space:
``OD' = OD @ M + c`` with ``M = HED_FROM_RGB @ diag(alpha) @ RGB_FROM_HED`` and
``c = beta @ RGB_FROM_HED``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathgen_batch.errors import DataError

# Rows: optical-density colour of haematoxylin, eosin, DAB (unit vectors).
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

# OD of each 8-bit intensity: OD_LUT[v] = -ln((v + 1) / 256)
OD_LUT = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (..., 3) float32 optical density."""
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise DataError(f"optical_density: expected (..., 3) uint8, got {rgb.shape} {rgb.dtype}")
    return OD_LUT[rgb]


@dataclass(frozen=True)
class StainShift:
    """Per-stain scale ``alpha`` and shift ``beta`` of the concentrations (H, E, D)."""

    alpha: tuple[float, float, float] = (1.0, 1.0, 1.0)
    beta: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def random(cls, rng: np.random.Generator, scale_sd: float, shift_sd: float) -> StainShift:
        """Scales ~ 1 + N(0, scale_sd) (clipped to [0.5, 1.5]); shifts ~ N(0, shift_sd)."""
        a = np.clip(1.0 + rng.normal(0.0, scale_sd, 3), 0.5, 1.5)
        b = rng.normal(0.0, shift_sd, 3)
        return cls(
            alpha=(float(a[0]), float(a[1]), float(a[2])),
            beta=(float(b[0]), float(b[1]), float(b[2])),
        )

    def od_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(M (3, 3), c (3,)) with ``OD' = OD @ M + c``."""
        m = HED_FROM_RGB @ np.diag(self.alpha) @ RGB_FROM_HED
        c = np.asarray(self.beta) @ RGB_FROM_HED
        return m.astype(np.float32), c.astype(np.float32)

    def apply(self, rgb: np.ndarray, rows_per_chunk: int = 256) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8 with the stain change applied, in row chunks."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise DataError(
                f"StainShift.apply: expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}"
            )
        m, c = self.od_affine()
        out = np.empty_like(rgb)
        for y0 in range(0, rgb.shape[0], rows_per_chunk):
            od = OD_LUT[rgb[y0 : y0 + rows_per_chunk]]  # (h, W, 3)
            od = od @ m + c
            np.negative(od, out=od)
            np.exp(od, out=od)
            od *= 256.0
            od -= 1.0
            np.clip(od, 0.0, 255.0, out=od)
            out[y0 : y0 + rows_per_chunk] = (od + 0.5).astype(np.uint8)
        return out
