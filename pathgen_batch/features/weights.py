"""Local weights files for tile encoders: read a state dict safely, check it against a model.

Two formats are read, both without unpickling: safetensors (``.safetensors``, read with the
``safetensors`` package) and PyTorch state dicts (``.bin``, ``.pth``, ``.pt``, read with
``torch.load(weights_only=True)``). A file that is truncated, that only a full unpickler could
read, or that does not hold a flat mapping of names to tensors is a one-line ConfigError naming
the file. :func:`check_state_dict` names every missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from pathgen_batch.errors import ConfigError

SAFETENSORS_SUFFIX = ".safetensors"
_LIST = 5  # keys named per problem in an error


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _read_safetensors(p: Path) -> Mapping[str, object]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:
        raise ConfigError(
            f"{p}: reading safetensors needs the 'safetensors' package "
            "(pip install 'pathgen-batch[encoders]')"
        ) from e
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{p}: not a readable safetensors file ({_first_line(e)})") from e


def _read_torch(p: Path) -> object:
    try:
        return torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"{p}: refused, the file holds Python objects beyond tensors and would need a full "
            "unpickler (only plain state dicts are loaded; re-save it with "
            "torch.save(model.state_dict(), ...) or as safetensors)"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise ConfigError(
            f"{p}: not a readable torch state dict, truncated or corrupt? ({_first_line(e)})"
        ) from e


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` state dict from a local safetensors or torch file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file not found: {p}")
    obj = _read_safetensors(p) if p.suffix == SAFETENSORS_SUFFIX else _read_torch(p)
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        keys = sorted(map(str, obj))[:_LIST] if isinstance(obj, Mapping) else []
        raise ConfigError(
            f"{p}: expected a state dict (a mapping of parameter names to tensors), "
            f"got {type(obj).__name__}" + (f" with keys {keys}" if keys else "")
        )
    return dict(obj)


def check_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    what: str,
    ignored_prefixes: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """The entries of ``state`` that ``model`` takes (``ignored_prefixes`` dropped); raise a
    one-line ConfigError naming the keys missing, unexpected or of the wrong shape.

    ``what`` names the architecture expected, e.g. ``"a uni (timm vit_large_patch16_224)"``.
    """
    skip = tuple(ignored_prefixes)
    expected = model.state_dict()
    given = {k: v for k, v in state.items() if not (skip and k.startswith(skip))}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {missing[:_LIST]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {unexpected[:_LIST]}")
    wrong = [
        f"{k}: expected shape {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in sorted(given.items())
        if k in expected and v.shape != expected[k].shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:_LIST]))
    if problems:
        raise ConfigError(f"{source}: not {what} state dict: " + "; ".join(problems))
    return given
