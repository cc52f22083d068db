"""The encoder interface: uint8 RGB tiles in, one float32 vector per tile out.

An encoder owns its :class:`~pathgen_batch.features.contract.FeatureContract` (name, version,
dim, tile size, resolution) and a ``torch.device``. ``encode`` checks its input, moves it to the
device, runs the subclass's ``forward`` under ``torch.inference_mode()`` and returns a NumPy
array on the CPU. Subclasses implement only ``forward`` on a uint8 tensor already on the device.

On CUDA the tiles go through a pinned (page-locked) host buffer, reused from batch to batch and
grown when a larger batch comes, and are copied to the device without blocking the host; the
copy of the features back waits for the device, so the buffer is free again when ``encode``
returns.

Batch size from memory (:meth:`Encoder.auto_batch_size`): on CUDA one probe batch measures the
device memory a tile costs (peak allocated over the batch), and the batch is the largest power
of two whose tiles fit in a share of the memory free at that moment; on the CPU it is
:data:`CPU_BATCH` (memory is not the limit there, and features do not depend on batch size).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from pathgen_batch import storage
from pathgen_batch.errors import ConfigError
from pathgen_batch.features.contract import FeatureContract

CPU_BATCH = 64  # tiles per forward pass on the CPU
MAX_BATCH = 1024  # the most tiles one forward pass takes on a GPU
PROBE_BATCH = 8  # tiles of the probe batch that measures a tile's device memory
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Asking for CUDA on a machine without it is a ConfigError (never a silent CPU fallback).
    """
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(
                f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
            ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {str(dev)!r} was asked for but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {str(dev)!r} was asked for but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"device: expected 'auto', 'cpu' or 'cuda[:N]', got {str(dev)!r}")
    return dev


def file_sha256(path: str | Path, what: str = "weights file") -> str:
    """``sha256:<hex>`` of a file's bytes; a missing file is a ConfigError naming the path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    return "sha256:" + storage.sha256(p)


def batch_for_memory(
    free_bytes: float, per_tile_bytes: float, share: float = 0.5, max_batch: int = MAX_BATCH
) -> int:
    """The largest power of two ``b <= max_batch`` with ``b * per_tile_bytes`` within ``share``
    of ``free_bytes``; at least 1 (a tile that does not fit fails loudly on its own)."""
    if not 0 < share <= 1:
        raise ConfigError(f"batch_for_memory: share must be in (0, 1], got {share}")
    fits = int(share * max(free_bytes, 0.0) // max(per_tile_bytes, 1.0))
    b = 1
    while b * 2 <= min(fits, max_batch):
        b *= 2
    return b


def place_module(module: torch.nn.Module, device: torch.device) -> None:
    """Move ``module`` to ``device``; channels-last memory on CUDA (faster convolutions)."""
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    module.to(device=device)
    module.to(memory_format=fmt)  # type: ignore[call-overload]


def normalise(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W): ``(x / 255 - mean) / std`` per channel."""
    x = images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # (B, 3, H, W)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class Encoder(ABC):
    """Base class of all tile encoders. See the module docstring."""

    def __init__(self, contract: FeatureContract, device: str | torch.device = "cpu") -> None:
        self._contract = contract
        self._device = resolve_device(device)
        self._pinned: torch.Tensor | None = None  # uint8 host buffer for CUDA copies

    @property
    def contract(self) -> FeatureContract:
        return self._contract

    @property
    def name(self) -> str:
        return self._contract.encoder

    @property
    def dim(self) -> int:
        return self._contract.dim

    @property
    def tile_px(self) -> int:
        return self._contract.tile_px

    @property
    def mpp(self) -> float:
        return self._contract.mpp

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> Encoder:
        """Move the encoder to ``device`` (resolved like :func:`resolve_device`); returns self."""
        self._device = resolve_device(device)
        self._moved()
        return self

    def _moved(self) -> None:  # noqa: B027 - optional hook, no-op unless a subclass owns tensors
        """Hook for subclasses holding modules or tensors: move them to ``self.device``."""

    def check_images(self, images: object) -> np.ndarray:
        """Validate a batch of tiles: uint8 numpy (B, tile_px, tile_px, 3)."""
        if not isinstance(images, np.ndarray):
            raise ConfigError(
                f"{self.name} encoder: images must be a numpy array, got {type(images).__name__}"
            )
        want = (self.tile_px, self.tile_px, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ConfigError(
                f"{self.name} encoder: images must have shape (B, {want[0]}, {want[1]}, 3), "
                f"got {tuple(images.shape)}"
            )
        if images.dtype != np.uint8:
            raise ConfigError(f"{self.name} encoder: images must be uint8, got {images.dtype}")
        return images

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, tile_px, tile_px, 3) RGB tiles -> float32 (B, dim) features on the CPU."""
        images = self.check_images(images)
        if images.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            t = self._to_device(np.ascontiguousarray(images))  # (B, H, W, 3) uint8
            out = self.forward(t)  # (B, dim)
            self._check_output(out, images.shape[0])
            return out.to(device="cpu", dtype=torch.float32).numpy()

    def auto_batch_size(self, share: float = 0.5) -> int:
        """Tiles per forward pass for this encoder on its device (see the module docstring);
        ``share``: the part of the device's free memory the batch may use."""
        if self.device.type != "cuda":
            return CPU_BATCH
        probe = np.zeros((PROBE_BATCH, self.tile_px, self.tile_px, 3), dtype=np.uint8)
        self.encode(probe[:1])  # warm-up: lazy workspaces and kernels are not per-tile costs
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self.encode(probe)
        per_tile = (torch.cuda.max_memory_allocated(self.device) - base) / PROBE_BATCH
        free, _ = torch.cuda.mem_get_info(self.device)
        return batch_for_memory(free, per_tile, share)

    def _to_device(self, images: np.ndarray) -> torch.Tensor:
        """Host tiles -> device tensor; through the pinned buffer on CUDA (non-blocking)."""
        host = torch.from_numpy(images)
        if self.device.type != "cuda":
            return host
        n = host.numel()
        if self._pinned is None or self._pinned.numel() < n:
            self._pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        buf = self._pinned[:n].view(host.shape)
        buf.copy_(host)
        return buf.to(self.device, non_blocking=True)

    def _check_output(self, out: torch.Tensor, batch: int) -> None:
        if tuple(out.shape) != (batch, self.dim):
            raise ConfigError(
                f"{self.name} encoder: declared dim {self.dim}, so a batch of {batch} tiles "
                f"should give shape ({batch}, {self.dim}), but the model returned "
                f"{tuple(out.shape)}"
            )

    @abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) on ``self.device`` -> float (B, dim) on ``self.device``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.contract.describe()}, device={self.device})"
