"""Local weights files for tile encoders: read a state dict safely, check it against a model.

Two formats are read, both without unpickling: safetensors (``.safetensors``, read with the
``safetensors`` package) and PyTorch state dicts (``.bin``, ``.pth``, ``.pt``, read with
``torch.load(weights_only=True)``). A file that is truncated, that only a full unpickler could
read, or that does not hold a flat mapping of names to tensors is a one-line ConfigError naming
the file. :func:`check_state_dict` names every missing, unexpected or mis-shaped key.

A weights file may also live in object storage (``s3://bucket/key``): :func:`fetch_weights`
downloads it once per machine into a cache folder, under a hashed name, size-checked, so that
every node of a cluster reads the same bytes without a shared file system.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from pathgen_batch import storage
from pathgen_batch.errors import ConfigError

SAFETENSORS_SUFFIX = ".safetensors"
_LIST = 5  # keys named per problem in an error
# suffixes a cached copy keeps (the reader is chosen by suffix); anything else becomes .bin
_WEIGHTS_SUFFIXES = frozenset({SAFETENSORS_SUFFIX, ".bin", ".pth", ".pt"})
CACHE_ENV = "PATHGEN_WEIGHTS_CACHE"


def weights_cache() -> Path:
    """The folder remote weights are cached in: ``$PATHGEN_WEIGHTS_CACHE``, else
    ``<temp>/pathgen-weights`` (node-local; one copy per machine)."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "pathgen-weights")


def fetch_weights(uri: str, cache_dir: str | Path | None = None) -> str:
    """A local file holding the weights at ``uri``. A local path is returned as given (a
    ConfigError when it is not a file here); an ``s3://`` object is downloaded into
    ``cache_dir`` (default :func:`weights_cache`) once, under a hash of its URI plus its
    suffix, and reused while its size matches the object's. Concurrent fetches on one machine
    each download to a private name and rename into place, so none reads a partial file."""
    if not storage.is_s3(uri):
        p = storage.local_path(uri).expanduser()
        if not p.is_file():
            raise ConfigError(
                f"weights file not found: {p} (on a cluster every node reads it at this path; "
                "put it on a shared file system or in object storage, s3://..., or register it "
                "with pathgen-batch models register-encoder)"
            )
        return str(p)
    cache = Path(cache_dir) if cache_dir is not None else weights_cache()
    name = storage.scratch_name(uri, _WEIGHTS_SUFFIXES)
    if name.endswith(".slide"):
        name = name[: -len(".slide")] + ".bin"
    dest = cache / name
    size = storage.store_for(uri).size(uri)
    if dest.is_file() and dest.stat().st_size == size:
        return str(dest)
    private = cache / f"partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with storage.stage_file(uri, private, size) as staged:
            os.replace(staged.path, dest)
    finally:
        if private.is_dir():
            for leftover in private.iterdir():
                leftover.unlink(missing_ok=True)
            private.rmdir()
    return str(dest)


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
