"""Foundation-model tile encoders built with ``timm`` from local weights files.

A :class:`Recipe` says everything that turns a tile into a vector besides the weights: the timm
architecture and its arguments, the input size the network takes, the normalisation constants
and the output rule (``cls``: the class token after the final norm; ``cls+mean``: the class
token next to the mean of the patch tokens, register tokens left out; ``pooled``: the
architecture's own pooled features). The recipe is recorded in the feature contract, so two
feature sets compare equal only when weights digest, recipe, tile size and MPP all agree.

The named recipes (:data:`FOUNDATION_MODELS`) carry the architecture arguments their authors
publish; ``timm:<architecture>`` builds any other timm architecture, with the normalisation
declared by the user (``-o mean=[...] -o std=[...]``). The network is always constructed with
``pretrained=False`` from an architecture name (never a hub name) and its weights are read from
the local file only (:mod:`.weights`); a state dict with missing, unexpected or mis-shaped keys
is refused with those keys named.

Tiles of ``tile_px`` are resized (bilinear, antialiased) to ``input_px`` when the two differ. On
CUDA the network runs channels-last under bf16 autocast; on the CPU in float32. The network
always sees ``micro_batch`` tiles at a time (the last group padded with blank tiles), so that a
tile's features do not depend on how many tiles were encoded with it: matrix kernels pick their
blocking, and so their rounding, by the batch shape.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from pathgen_batch.errors import ConfigError
from pathgen_batch.features.contract import FeatureContract, canonical_recipe
from pathgen_batch.features.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    file_sha256,
    normalise,
    place_module,
)
from pathgen_batch.features.weights import check_state_dict, load_state_dict_file

PREFIX = "timm:"  # timm:<architecture>
Output = Literal["cls", "cls+mean", "pooled"]
OUTPUTS: tuple[str, ...] = ("cls", "cls+mean", "pooled")
# layer classes named in recipes; resolved when the model is built
_LAYERS = {"SwiGLUPacked": ("timm", "SwiGLUPacked"), "SiLU": ("torch", "SiLU")}
_LAYER_ARGS = ("mlp_layer", "act_layer", "norm_layer")
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclass(frozen=True)
class Recipe:
    """How a timm network maps a tile to a vector (see the module docstring)."""

    architecture: str
    args: dict[str, Any]
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: Output
    summary: str = field(default="", compare=False)

    def to_json(self) -> str:
        return canonical_recipe(
            {
                "architecture": self.architecture,
                "args": self.args,
                "input_px": self.input_px,
                "mean": list(self.mean),
                "std": list(self.std),
                "output": self.output,
            }
        )


def _named(arch: str, args: dict[str, Any], output: Output, summary: str, **kw: Any) -> Recipe:
    mean, std = kw.get("mean", IMAGENET_MEAN), kw.get("std", IMAGENET_STD)
    return Recipe(arch, {"num_classes": 0, **args}, 224, mean, std, output, summary)


_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
FOUNDATION_MODELS: dict[str, Recipe] = {
    "uni": _named(
        "vit_large_patch16_224",
        {"patch_size": 16, "init_values": 1e-5},
        "cls",
        "UNI (MahmoodLab): ViT-L/16, 1024-d class token",
    ),
    "uni2-h": _named(
        "vit_giant_patch14_224",
        {
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "no_embed_class": True,
            "reg_tokens": 8,
            **_SWIGLU,
        },
        "cls",
        "UNI2-h (MahmoodLab): ViT-H/14, SwiGLU, 8 registers, 1536-d class token",
    ),
    "virchow2": _named(
        "vit_huge_patch14_224",
        {"init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "", **_SWIGLU},
        "cls+mean",
        "Virchow2 (Paige): ViT-H/14, SwiGLU, 4 registers, class token + patch mean (2560-d)",
    ),
    **{
        name: _named(
            "vit_giant_patch14_reg4_dinov2",
            {"global_pool": "token", "init_values": 1e-5},
            "cls",
            f"{label} (Bioptimus): ViT-g/14, 4 registers, 1536-d class token",
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
        )
        for name, label in (("h-optimus-0", "H-optimus-0"), ("h-optimus-1", "H-optimus-1"))
    },
    "prov-gigapath": _named(
        "vit_giant_patch14_dinov2",
        {
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "mlp_ratio": 5.33334,
        },
        "cls",
        "Prov-GigaPath tile encoder: ViT-g/16, SwiGLU, 1536-d class token",
    ),
}


def import_timm() -> Any:
    """The ``timm`` module, or a ConfigError saying how to install it."""
    try:
        with warnings.catch_warnings():  # torchvision warns about its optional image codecs
            warnings.simplefilter("ignore")
            import timm
    except ImportError as e:
        raise ConfigError(
            f"timm-built encoders need the 'timm' package ({e}); install the project's "
            "'encoders' extra and timm as the Makefile does (make venv)"
        ) from e
    return timm


def _layer(name: Any, where: str) -> Any:
    if not isinstance(name, str) or name not in _LAYERS:
        raise ConfigError(f"{where}: unknown layer {name!r}; known layers are {sorted(_LAYERS)}")
    home, attr = _LAYERS[name]
    module = import_timm().layers if home == "timm" else nn
    return getattr(module, attr)


def build_network(recipe: Recipe, name: str) -> nn.Module:
    """The recipe's timm network with random weights (``pretrained=False``), in eval mode."""
    timm = import_timm()
    kwargs = dict(recipe.args)
    for key in _LAYER_ARGS:
        if key in kwargs:
            kwargs[key] = _layer(kwargs[key], f"{name}: timm_args.{key}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(recipe.architecture, pretrained=False, **kwargs)
    except RuntimeError as e:  # timm: unknown model
        raise ConfigError(f"{name}: timm cannot build {recipe.architecture!r} ({e})") from e
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"{name}: timm architecture {recipe.architecture!r} refused the arguments "
            f"{sorted(kwargs)} ({type(e).__name__}: {e})"
        ) from e
    if recipe.output != "pooled" and not hasattr(model, "num_prefix_tokens"):
        raise ConfigError(
            f"{name}: output {recipe.output!r} needs a transformer with a class token; "
            f"{recipe.architecture!r} has none (use -o output=pooled)"
        )
    return model.eval()


