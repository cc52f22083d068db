"""Strict configs and the gene panel: the contracts every model and output row relies on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from pathgen_batch.config import from_dict, load_json, replace, to_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.omics import GenePanel


@dataclass(frozen=True)
class _Inner:
    width: int = 8
    rate: float = 0.1


@dataclass(frozen=True)
class _Outer:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    inner: _Inner = field(default_factory=_Inner)
    note: str | None = None


def test_config_round_trip_through_json_data():
    cfg = _Outer(name="y", sizes=(3, 4, 5), inner=_Inner(width=16, rate=0.5), note="n")
    data = to_dict(cfg)
    assert data == {
        "name": "y",
        "sizes": [3, 4, 5],
        "inner": {"width": 16, "rate": 0.5},
        "note": "n",
    }
    assert from_dict(_Outer, data) == cfg


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"_Outer.inner: unknown key\(s\) \['widht'\]"):
        from_dict(_Outer, {"inner": {"widht": 3}})


def test_wrong_types_are_errors_naming_the_path():
    with pytest.raises(ConfigError, match=r"_Outer.inner.width: expected an integer"):
        from_dict(_Outer, {"inner": {"width": "8"}})
    with pytest.raises(ConfigError, match=r"_Outer.sizes\[1\]: expected an integer"):
        from_dict(_Outer, {"sizes": [1, 2.5]})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(_Inner, {"width": True})
    # ints are accepted where floats are expected
    assert from_dict(_Inner, {"rate": 1}).rate == 1.0


def test_load_json_errors_name_the_file(tmp_path):
    p = tmp_path / "c.json"
    with pytest.raises(ConfigError, match="config file not found"):
        load_json(_Outer, p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=r"c.json: not valid JSON"):
        load_json(_Outer, p)
    p.write_text('{"name": "z", "oops": 1}')
    with pytest.raises(ConfigError, match="oops"):
        load_json(_Outer, p)


def test_replace_validates_overrides():
    cfg = _Inner()
    assert replace(cfg, width=4).width == 4
    with pytest.raises(ConfigError):
        replace(cfg, width="wide")


def _panel() -> GenePanel:
    return GenePanel.from_pairs(
        [("TP53", "supp"), ("MYC", "onco"), ("BRCA1", "supp"), ("ERBB2", "onco"), ("AKT1", "kin")]
    )


def test_panel_families_in_order_of_appearance_and_indices():
    p = _panel()
    assert p.family_names == ("supp", "onco", "kin")
    assert [ix.tolist() for ix in p.family_indices()] == [[0, 2], [1, 3], [4]]
    assert p.family_sizes == (2, 2, 1)
    # every gene in exactly one family
    allix = np.sort(np.concatenate(p.family_indices()))
    assert allix.tolist() == list(range(p.n_genes))


def test_panel_round_trip_and_digest(tmp_path):
    p = _panel()
    q = GenePanel.read(p.write(tmp_path / "panel.csv"))
    assert q == p and q.digest == p.digest
    assert p.digest.startswith("sha256:") and len(p.digest) == 7 + 64
    reordered = GenePanel.from_pairs(
        [(g, f) for g, f in reversed(list(zip(p.genes, p.families, strict=True)))]
    )
    assert reordered.digest != p.digest
    with pytest.raises(DataError, match="different order"):
        p.check_matches(reordered)
    other = GenePanel.from_pairs([("TP53", "supp"), ("MYC", "onco")])
    with pytest.raises(DataError, match=r"only in first: \['AKT1', 'BRCA1', 'ERBB2'\]"):
        p.check_matches(other)


def test_panel_bad_input(tmp_path):
    with pytest.raises(DataError, match="duplicate gene"):
        GenePanel.from_pairs([("A", "f"), ("A", "g")])
    with pytest.raises(DataError, match="empty"):
        GenePanel.from_pairs([])
    f = tmp_path / "p.csv"
    f.write_text("name,group\nA,f\n")
    with pytest.raises(DataError, match=r"p.csv: gene panel must start with the header"):
        GenePanel.read(f)
    f.write_text("gene,family\nA\n")
    with pytest.raises(DataError, match="line 2"):
        GenePanel.read(f)
    with pytest.raises(DataError, match="not found"):
        GenePanel.read(tmp_path / "missing.csv")
