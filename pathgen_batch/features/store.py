"""Per-slide feature files: one Parquet file per slide, one row per tile.

Columns: ``slide_id`` (string), ``x``, ``y`` (int64, level-0 px of the tile's top-left corner),
``tile_px`` (int32), ``mpp`` (float64), ``size_l0`` (int32, tile side in level-0 px),
``tissue`` (float32, tissue fraction) and ``feature`` (fixed-size list<float32>[D]). The schema
metadata holds the feature contract (key ``pathgen.feature_contract``, canonical JSON) and the
extraction settings (key ``pathgen.extraction``). The folder is a local path or an S3 prefix:
files are read and written whole through :mod:`pathgen_batch.storage`, so a file that exists is
complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pathgen_batch import storage
from pathgen_batch.errors import DataError
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.storage import check_slide_id

CONTRACT_KEY = b"pathgen.feature_contract"
EXTRACTION_KEY = b"pathgen.extraction"
SUFFIX = ".parquet"


@dataclass(frozen=True)
class SlideFeatures:
    """The tile features of one slide, in tile-grid order.

    x, y: (N,) int64 level-0 px; feats: (N, D) float32; tissue: (N,) float32;
    size_l0: tile side in level-0 px; extraction: settings and timings of the extraction.
    """

    slide_id: str
    contract: FeatureContract
    x: np.ndarray
    y: np.ndarray
    feats: np.ndarray
    tissue: np.ndarray
    size_l0: int
    extraction: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_slide_id(self.slide_id)
        n = self.x.shape[0] if self.x.ndim == 1 else -1
        d = self.contract.dim
        problems = []
        if self.x.ndim != 1 or self.y.shape != self.x.shape:
            problems.append(f"x, y must both be (N,), got {self.x.shape} and {self.y.shape}")
        if self.feats.shape != (n, d):
            problems.append(f"feats must be (N={n}, D={d}), got {self.feats.shape}")
        if self.tissue.shape != (n,):
            problems.append(f"tissue must be (N={n},), got {self.tissue.shape}")
        if self.feats.dtype != np.float32:
            problems.append(f"feats must be float32, got {self.feats.dtype}")
        if problems:
            raise DataError(f"slide {self.slide_id}: " + "; ".join(problems))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def coords(self) -> np.ndarray:
        """(N, 2) int64 level-0 (x, y) of each tile."""
        return np.stack([self.x, self.y], axis=1).astype(np.int64)


def feature_uri(features_dir: str | Path, slide_id: str) -> str:
    """Location of a slide's feature file inside ``features_dir`` (a folder or an S3 prefix)."""
    return storage.join(features_dir, f"{check_slide_id(slide_id)}{SUFFIX}")


def feature_file(features_dir: str | Path, slide_id: str) -> Path:
    """Local path of a slide's feature file inside the local folder ``features_dir``."""
    return storage.local_path(feature_uri(features_dir, slide_id))


def to_table(sf: SlideFeatures) -> pa.Table:
    """The Parquet table of a slide's features, contract and extraction in the metadata."""
    n, d = len(sf), sf.contract.dim
    flat = pa.array(np.ascontiguousarray(sf.feats, dtype=np.float32).reshape(-1), pa.float32())
    columns = {
        "slide_id": pa.array([sf.slide_id] * n, pa.string()),
        "x": pa.array(sf.x.astype(np.int64), pa.int64()),
        "y": pa.array(sf.y.astype(np.int64), pa.int64()),
        "tile_px": pa.array(np.full(n, sf.contract.tile_px, np.int32), pa.int32()),
        "mpp": pa.array(np.full(n, sf.contract.mpp, np.float64), pa.float64()),
        "size_l0": pa.array(np.full(n, sf.size_l0, np.int32), pa.int32()),
        "tissue": pa.array(sf.tissue.astype(np.float32), pa.float32()),
        "feature": pa.FixedSizeListArray.from_arrays(flat, d),
    }
    meta = {
        CONTRACT_KEY: sf.contract.to_json().encode(),
        EXTRACTION_KEY: json.dumps(dict(sf.extraction), sort_keys=True, default=str).encode(),
    }
    return pa.table(columns).replace_schema_metadata(meta)


def write_slide_features(sf: SlideFeatures, features_dir: str | Path) -> str:
    """Write ``sf`` to ``<features_dir>/<slide_id>.parquet`` whole; return its location."""
    out = feature_uri(features_dir, sf.slide_id)
    sink = pa.BufferOutputStream()
    pq.write_table(to_table(sf), sink)
    storage.write_bytes(out, sink.getvalue().to_pybytes())
    return out


def _metadata(schema: pa.Schema, where: str) -> dict[bytes, bytes]:
    meta = dict(schema.metadata or {})
    if CONTRACT_KEY not in meta:
        raise DataError(f"{where}: not a feature file (no {CONTRACT_KEY.decode()} in its metadata)")
    return meta


