"""The ``resnet50-trunc`` encoder: ResNet-50 cut after layer3, global average pooled (1024-d).

This is the tile encoder CLAM and MCAT use: an ImageNet ResNet-50 (He et al., CVPR 2016, the
v1.5 variant with the stride on the 3x3 convolution) truncated after its third stage, whose
1024-channel map is averaged over space. The module layout and parameter names follow
torchvision's ``resnet50`` so that its state dicts load as they are; ``layer4.*`` and ``fc.*``
entries of a full ResNet-50 state dict are ignored.

Weights come ONLY from a local file given by the user (see :mod:`.weights`: safetensors or
``torch.load(..., weights_only=True)``);
nothing is ever downloaded. The contract's version is the sha256 of that file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pathgen_batch.errors import ConfigError
from pathgen_batch.features import encoder as base
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.encoder import Encoder, file_sha256, normalise, place_module
from pathgen_batch.features.weights import check_state_dict, load_state_dict_file

NAME = "resnet50-trunc"
DIM = 1024
IGNORED_PREFIXES = ("layer4.", "fc.")  # present in a full ResNet-50 state dict, unused here


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus the shortcut."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 4 * planes, H / stride, W / stride)."""
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + idt)


def _stage(in_ch: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_ch, planes, stride)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50Trunc(nn.Module):
    """Stem + layer1..layer3 of ResNet-50 + global average pool: (B, 3, H, W) -> (B, 1024)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 3, 1)
        self.layer2 = _stage(256, 128, 4, 2)
        self.layer3 = _stage(512, 256, 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> (B, 1024)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)
        return x.mean(dim=(2, 3))  # (B, 1024)


@dataclass(frozen=True)
class ResNetTruncConfig:
    """weights: path of a local state dict; tile_px, mpp: the tiling the encoder expects."""

    weights: str
    tile_px: int = 256
    mpp: float = 0.5

    def __post_init__(self) -> None:
        if self.tile_px < 32:
            raise ConfigError(f"resnet50-trunc: tile_px must be >= 32, got {self.tile_px}")
        if not self.mpp > 0:
            raise ConfigError(f"resnet50-trunc: mpp must be positive, got {self.mpp}")


class ResNetTruncEncoder(Encoder):
    """ImageNet-normalised tiles through :class:`ResNet50Trunc`; 1024-d features."""

    def __init__(self, cfg: ResNetTruncConfig, device: str | torch.device = "cpu") -> None:
        version = file_sha256(cfg.weights, what="resnet50-trunc weights file")
        state = load_state_dict_file(cfg.weights)
        model = ResNet50Trunc()
        kept = check_state_dict(
            model, state, cfg.weights, "a torchvision-style ResNet-50", IGNORED_PREFIXES
        )
        model.load_state_dict(kept, strict=True)
        self.cfg = cfg
        self.model = model.eval()
        contract = FeatureContract(NAME, version, DIM, cfg.tile_px, cfg.mpp)
        super().__init__(contract, device)
        self._moved()

    def _moved(self) -> None:
        place_module(self.model, self.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> (B, 1024)."""
        x = normalise(images, base.IMAGENET_MEAN, base.IMAGENET_STD)  # (B, 3, H, W)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)  # (B, 1024)
