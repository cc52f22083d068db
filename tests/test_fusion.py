"""Fusion model, baselines and discrete-time survival against hand-computed cases."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from pathgen_batch.config import from_dict, to_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models import (
    AttentionMIL,
    AttentionMILConfig,
    FusionConfig,
    FusionModel,
    OmicsMLP,
    OmicsMLPConfig,
    build_model,
    config_class,
    model_name_of,
    model_names,
)
from pathgen_batch.models.survival import (
    fit_bin_edges,
    hazards_from_logits,
    risk_from_hazards,
    survival_curve,
    survival_nll,
    to_bins,
)

D, FAMS = 8, (2, 3, 1)
G = sum(FAMS)
FCFG = FusionConfig(feature_dim=D, family_sizes=FAMS, n_grades=3, width=16, heads=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and lose much on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch(B: int = 3, N: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    omics = torch.randn(B, G, generator=g)  # (B, G)
    feats = torch.randn(B, N, D, generator=g)  # (B, N, D)
    mask = torch.ones(B, N, dtype=torch.bool)  # (B, N)
    mask[0, 4:] = False
    mask[2, 1:] = False
    return omics, feats, mask


def fusion(seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(FCFG).eval()


# ------------------------------------------------------------------------------------ fusion


def test_fusion_outputs_and_attention_rows() -> None:
    omics, feats, mask = batch()
    out = fusion()(omics, feats, mask)
    assert out.hazard_logits.shape == (3, 4) and out.grade_logits.shape == (3, 3)
    assert out.attention is not None and out.attention.shape == (3, 3, 6)  # (B, F, N)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 3))
    assert bool((out.attention[~mask[:, None, :].expand(3, 3, 6)] == 0).all())
    assert bool((out.attention[mask[:, None, :].expand(3, 3, 6)] > 0).all())


def test_fusion_ignores_padding_and_tile_order() -> None:
    model = fusion()
    omics, feats, mask = batch()
    ref = model(omics, feats, mask)
    junk = feats.clone()
    junk[~mask] = float("nan")  # padding content must not matter, not even NaN
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    for f, m in ((junk, mask), (feats[:, perm], mask[:, perm])):
        out = model(omics, f, m)
        torch.testing.assert_close(out.hazard_logits, ref.hazard_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.grade_logits, ref.grade_logits, rtol=1e-5, atol=1e-6)
    permuted = model(omics, feats[:, perm], mask[:, perm]).attention
    assert permuted is not None and ref.attention is not None
    torch.testing.assert_close(permuted, ref.attention[:, :, perm], rtol=1e-5, atol=1e-6)


def test_fusion_input_errors() -> None:
    model = fusion()
    omics, feats, mask = batch()
    with pytest.raises(DataError, match="omics: fusion needs this input, got None"):
        model(None, feats, mask)
    with pytest.raises(
        DataError, match=r"omics: expected shape \(B, G\) = \(\?, 6\), got \(3, 5\)"
    ):
        model(omics[:, :5], feats, mask)
    with pytest.raises(DataError, match=r"feats: expected shape \(B, N, D\) = \(3, \?, 8\)"):
        model(omics, feats[:2], mask[:2])
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(DataError, match=r"batch index \[1\] have no real tile"):
        model(omics, feats, empty)


def test_fusion_config_checks() -> None:
    with pytest.raises(ConfigError, match="n_grades"):
        FusionConfig(feature_dim=D, family_sizes=FAMS, n_grades=1)
    with pytest.raises(ConfigError, match=r"gene_families: expected 6 entries"):
        FusionConfig(feature_dim=D, family_sizes=FAMS, n_grades=3, gene_families=(0, 1))


def test_modality_dropout_learns_an_absent_transcriptome_token() -> None:
    import dataclasses

    omics, feats, mask = batch()
    plain = fusion()
    assert not plain.slide_only and "absent" not in plain.state_dict()
    torch.manual_seed(0)
    model = FusionModel(dataclasses.replace(FCFG, modality_dropout=0.5)).eval()
    assert model.slide_only and model.state_dict()["absent"].shape == (3, 16)  # (F, width)
    alone = model(None, feats, mask)  # the slide alone: every example takes the absent token
    assert alone.hazard_logits.shape == (3, 4) and torch.isfinite(alone.grade_logits).all()
    # in evaluation the transcriptome is used as given, and it matters
    full = model(omics, feats, mask)
    assert not torch.allclose(full.hazard_logits, alone.hazard_logits)
    # in training about half the examples' family tokens are the absent token
    model.train()
    torch.manual_seed(1)
    many = 400
    tokens = model._family_tokens(omics[:1].expand(many, -1), many)  # (many, F, d)
    absent = model.state_dict()["absent"]
    dropped = torch.isclose(tokens, absent.expand(many, -1, -1)).all(-1).all(-1)
    assert 0.4 < dropped.float().mean().item() < 0.6
    # with modality_dropout 1 the model never sees a transcriptome, in evaluation too
    torch.manual_seed(0)
    only = FusionModel(dataclasses.replace(FCFG, modality_dropout=1.0)).eval()
    torch.testing.assert_close(
        only(omics, feats, mask).hazard_logits, only(None, feats, mask).hazard_logits
    )
    with pytest.raises(ConfigError, match="modality_dropout"):
        dataclasses.replace(FCFG, modality_dropout=1.5)


def test_a_row_of_nan_takes_the_absent_token_of_a_model_with_modality_dropout() -> None:
    import dataclasses

    omics, feats, mask = batch()
    torch.manual_seed(0)
    model = FusionModel(dataclasses.replace(FCFG, modality_dropout=0.5)).eval()
    some = omics.clone()
    some[1] = float("nan")  # the second patient has no expression
    out = model(some, feats, mask)
    alone, full = model(None, feats, mask), model(omics, feats, mask)
    torch.testing.assert_close(out.hazard_logits[1], alone.hazard_logits[1])
    torch.testing.assert_close(out.grade_logits[[0, 2]], full.grade_logits[[0, 2]])
    model.train()  # in training too: never the NaN row itself
    torch.manual_seed(3)
    tokens = model._family_tokens(some, 3)  # (B, F, d)
    torch.testing.assert_close(tokens[1], model.state_dict()["absent"])
    assert torch.isfinite(tokens).all()
    with pytest.raises(DataError, match="a row of NaN needs a model with modality_dropout > 0"):
        fusion()(some, feats, mask)


# --------------------------------------------------------------------------------- baselines


def test_attention_mil_outputs() -> None:
    torch.manual_seed(0)
    model = AttentionMIL(AttentionMILConfig(feature_dim=D, n_grades=3, width=16)).eval()
    _, feats, mask = batch()
    out = model(None, feats, mask)
    assert out.hazard_logits.shape == (3, 4) and out.grade_logits.shape == (3, 3)
    assert out.attention is not None and out.attention.shape == (3, 1, 6)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 1))
    assert bool((out.attention[:, 0][~mask] == 0).all())
    with pytest.raises(DataError, match="feats: attention_mil needs this input"):
        model(None, None, mask)


def test_omics_mlp_outputs() -> None:
    torch.manual_seed(0)
    model = OmicsMLP(OmicsMLPConfig(n_genes=G, n_grades=4, n_bins=5, width=16)).eval()
    omics, _, _ = batch()
    out = model(omics, None, None)
    assert out.hazard_logits.shape == (3, 5) and out.grade_logits.shape == (3, 4)
    assert out.attention is None
    with pytest.raises(DataError, match=r"omics: expected shape \(B, G\) = \(\?, 6\)"):
        model(omics[:, :2])


@pytest.mark.parametrize("name", ["fusion", "attention_mil"])
@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_models_learn_a_grade_carried_by_the_slide(name: str) -> None:
    """Grade 1 bags hold a majority of real tiles of prototype A, grade 0 bags do not (the
    padding holds tiles too, which must not count); the omics are noise. Training with the
    combined loss of METHOD.md separates them on held-out bags, and the grade whose events
    come early gets the higher risk."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(2, D, generator=g) * 2  # (2, D)

    def data(B: int):
        frac = torch.rand(B, 1, generator=g)  # share of prototype A
        is_a = torch.rand(B, 8, generator=g) < frac  # (B, 8)
        feats = torch.where(is_a[..., None], protos[0], protos[1]) + 0.3 * torch.randn(
            B, 8, D, generator=g
        )
        mask = torch.arange(8)[None, :] < torch.randint(4, 9, (B, 1), generator=g)  # (B, 8)
        share = (is_a & mask).sum(1) / mask.sum(1)  # (B,) among real tiles
        grade = (share > 0.5).long()  # (B,)
        bins = torch.where(grade == 1, 0, 3)  # grade 1 has its event in the first bin
        return torch.randn(B, G, generator=g), feats, mask, grade, bins

    if name == "fusion":
        cfg = from_dict(FusionConfig, {**to_dict(FCFG), "n_grades": 2, "dropout": 0.1})
    else:
        cfg = AttentionMILConfig(feature_dim=D, n_grades=2, width=16, dropout=0.1)
    model = build_model(name, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        omics, feats, mask, grade, bins = data(64)
        out = model(omics, feats, mask)
        loss = 0.7 * torch.nn.functional.cross_entropy(out.grade_logits, grade) + 0.3 * (
            survival_nll(out.hazard_logits, bins, torch.zeros(64))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    omics, feats, mask, grade, _ = data(200)
    with torch.no_grad():
        out = model(omics, feats, mask)
    acc = (out.grade_logits.argmax(-1) == grade).float().mean().item()
    assert acc > 0.9, acc
    torch.testing.assert_close(out.risk, risk_from_hazards(hazards_from_logits(out.hazard_logits)))
    assert out.risk[grade == 1].mean() > out.risk[grade == 0].mean()


# ---------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "cfg"),
    [
        ("fusion", FCFG),
        ("attention_mil", AttentionMILConfig(feature_dim=D, n_grades=3, width=16)),
        ("omics_mlp", OmicsMLPConfig(n_genes=G, n_grades=3, width=16)),
    ],
)
def test_registry_round_trip(name: str, cfg) -> None:
    torch.manual_seed(0)
    model = build_model(name, cfg).eval()
    assert model_name_of(model) == name and config_class(name) is type(cfg)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    rebuilt = build_model(name, json.loads(json.dumps(to_dict(cfg))))
    rebuilt.load_state_dict(torch.load(buf, weights_only=True))
    rebuilt.eval()
    omics, feats, mask = batch()
    a, b = model(omics, feats, mask), rebuilt(omics, feats, mask)
    torch.testing.assert_close(a.hazard_logits, b.hazard_logits)
    torch.testing.assert_close(a.grade_logits, b.grade_logits)


def test_registry_errors() -> None:
    assert set(model_names()) == {"generator", "fusion", "attention_mil", "omics_mlp"}
    with pytest.raises(ConfigError, match=r"model: expected one of .* got 'mcat'"):
        build_model("mcat", {})
    with pytest.raises(ConfigError, match=r"fusion config\.n_grades: expected an integer"):
        build_model("fusion", {"feature_dim": 4, "family_sizes": [2], "n_grades": "3"})
    with pytest.raises(ConfigError, match="expected a mapping or FusionConfig"):
        build_model("fusion", OmicsMLPConfig(n_genes=3, n_grades=2))


# ---------------------------------------------------------------------------------- survival

# hazards h = [0.5, 0.25, 0.2] -> S = [0.5, 0.375, 0.3]
H = [0.5, 0.25, 0.2]
LOGITS = torch.tensor([[math.log(h / (1 - h)) for h in H]], dtype=torch.float64)


def test_survival_curve_and_risk_by_hand() -> None:
    h = hazards_from_logits(LOGITS)
    torch.testing.assert_close(h, torch.tensor([H], dtype=torch.float64))
    torch.testing.assert_close(survival_curve(h), torch.tensor([[0.5, 0.375, 0.3]]).double())
    assert risk_from_hazards(h).item() == pytest.approx(-(0.5 + 0.375 + 0.3))


def test_higher_hazards_mean_higher_risk() -> None:
    low = torch.tensor([[0.1, 0.1, 0.1, 0.1]])
    high = torch.tensor([[0.1, 0.3, 0.1, 0.2]])  # higher or equal in every bin
    assert risk_from_hazards(high).item() > risk_from_hazards(low).item()
    early = torch.tensor([[0.6, 0.1, 0.1, 0.1]])  # same total hazard, concentrated early
    late = torch.tensor([[0.1, 0.1, 0.1, 0.6]])
    assert risk_from_hazards(early).item() > risk_from_hazards(late).item()


def test_survival_nll_hand_computed_cases() -> None:
    logits = LOGITS.expand(5, 3)
    bins = torch.tensor([0, 1, 1, 2, 2])
    censored = torch.tensor([0, 0, 1, 1, 0])
    a = -(math.log(1.0) + math.log(0.5))  # event in bin 0: S_{-1} = 1, h_0 = 0.5
    b = -(math.log(0.5) + math.log(0.25))  # event in bin 1: S_0 = 0.5, h_1 = 0.25
    c = -math.log(0.375)  # censored in bin 1: survived to the end of bin 1, S_1
    d = -math.log(0.3)  # censored in bin 2: S_2
    e = -(math.log(0.375) + math.log(0.2))  # event in bin 2: S_1, h_2
    got = survival_nll(logits, bins, censored)
    assert got.item() == pytest.approx((a + b + c + d + e) / 5, rel=1e-9)
    # single cases, one at a time
    for i, want in enumerate([a, b, c, d, e]):
        one = survival_nll(LOGITS, bins[i : i + 1], censored[i : i + 1])
        assert one.item() == pytest.approx(want, rel=1e-9)
    # MCAT weighting: uncensored terms keep weight 1, censored terms get 1 - alpha
    got = survival_nll(logits, bins, censored.bool(), alpha=0.4)
    assert got.item() == pytest.approx((a + b + e + 0.6 * (c + d)) / 5, rel=1e-9)


def test_survival_nll_clamps_and_checks() -> None:
    certain = torch.tensor([[-100.0, -100.0]])  # hazards ~ 0: log h would be -inf
    loss = survival_nll(certain, torch.tensor([1]), torch.tensor([0]), eps=1e-7)
    assert loss.item() == pytest.approx(-math.log(1e-7), rel=1e-4)
    with pytest.raises(DataError, match=r"bins: expected values in \[0, 3\), got \[0, 3\]"):
        survival_nll(LOGITS.expand(2, 3), torch.tensor([0, 3]), torch.tensor([0, 0]))
    with pytest.raises(DataError, match="censored: expected 0/1"):
        survival_nll(LOGITS, torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(DataError, match=r"censored: expected shape \(B,\)"):
        survival_nll(LOGITS, torch.tensor([0]), torch.tensor([0, 1]))


def test_bin_edges_from_event_time_quantiles() -> None:
    times = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 0.5], dtype=float)
    events = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])  # the censored times are ignored
    edges = fit_bin_edges(times, events, n_bins=4)
    # quartiles of 1..9 with linear interpolation: positions 2, 4, 6 -> 3, 5, 7
    np.testing.assert_array_equal(edges, [0.0, 3.0, 5.0, 7.0, np.inf])
    bins = to_bins(np.array([0.0, 3.0, 3.5, 7.0, 8.0, 1000.0]), edges)
    assert bins.dtype == np.int64
    assert bins.tolist() == [0, 0, 1, 2, 3, 3]  # bins are (e_k, e_k+1], bin 0 includes 0


def test_bin_edges_errors() -> None:
    with pytest.raises(DataError, match="need at least 4 events, got 2"):
        fit_bin_edges(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), 4)
    with pytest.raises(DataError, match="not distinct"):
        fit_bin_edges(np.array([5.0] * 6), np.ones(6), 3)
    with pytest.raises(DataError, match="times"):
        to_bins(np.array([-1.0]), np.array([0.0, 1.0, np.inf]))