def _stored_metadata(uri: str) -> dict[bytes, bytes]:
    """The schema metadata of a feature file (reads only its footer)."""
    if not storage.exists(uri):
        raise DataError(f"{uri}: feature file not found")
    fs, path = storage.arrow_filesystem(uri)
    try:
        schema = pq.read_schema(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: not a readable Parquet file ({e})") from e
    return _metadata(schema, uri)


def _contract(meta: dict[bytes, bytes], where: str) -> FeatureContract:
    return FeatureContract.from_json(meta[CONTRACT_KEY].decode(), source=where)


def _extraction(meta: dict[bytes, bytes], where: str) -> dict[str, Any]:
    raw = meta.get(EXTRACTION_KEY, b"{}")
    try:
        out = json.loads(raw.decode())
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: extraction metadata is not valid JSON ({e})") from e
    if not isinstance(out, dict):
        raise DataError(f"{where}: extraction metadata is not a mapping")
    return out


def read_contract(path: str | Path) -> FeatureContract:
    """The feature contract of a feature file (reads only the schema)."""
    return _contract(_stored_metadata(str(path)), str(path))


def read_extraction(path: str | Path) -> dict[str, Any]:
    """The extraction settings recorded in a feature file (reads only the schema)."""
    return _extraction(_stored_metadata(str(path)), str(path))


def _feature_matrix(col: pa.ChunkedArray, d: int, path: str) -> np.ndarray:
    """fixed_size_list<float32>[d] column -> (N, d) float32."""
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != d:
        raise DataError(
            f"{path}: column 'feature' must be fixed_size_list<float>[{d}] (the contract's dim), "
            f"got {col.type}"
        )
    if col.null_count:
        raise DataError(f"{path}: column 'feature' has {col.null_count} null row(s)")
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(-1, d), dtype=np.float32)


def read_slide_features(path: str | Path, contract: FeatureContract | None = None) -> SlideFeatures:
    """Read one feature file; with ``contract``, a different stored contract is a DataError."""
    p = str(path)
    try:
        data = storage.read_bytes(p)
    except storage.StorageError as e:
        raise DataError(f"{p}: feature file not found ({e})") from e
    try:
        t = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({e})") from e
    meta = _metadata(t.schema, p)
    stored = _contract(meta, p)
    if contract is not None:
        contract.check_matches(stored, what=f"requested encoder vs features in {p}")
    extraction = _extraction(meta, p)
    need = ("slide_id", "x", "y", "size_l0", "tissue", "feature")
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise DataError(f"{p}: feature file lacks column(s) {missing}")
    ids = t.column("slide_id").unique().to_pylist()
    if len(ids) > 1:
        raise DataError(f"{p}: feature file holds more than one slide_id ({ids[:3]})")
    slide_id = ids[0] if ids else extraction.get("slide_id", storage.basename(p)[: -len(SUFFIX)])
    sizes = np.unique(t.column("size_l0").to_numpy())
    return SlideFeatures(
        slide_id=str(slide_id),
        contract=stored,
        x=t.column("x").to_numpy().astype(np.int64),
        y=t.column("y").to_numpy().astype(np.int64),
        feats=_feature_matrix(t.column("feature"), stored.dim, p),
        tissue=t.column("tissue").to_numpy().astype(np.float32),
        size_l0=int(sizes[0]) if sizes.size else int(extraction.get("size_l0", 0)),
        extraction=extraction,
    )


def stored_slide_ids(features_dir: str | Path) -> tuple[str, ...]:
    """Slide ids with a complete feature file directly in ``features_dir``, sorted."""
    names = [
        storage.basename(uri)
        for uri, _ in storage.list_files(features_dir)
        if uri == storage.join(features_dir, storage.basename(uri))
    ]
    return tuple(sorted(n[: -len(SUFFIX)] for n in names if n.endswith(SUFFIX)))


def load_bags(
    features_dir: str | Path,
    slide_ids: Iterable[str],
    contract: FeatureContract | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """slide_id -> (coords (N, 2) int64, feats (N, D) float32) for each requested slide.

    Every file must exist and carry the same contract (``contract`` when given, else the first
    file's); a missing slide or a different contract is a DataError naming the slide and the
    field that differs.
    """
    ids = list(slide_ids)
    if not ids:
        raise DataError(f"{features_dir}: no slides requested")
    absent = [s for s in ids if not storage.exists(feature_uri(features_dir, s))]
    if absent:
        raise DataError(
            f"{features_dir}: {len(absent)} of {len(ids)} slide(s) have no features, e.g. "
            f"{absent[:5]}; run `pathgen-batch features extract` first"
        )
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    expected, first = contract, "the requested contract"
    for s in ids:
        sf = read_slide_features(feature_uri(features_dir, s))
        if expected is None:
            expected, first = sf.contract, f"slide {s}"
        expected.check_matches(sf.contract, what=f"features of {first} vs slide {s}")
        out[s] = (sf.coords, sf.feats)
    return out