def feature_dim(model: nn.Module, output: str) -> int:
    width = int(getattr(model, "num_features"))  # noqa: B009 - timm attribute, typed Any
    if output == "pooled":
        return int(getattr(model, "head_hidden_size", width))
    return 2 * width if output == "cls+mean" else width


@dataclass(frozen=True)
class TimmEncoderConfig:
    """weights: local safetensors or torch state dict; tile_px: tile side (default input_px);
    mpp: tiling resolution; input_px: the size tiles are resized to for the network (a named
    model is built for it; for ``timm:<architecture>`` it defaults to ``timm_args.img_size``,
    else 224, and a ViT needs ``timm_args.img_size`` to match); timm_args: architecture
    arguments merged over the recipe's; mean, std, output: override the recipe's (required
    for ``timm:<architecture>``)."""

    weights: str
    tile_px: int | None = None
    mpp: float = 0.5
    input_px: int | None = None
    timm_args: dict[str, Any] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    output: str | None = None
    micro_batch: int | None = None  # default 16 on the CPU, 64 on CUDA

    def __post_init__(self) -> None:
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(f"timm encoder: micro_batch must be >= 1, got {self.micro_batch}")
        for key in ("tile_px", "input_px"):
            v = getattr(self, key)
            if v is not None and v < 8:
                raise ConfigError(f"timm encoder: {key} must be >= 8, got {v}")
        if not self.mpp > 0:
            raise ConfigError(f"timm encoder: mpp must be positive, got {self.mpp}")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise ConfigError(f"timm encoder: std must be positive, got {self.std}")
        if self.output is not None and self.output not in OUTPUTS:
            raise ConfigError(f"timm encoder: output must be one of {OUTPUTS}, got {self.output!r}")


def recipe_for(name: str, cfg: TimmEncoderConfig) -> Recipe:
    """The named recipe with ``cfg``'s overrides, or a ``timm:<architecture>`` one."""
    if name.startswith(PREFIX):
        arch = name[len(PREFIX) :]
        if not arch.strip():
            raise ConfigError(f"encoder {name!r}: expected timm:<architecture>")
        missing = [k for k in ("mean", "std") if getattr(cfg, k) is None]
        if missing:
            raise ConfigError(
                f"encoder {name!r}: declare the normalisation the weights were trained with, "
                "e.g. -o mean=[0.485,0.456,0.406] -o std=[0.229,0.224,0.225] (missing "
                + ", ".join(missing)
                + ")"
            )
        base = Recipe(arch, {"num_classes": 0}, 224, IMAGENET_MEAN, IMAGENET_STD, "pooled")
    elif name in FOUNDATION_MODELS:
        base = FOUNDATION_MODELS[name]
    else:
        raise ConfigError(f"encoder {name!r}: not a timm-built encoder")
    args = {**base.args, **(cfg.timm_args or {}), "num_classes": 0}
    given_px = args.get("img_size") if isinstance(args.get("img_size"), int) else None
    input_px = cfg.input_px or given_px or base.input_px
    if name in FOUNDATION_MODELS:
        args["img_size"] = input_px
    return Recipe(
        architecture=base.architecture,
        args=args,
        input_px=input_px,
        mean=tuple(cfg.mean) if cfg.mean is not None else base.mean,  # type: ignore[arg-type]
        std=tuple(cfg.std) if cfg.std is not None else base.std,  # type: ignore[arg-type]
        output=(cfg.output or base.output),  # type: ignore[arg-type]
        summary=base.summary,
    )


def options_for_recipe(name: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """The options that rebuild a contract's recipe (the inverse of :func:`recipe_for`)."""
    if not recipe:
        raise ConfigError(f"encoder {name!r}: the feature contract records no recipe")
    args = {k: v for k, v in recipe.get("args", {}).items() if k != "num_classes"}
    if name in FOUNDATION_MODELS:
        base = {k: v for k, v in FOUNDATION_MODELS[name].args.items() if k != "num_classes"}
        args = {k: v for k, v in args.items() if k != "img_size" and base.get(k, object()) != v}
    out: dict[str, Any] = {
        "input_px": recipe.get("input_px"),
        "mean": recipe.get("mean"),
        "std": recipe.get("std"),
        "output": recipe.get("output"),
    }
    if args:
        out["timm_args"] = args
    return out


class TimmEncoder(Encoder):
    """A timm network from a local weights file, by recipe (see the module docstring)."""

    def __init__(self, name: str, cfg: TimmEncoderConfig, device: str | torch.device = "cpu"):
        recipe = recipe_for(name, cfg)
        digest = file_sha256(cfg.weights, what=f"{name} weights file")
        state = load_state_dict_file(cfg.weights)
        model = build_network(recipe, name)
        what = f"a {name} (timm {recipe.architecture}, {len(recipe.args)} arguments)"
        kept = check_state_dict(model, state, cfg.weights, what)
        model.load_state_dict(kept, strict=True)
        tile_px = cfg.tile_px or recipe.input_px
        dim = feature_dim(model, recipe.output)
        contract = FeatureContract(name, digest, dim, tile_px, cfg.mpp, recipe.to_json())
        self._init_loaded(recipe, model, contract, cfg.micro_batch, device)

    def _init_loaded(
        self,
        recipe: Recipe,
        model: nn.Module,
        contract: FeatureContract,
        micro_batch: int | None,
        device: str | torch.device,
    ) -> None:
        """Finish construction around a loaded network (shared with transformers builds)."""
        self.recipe = recipe
        self.micro_batch = micro_batch
        self.model: nn.Module = model
        self._prefix = int(getattr(model, "num_prefix_tokens", 0))
        Encoder.__init__(self, contract, device)
        self._moved()

    def _moved(self) -> None:
        place_module(self.model, self.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float32 (B, dim), ``micro_batch`` tiles per network call."""
        m = self.micro_batch or (64 if self.device.type == "cuda" else 16)
        n = images.shape[0]
        pad = -n % m
        if pad:
            blank = images.new_zeros((pad, *images.shape[1:]))
            images = torch.cat([images, blank])
        outs = [self._forward(images[i : i + m]) for i in range(0, n + pad, m)]
        return torch.cat(outs)[:n]

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        r = self.recipe
        x = normalise(images, r.mean, r.std)  # (B, 3, tile_px, tile_px)
        if x.shape[-1] != r.input_px:
            size = (r.input_px, r.input_px)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        cuda = self.device.type == "cuda"
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
            if r.output == "pooled":
                out = self.model(x)  # (B, D)
            else:
                tokens = self.model.forward_features(x)  # type: ignore[operator]  # (B, N, D)
                out = tokens[:, 0]
                if r.output == "cls+mean":
                    out = torch.cat([out, tokens[:, self._prefix :].mean(dim=1)], dim=-1)
        return out.float()
