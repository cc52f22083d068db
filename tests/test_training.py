"""Training: data assembly and its checks, scalers, fit loops, determinism, bundles, CLI.

A small cohort is built with ``pathgen_batch.synth`` (synthetic mode) and embedded with the
stain-texture encoder once per session; models are tiny and train for a few epochs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from tiny_training import FUS, GEN, build_training_cohort, threads

from pathgen_batch.cohort import load_cohort
from pathgen_batch.cohort.splits import inner_split
from pathgen_batch.config import to_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.evaluation import mean_per_gene_pearson
from pathgen_batch.features import SlideFeatures, feature_file
from pathgen_batch.features.contract import FeatureContract
from pathgen_batch.features.store import write_slide_features
from pathgen_batch.inference import TrainedFusion, TrainedGenerator, ZScoreScaler
from pathgen_batch.inference.bundle import load_bundle, read_manifest, save_fusion, save_generator
from pathgen_batch.models.diffusion import SamplerConfig
from pathgen_batch.models.fusion import FusionOutput
from pathgen_batch.training.config import FusionTrainConfig, GeneratorArch, GeneratorTrainConfig
from pathgen_batch.training.data import TrainingData, assemble, load_training_data
from pathgen_batch.training.predictor_loop import prediction_loss
from pathgen_batch.training.trainers import calibrate_fusion, train_generator, train_predictor


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and lose much on a shared CPU."""
    with threads(1):
        yield


@pytest.fixture(scope="session")
def cohort_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    with threads(1):
        return build_training_cohort(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def data(cohort_dirs: tuple[Path, Path]) -> TrainingData:
    return load_training_data(*cohort_dirs)


@pytest.fixture(scope="session")
def split(data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    rest = np.flatnonzero(data.folds != 0)
    tr, va = inner_split([data.strata()[i] for i in rest], 0.25, 0)
    return rest[tr], rest[va]


@pytest.fixture(scope="session")
def generator(data: TrainingData, split) -> TrainedGenerator:
    with threads(1):
        return train_generator(data, *split, GEN)


@pytest.fixture(scope="session")
def fusion(data: TrainingData, split) -> TrainedFusion:
    with threads(1):
        return train_predictor(data, *split, FUS)


def bags_of(data: TrainingData, idx) -> list[np.ndarray]:
    return [data.bags[i] for i in idx]


# -- data ---------------------------------------------------------------------------------------
def test_training_data_follows_the_cohort(cohort_dirs, data: TrainingData) -> None:
    cohort = load_cohort(cohort_dirs[0])
    assert data.n_patients == 48 and data.patient_ids == tuple(cohort.clinical["patient_id"])
    np.testing.assert_array_equal(data.expression, cohort.expression.to_numpy())
    np.testing.assert_array_equal(data.folds, cohort.clinical["fold"].to_numpy())
    np.testing.assert_array_equal(data.event, cohort.clinical["event"].to_numpy())
    assert data.grade_classes == cohort.grade_classes
    assert data.panel.digest == cohort.panel.digest
    named = [data.grade_classes[g] for g in data.grade]
    assert named == cohort.clinical["grade"].tolist()
    assert all(b.dtype == np.float32 and b.shape[1] == 70 and b.shape[0] >= 1 for b in data.bags)
    assert all(c.shape == (b.shape[0], 2) for b, c in zip(data.bags, data.coords, strict=True))
    assert data.contract.dim == 70 and data.contract.encoder == "stain-texture"


def _tables(cohort_dirs, data: TrainingData):
    cohort = load_cohort(cohort_dirs[0])
    bags = {s: (c, b) for s, c, b in zip(data.slide_ids, data.coords, data.bags, strict=True)}
    clinical = cohort.clinical.assign(slide_id=cohort.slide_ids)  # one slide per patient
    return clinical, cohort.expression.copy(), cohort.panel, bags


def test_assembled_data_marks_unknown_grades(cohort_dirs, data: TrainingData) -> None:
    clinical, expression, panel, bags = _tables(cohort_dirs, data)
    clinical["grade_index"] = clinical["grade_index"].astype("Int64")
    clinical.loc[[1, 4], "grade_index"] = pd.NA
    d = assemble(clinical, expression, panel, bags, data.contract, data.grade_classes)
    assert d.grade[1] == -1 and d.grade[4] == -1 and (np.delete(d.grade, [1, 4]) >= 0).all()
    assert d.digest != data.digest


def test_expression_columns_must_match_the_panel(cohort_dirs, data: TrainingData) -> None:
    clinical, expression, panel, bags = _tables(cohort_dirs, data)
    swapped = expression[[expression.columns[1], expression.columns[0], *expression.columns[2:]]]
    with pytest.raises(DataError, match="expression columns do not match the gene panel"):
        assemble(clinical, swapped, panel, bags, data.contract, data.grade_classes)
    renamed = expression.rename(columns={expression.columns[3]: "NOT_A_GENE"})
    with pytest.raises(DataError, match="NOT_A_GENE"):
        assemble(clinical, renamed, panel, bags, data.contract, data.grade_classes)


def test_nan_expression_names_patient_and_gene(cohort_dirs, data: TrainingData) -> None:
    clinical, expression, panel, bags = _tables(cohort_dirs, data)
    expression.iloc[5, 7] = np.nan
    pid, gene = expression.index[5], expression.columns[7]
    with pytest.raises(DataError, match=f"patient {pid} gene {gene}"):
        assemble(clinical, expression, panel, bags, data.contract, data.grade_classes)


def test_bag_dimension_must_match_the_contract(cohort_dirs, data: TrainingData) -> None:
    clinical, expression, panel, bags = _tables(cohort_dirs, data)
    sid = data.slide_ids[2]
    bags[sid] = (bags[sid][0], bags[sid][1][:, :64].copy())
    with pytest.raises(DataError, match=f"slide {sid}: features have dimension 64, expected 70"):
        assemble(clinical, expression, panel, bags, data.contract, data.grade_classes)


def _copy_features(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_zero_tile_bag_names_the_slide(cohort_dirs, data: TrainingData, tmp_path: Path) -> None:
    feats = _copy_features(cohort_dirs[1], tmp_path / "f")
    sid = data.slide_ids[3]
    empty = np.zeros(0, np.int64)
    sf = SlideFeatures(
        sid,
        data.contract,
        empty,
        empty,
        np.zeros((0, 70), np.float32),
        np.zeros(0, np.float32),
        512,
    )
    write_slide_features(sf, feats)
    with pytest.raises(DataError, match=f"slide {sid}: feature bag has zero tiles"):
        load_training_data(cohort_dirs[0], feats)


def test_feature_dimension_differing_between_slides(
    cohort_dirs, data: TrainingData, tmp_path: Path
) -> None:
    feats = _copy_features(cohort_dirs[1], tmp_path / "f")
    sid = data.slide_ids[5]
    c = data.contract
    other = FeatureContract(c.encoder, c.version, 64, c.tile_px, c.mpp)
    n = data.bags[5].shape[0]
    xy = data.coords[5]
    sf = SlideFeatures(
        sid, other, xy[:, 0], xy[:, 1], np.ones((n, 64), np.float32), np.ones(n, np.float32), 512
    )
    write_slide_features(sf, feats)
    with pytest.raises(DataError, match=f"slide {sid}.*dim 70 vs 64"):
        load_training_data(cohort_dirs[0], feats)


def test_slide_without_features_is_named(cohort_dirs, data: TrainingData, tmp_path: Path) -> None:
    feats = _copy_features(cohort_dirs[1], tmp_path / "f")
    sid = data.slide_ids[7]
    feature_file(feats, sid).unlink()
    with pytest.raises(DataError, match=f"1 of 48 slide\\(s\\) have no features.*{sid}"):
        load_training_data(cohort_dirs[0], feats)


# -- scalers, bins and losses -------------------------------------------------------------------
def test_feature_scaler_closed_form() -> None:
    bags = [np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), np.array([[5.0, 6.0]], np.float32)]
    s = ZScoreScaler.fit_bags(bags)
    assert s.mean == (3.0, 4.0) and s.std == (2.0, 2.0)  # ddof 1 over the 3 tiles
    np.testing.assert_allclose(s.transform(np.array([[3.0, 4.0], [5.0, 8.0]])), [[0, 0], [1, 2]])
    assert ZScoreScaler.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    const = ZScoreScaler.fit_bags([np.array([[1.0, 7.0], [2.0, 7.0]])])
    assert const.std[1] == 1.0
    with pytest.raises(DataError, match=r"shape \(N, 2\)"):
        s.transform(np.zeros((3, 5)))
    with pytest.raises(DataError, match="expected keys"):
        ZScoreScaler.from_dict({**s.to_dict(), "extra": 1})


def test_expression_scaler_closed_form_and_checks() -> None:
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])  # (patients, genes)
    s = ZScoreScaler.fit(x, "training expression")
    assert s.mean == (3.0, 10.0) and s.std == (2.0, 1.0)  # a constant gene keeps std 1
    z = s.transform(x, "expression")
    np.testing.assert_allclose(z, [[-1, 0], [0, 0], [1, 0]])
    np.testing.assert_allclose(s.inverse_transform(z), x)
    np.testing.assert_allclose(s.inverse_scale(np.array([[1.0, 1.0]])), [[2.0, 1.0]])
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DataError, match=r"expression: 1 missing .* first at row 2, column 1"):
        s.transform(bad, "expression")
    with pytest.raises(DataError, match=r"expression: expected shape \(N, 2\), got \(3, 1\)"):
        s.transform(x[:, :1], "expression")
    with pytest.raises(DataError, match="training expression: need at least 2 rows"):
        ZScoreScaler.fit(x[:1], "training expression")


def test_scalers_are_fit_on_the_training_patients_only(
    data: TrainingData, split, generator: TrainedGenerator, fusion: TrainedFusion
) -> None:
    tr, _ = split
    tiles = np.concatenate([data.bags[i] for i in tr]).astype(np.float64)
    for model in (generator, fusion):
        np.testing.assert_allclose(model.feature_scaler.mean, tiles.mean(0), rtol=1e-10)
        np.testing.assert_allclose(model.feature_scaler.std, tiles.std(0, ddof=1), rtol=1e-10)
        x = data.expression[tr]
        np.testing.assert_allclose(model.expression_scaler.mean, x.mean(0), rtol=1e-10)
        np.testing.assert_allclose(model.expression_scaler.std, x.std(0, ddof=1), rtol=1e-10)
    everyone = np.concatenate(data.bags).astype(np.float64).mean(0)
    assert not np.allclose(generator.feature_scaler.mean, everyone)


def test_bin_edges_are_training_event_quantiles(data: TrainingData, split, fusion) -> None:
    tr, _ = split
    ev = np.sort(data.time[tr][data.event[tr]])
    expected = []
    for q in (1 / 3, 2 / 3):  # numpy's linear rule, by hand: position q * (n - 1)
        pos = q * (ev.size - 1)
        lo = math.floor(pos)
        expected.append(ev[lo] + (pos - lo) * (ev[min(lo + 1, ev.size - 1)] - ev[lo]))
    np.testing.assert_allclose(fusion.bin_edges[1:3], expected, rtol=1e-12)
    assert fusion.bin_edges[0] == 0.0 and math.isinf(fusion.bin_edges[-1])


def test_prediction_loss_hand_computed() -> None:
    # two patients, K = 2 bins, 2 grade classes; hazard logit 0 -> h = 0.5 in every bin
    out = FusionOutput(
        hazard_logits=torch.zeros(2, 2),
        grade_logits=torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]),
        attention=None,
    )
    bins = torch.tensor([1, 0])
    censored = torch.tensor([False, True])
    grade = torch.tensor([0, -1])  # the second grade is unknown: left out of the CE
    # patient 0, event in bin 1: -(log S_0 + log h_1) = -(log .5 + log .5); patient 1 censored
    # in bin 0: -log S_0 = -log .5. NLL = mean = 1.5 log 2. CE of patient 0: -log(3/4).
    nll = 1.5 * math.log(2.0)
    ce = -math.log(0.75)
    got = prediction_loss(out, bins, censored, grade, 0.3, 0.7)
    assert got.item() == pytest.approx(0.3 * nll + 0.7 * ce, rel=1e-6)
    none_known = prediction_loss(out, bins, censored, torch.tensor([-1, -1]), 0.3, 0.7)
    assert none_known.item() == pytest.approx(0.3 * nll, rel=1e-6)


# -- fit loops ----------------------------------------------------------------------------------
def _val_loss_by_hand(
    fus: TrainedFusion, data: TrainingData, va: np.ndarray, slide_only: bool = False
) -> float:
    pred = fus.predict(bags_of(data, va), None if slide_only else data.expression[va])
    h = pred.hazards
    S = np.cumprod(1 - h, axis=1)
    bins = np.searchsorted(fus.bin_edges[1:-1], data.time[va], side="left")
    nll = []
    for i, y in enumerate(bins):
        before = 1.0 if y == 0 else S[i, y - 1]
        if data.event[va][i]:
            nll.append(-(math.log(before) + math.log(h[i, y])))
        else:
            nll.append(-math.log(S[i, y]))
    known = data.grade[va] >= 0
    ce = -np.log(pred.grade_probs[known, data.grade[va][known]]).mean()
    return 0.3 * float(np.mean(nll)) + 0.7 * float(ce)


@pytest.mark.parametrize("select_on", ["survival_nll", "c_index"])
def test_the_kept_epoch_is_chosen_on_the_target(data: TrainingData, split, select_on) -> None:
    tr, va = split
    cfg = to_dict(FUS) | {"epochs": 12, "patience": 3, "lr": 0.05, "select_on": select_on}
    fus = train_predictor(data, tr, va, FusionTrainConfig(**{**cfg, "options": FUS.options}))
    h = fus.provenance["history"]
    assert h["select_on"] == select_on and h["val_score"] == h[f"val_{select_on}"]
    pick = np.nanargmax if select_on == "c_index" else np.nanargmin
    assert h["best_epoch"] == 1 + int(pick(h["val_score"]))
    assert h["best_val_score"] == h["val_score"][h["best_epoch"] - 1]
    assert h["best_val_loss"] == h["val_loss"][h["best_epoch"] - 1]
    assert all(0 <= c <= 1 for c in h["val_c_index"]) and min(h["val_survival_nll"]) > 0
    assert fus.provenance["metrics"]["select_on"] == select_on
    gen = train_generator(data, tr, va, GEN)
    g = gen.provenance["history"]
    assert g["select_on"] == "pearson" and g["best_epoch"] == 1 + int(np.nanargmax(g["val_score"]))
    assert all(-1 <= r <= 1 for r in g["val_pearson"])


def test_loss_weights_are_chosen_on_the_validation_patients(data: TrainingData, split) -> None:
    """With candidate survival shares, every candidate trains on the same patients and the one
    kept is the lowest validation survival NLL + grade CE: the same model as training the
    chosen weights alone, and the grade-only candidate scores its unweighted yardstick too."""
    tr, va = split
    base = to_dict(FUS) | {"epochs": 6, "patience": 3, "options": FUS.options}
    cfg = FusionTrainConfig(**base | {"survival_weights": [0.0, 0.5, 1.0]})
    fus = train_predictor(data, tr, va, cfg)
    sel = fus.provenance["loss_weights"]
    assert sel["candidates"] == [0.0, 0.5, 1.0] and len(sel["val_scores"]) == 3
    i = int(np.argmin(sel["val_scores"]))
    assert sel["chosen"] == sel["candidates"][i]
    h = fus.provenance["history"]
    at = h["best_epoch"] - 1
    assert h["best_epoch"] == sel["best_epochs"][i]
    assert sel["val_scores"][i] == pytest.approx(h["val_survival_nll"][at] + h["val_grade_ce"][at])
    s = sel["chosen"]
    assert fus.train_config["survival_weight"] == s and fus.train_config["grade_weight"] == 1 - s
    alone = train_predictor(
        data, tr, va, FusionTrainConfig(**base | {"survival_weight": s, "grade_weight": 1 - s})
    )
    a, b = fus.model.state_dict(), alone.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "loss_weights" not in alone.provenance
    with pytest.raises(ConfigError, match=r"survival_weights.*\[0.3, 1.5\]"):
        FusionTrainConfig(survival_weights=(0.3, 1.5))


def test_sampler_steps_are_chosen_on_the_validation_patients(data: TrainingData, split) -> None:
    """The candidate step count whose n-sample mean of the validation patients correlates best
    with their expression becomes the generator's sampler (and so its bundle's)."""
    tr, va = split
    gen = train_generator(data, tr, va, dataclasses.replace(GEN, sampler_steps=(2, 5, 10)))
    sel = gen.provenance["sampler_steps"]
    assert sel["candidates"] == [2, 5, 10] and gen.sampler.steps == sel["chosen"]
    assert sel["chosen"] == sel["candidates"][int(np.argmax(sel["val_pearson"]))]
    vbags = [data.bags[i] for i in va]
    for k, r in zip(sel["candidates"], sel["val_pearson"], strict=True):
        pred, _ = gen.generate(vbags, sampler=dataclasses.replace(gen.sampler, steps=k), seed=0)
        assert r == pytest.approx(mean_per_gene_pearson(data.expression[va], pred))
    assert "sampler_steps" not in train_generator(data, tr, va, GEN).provenance


def test_best_epoch_weights_are_restored(data: TrainingData, split) -> None:
    tr, va = split
    cfg = to_dict(FUS) | {"epochs": 20, "patience": 2, "lr": 0.05, "select_on": "loss"}
    fus = train_predictor(data, tr, va, FusionTrainConfig(**{**cfg, "options": FUS.options}))
    h = fus.provenance["history"]
    assert h["best_val_loss"] == min(h["val_loss"])
    assert h["val_loss"][h["best_epoch"] - 1] == h["best_val_loss"]
    assert h["stopped_early"] and h["epochs_run"] == h["best_epoch"] + 2 < 20
    assert h["val_loss"][-1] != h["best_val_loss"]  # the last epoch's weights were not kept
    assert _val_loss_by_hand(fus, data, va) == pytest.approx(h["best_val_loss"], rel=1e-4)


@pytest.mark.parametrize("slide_only", [True, False])
def test_a_slide_only_comparator_is_validated_from_the_slide(
    data: TrainingData, split, slide_only: bool
) -> None:
    """validate_slide_only: the kept epoch's validation loss is that of predicting the
    validation patients from their slides alone (absent-transcriptome token)."""
    tr, va = split
    options = {**FUS.options, "modality_dropout": 0.5}
    cfg = to_dict(FUS) | {"epochs": 6, "patience": 6, "select_on": "loss", "options": options}
    fus = train_predictor(
        data, tr, va, FusionTrainConfig(**cfg | {"validate_slide_only": slide_only})
    )
    h = fus.provenance["history"]
    by_slide = _val_loss_by_hand(fus, data, va, slide_only=True)
    with_rna = _val_loss_by_hand(fus, data, va)
    assert by_slide != pytest.approx(with_rna, rel=1e-3)  # the two validations differ
    kept = by_slide if slide_only else with_rna
    assert kept == pytest.approx(h["best_val_loss"], rel=1e-4)
    with pytest.raises(ConfigError, match="validate_slide_only: needs model 'fusion' with"):
        FusionTrainConfig(validate_slide_only=True)


def test_same_seed_gives_identical_weights(data: TrainingData, split) -> None:
    first = train_generator(data, *split, GEN)
    again = train_generator(data, *split, GEN)
    a, b = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.provenance["history"]["val_loss"] == first.provenance["history"]["val_loss"]
    other = train_generator(data, *split, GeneratorTrainConfig(**{**GEN.__dict__, "seed": 1}))
    c = other.model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
    f1 = train_predictor(data, *split, FUS)
    f2 = train_predictor(data, *split, FUS)
    s1, s2 = f1.model.state_dict(), f2.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_training_leaves_the_callers_random_state_alone(data: TrainingData, split) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_predictor(data, *split, FusionTrainConfig(**{**FUS.__dict__, "epochs": 1}))
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_progress_prints_one_line_per_epoch(data: TrainingData, split) -> None:
    lines: list[str] = []
    gen = train_generator(data, *split, GEN, progress=lambda e: lines.append(e.line()))
    assert len(lines) == gen.provenance["history"]["epochs_run"]
    assert lines[0].startswith("generator epoch 1/3: train ") and " val " in lines[0]


# -- inference ----------------------------------------------------------------------------------
def test_generate_in_expression_units_and_batch_invariant(data: TrainingData, generator) -> None:
    bags = bags_of(data, range(5))
    mean, std = generator.generate(bags, seed=3)
    assert mean.shape == std.shape == (5, data.n_genes) and (std >= 0).all()
    mean1, _ = generator.generate(bags, seed=3, batch_size=1)
    np.testing.assert_allclose(mean, mean1, rtol=1e-4, atol=1e-4)
    z, zs = generator.generate_scaled(bags, seed=3)
    s = generator.expression_scaler
    np.testing.assert_allclose(mean, z * np.asarray(s.std) + np.asarray(s.mean), rtol=1e-5)
    np.testing.assert_allclose(std, zs * np.asarray(s.std), rtol=1e-5)
    one, spread = generator.generate(bags[:2], n_samples=1)
    assert one.shape == (2, data.n_genes) and not spread.any()
    other, _ = generator.generate(bags, seed=4)
    assert not np.allclose(mean, other)
    with pytest.raises(DataError, match=r"bags\[1\]: expected shape \(N, 70\)"):
        generator.generate([bags[0], bags[1][:, :5]])
    with pytest.raises(ConfigError, match="steps"):
        generator.generate(bags, sampler=SamplerConfig(name="ddim", steps=500))


def test_predict_outputs(data: TrainingData, fusion: TrainedFusion) -> None:
    idx = [0, 1, 2]
    pred = fusion.predict(bags_of(data, idx), data.expression[idx])
    np.testing.assert_allclose(pred.grade_probs.sum(1), 1.0, rtol=1e-12)
    S = np.cumprod(1 - pred.hazards, axis=1)
    np.testing.assert_allclose(pred.risk, -S.sum(1), rtol=1e-12)
    assert pred.attention is not None and len(pred.attention) == 3
    for i, a in zip(idx, pred.attention, strict=True):
        assert a.shape == (data.panel.n_families, data.bags[i].shape[0])
        np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-5)
    assert pred.grade_sets is None and pred.risk_lo is None
    wsi1 = fusion.predict(bags_of(data, idx), None, noise_seed=5)
    wsi2 = fusion.predict(bags_of(data, idx), None, noise_seed=5)
    np.testing.assert_array_equal(wsi1.risk, wsi2.risk)
    assert not np.allclose(wsi1.risk, pred.risk)
    with pytest.raises(DataError, match="expected 3 rows"):
        fusion.predict(bags_of(data, idx), data.expression[:2])


def test_risk_cuts_split_the_training_patients_into_tertiles(
    data: TrainingData, split, fusion: TrainedFusion
) -> None:
    cuts = fusion.risk_cuts
    both = np.concatenate(split)
    assert cuts is not None and cuts.quantiles == pytest.approx((1 / 3, 2 / 3))
    assert cuts.n == both.size
    risk = fusion.predict(bags_of(data, both), data.expression[both]).risk
    np.testing.assert_allclose(cuts.cuts, np.quantile(risk, [1 / 3, 2 / 3]))
    groups = [fusion.risk_group(r) for r in risk]
    counts = {g: groups.count(g) for g in ("low", "intermediate", "high")}
    assert all(abs(c - both.size / 3) <= 2 for c in counts.values()), counts
    assert fusion.risk_group(cuts.cuts[0] - 1e-9) == "low"
    assert fusion.risk_group(cuts.cuts[1]) == "high"
    with pytest.raises(ConfigError, match="risk_quantiles"):
        FusionTrainConfig(risk_quantiles=(0.7, 0.3))


def test_baselines_take_their_one_modality(data: TrainingData, split) -> None:
    opts = {"width": 16}
    omics = train_predictor(
        data, *split, FusionTrainConfig(**{**FUS.__dict__, "model": "omics_mlp", "options": opts})
    )
    p = omics.predict(None, data.expression[:4])
    assert p.grade_probs.shape == (4, 3) and p.attention is None
    with pytest.raises(DataError, match="needs a transcriptome"):
        omics.predict(bags_of(data, range(4)), None)
    mil = train_predictor(
        data,
        *split,
        FusionTrainConfig(**{**FUS.__dict__, "model": "attention_mil", "options": opts}),
    )
    q = mil.predict(bags_of(data, range(4)))
    assert q.attention is not None and q.attention[0].shape == (1, data.bags[0].shape[0])
    with pytest.raises(DataError, match="needs tile bags"):
        mil.predict(None, data.expression[:4])


def test_fusion_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['depth'\]"):
        FusionTrainConfig(model="fusion", options={"depth": 3})
    with pytest.raises(ConfigError, match="feature_dim"):
        FusionTrainConfig(model="attention_mil", options={"feature_dim": 3})
    with pytest.raises(ConfigError, match="not divisible by heads"):
        FusionTrainConfig(model="fusion", options={"width": 10, "heads": 4})
    with pytest.raises(ConfigError, match=r"GeneratorTrainConfig\.model.*divisible"):
        GeneratorTrainConfig(model=GeneratorArch(width=10, heads=4))
    with pytest.raises(ConfigError, match="steps"):
        GeneratorTrainConfig(sampler=SamplerConfig(name="ddim", steps=5000))


# -- bundles ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def calibrated(data: TrainingData, split, generator, fusion) -> TrainedFusion:
    _, va = split
    with threads(1):
        syn, _ = generator.generate(bags_of(data, va))
        return calibrate_fusion(
            fusion, bags_of(data, va), syn, data.expression[va], data.grade[va], alpha=0.25
        )


def test_calibration_refuses_patients_that_chose_the_checkpoint(
    data: TrainingData, split, generator, fusion
) -> None:
    _, va = split
    syn, _ = generator.generate(bags_of(data, va))
    ids = [data.patient_ids[i] for i in va]
    with pytest.raises(DataError, match="also chose the model's checkpoint"):
        calibrate_fusion(
            fusion, bags_of(data, va), syn, data.expression[va], data.grade[va], 0.25, "lac", ids
        )


def test_calibration_refits_the_risk_cuts_on_synthetic_transcriptomes(
    data: TrainingData, split, generator, calibrated: TrainedFusion
) -> None:
    _, va = split
    with threads(1):
        syn, _ = generator.generate(bags_of(data, va))
    risk = calibrated.predict(bags_of(data, va), syn).risk  # the scoring-time input
    cuts = calibrated.risk_cuts
    assert cuts is not None and cuts.n == va.size
    np.testing.assert_allclose(cuts.cuts, np.quantile(risk, [1 / 3, 2 / 3]))


def test_generator_bundle_round_trip(data: TrainingData, generator, tmp_path: Path) -> None:
    path = save_generator(generator, tmp_path / "gen")
    names = sorted(p.name for p in path.iterdir())
    expected = [
        "bundle.json",
        "expression_scaler.json",
        "feature_scaler.json",
        "gene_panel.csv",
        "weights.pt",
    ]
    assert names == expected
    state = torch.load(path / "weights.pt", weights_only=True)
    assert set(state) == set(generator.model.state_dict())
    loaded = load_bundle(path)
    assert isinstance(loaded, TrainedGenerator)
    assert loaded.kind == "generator" and loaded.model_name == "generator"
    assert loaded.contract == generator.contract and loaded.panel == generator.panel
    assert loaded.sampler == generator.sampler and loaded.train_config == generator.train_config
    bags = bags_of(data, range(4))
    a, sa = generator.generate(bags, seed=1)
    b, sb = loaded.generate(bags, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)
    m = read_manifest(path)
    assert m["kind"] == "generator" and m["format_version"] == 2
    assert m["diffusion"]["prediction"] == "v" and loaded.diffusion == generator.diffusion
    assert m["gene_panel_digest"] == data.panel.digest
    assert m["provenance"]["cohort_digest"] == data.digest


def test_fusion_bundle_round_trip(data: TrainingData, calibrated, tmp_path: Path) -> None:
    path = save_fusion(calibrated, tmp_path / "fus")
    text = (path / "bundle.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    manifest = json.loads(text)
    assert manifest["bin_edges"][-1] == "inf" and manifest["kind"] == "fusion"
    assert manifest["conformal"]["grade"]["alpha"] == 0.25
    loaded = load_bundle(path)
    assert isinstance(loaded, TrainedFusion) and loaded.model_name == "fusion"
    np.testing.assert_array_equal(loaded.bin_edges, calibrated.bin_edges)
    assert loaded.grade_conformal == calibrated.grade_conformal
    assert loaded.risk_conformal == calibrated.risk_conformal
    assert calibrated.risk_cuts is not None and loaded.risk_cuts == calibrated.risk_cuts
    assert manifest["risk_cuts"]["quantiles"] == pytest.approx([1 / 3, 2 / 3])
    del manifest["risk_cuts"]  # a bundle written before relative risk groups still loads
    (path / "bundle.json").write_text(json.dumps(manifest))
    assert load_bundle(path).risk_cuts is None  # type: ignore[union-attr]
    idx = [3, 4, 5, 6]
    a = calibrated.predict(bags_of(data, idx), data.expression[idx])
    b = loaded.predict(bags_of(data, idx), data.expression[idx])
    np.testing.assert_array_equal(a.grade_probs, b.grade_probs)
    np.testing.assert_array_equal(a.risk, b.risk)
    np.testing.assert_array_equal(a.grade_sets, b.grade_sets)
    np.testing.assert_array_equal(a.risk_lo, b.risk_lo)
    assert b.grade_sets is not None and b.grade_sets.any(axis=1).all()
    assert b.risk_lo is not None and b.risk_hi is not None and (b.risk_lo <= b.risk_hi).all()


def _edit_manifest(path: Path, edit) -> None:
    m = json.loads((path / "bundle.json").read_text())
    edit(m)
    (path / "bundle.json").write_text(json.dumps(m))


def test_tampered_bundles_are_refused(generator, fusion, tmp_path: Path) -> None:
    good = save_fusion(fusion, tmp_path / "good")

    def copy(name: str) -> Path:
        return Path(shutil.copytree(good, tmp_path / name))

    p = copy("unknown")
    _edit_manifest(p, lambda m: m.update(notes="hi"))
    with pytest.raises(DataError, match=r"unknown key\(s\) \['notes'\]"):
        load_bundle(p)
    p = copy("cfg")
    _edit_manifest(p, lambda m: m["model_config"].update(width=32))
    with pytest.raises(DataError, match="weights do not match the model config"):
        load_bundle(p)
    p = copy("cfgkey")
    _edit_manifest(p, lambda m: m["model_config"].update(colour="red"))
    with pytest.raises(DataError, match="colour"):
        load_bundle(p)
    p = copy("format1")  # format 1 kept the network's output type in train_config
    _edit_manifest(p, lambda m: m.update(format_version=1))
    with pytest.raises(DataError, match=r"bundle format 1 is not readable.*reads bundle format 2"):
        load_bundle(p)
    p = copy("missing")
    (p / "feature_scaler.json").unlink()
    with pytest.raises(DataError, match=r"feature_scaler\.json is missing"):
        load_bundle(p)
    p = copy("swapped")
    gen = save_generator(generator, tmp_path / "gen")
    shutil.copy(gen / "weights.pt", p / "weights.pt")
    with pytest.raises(DataError, match=r"weights\.pt does not match the digest"):
        load_bundle(p)
    p = copy("panel")
    (p / "gene_panel.csv").write_text("gene,family\nA,f\n")
    with pytest.raises(DataError, match=r"gene_panel\.csv does not match the digest"):
        load_bundle(p)
    with pytest.raises(ConfigError, match="not empty"):
        save_fusion(fusion, good)
    assert save_fusion(fusion, good, overwrite=True) == good


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_trains_generator_then_fusion(cohort_dirs, data, tmp_path: Path) -> None:
    from pathgen_batch.cli.train import train

    gen_cfg = tmp_path / "cv.json"  # one CVConfig file: its generator and fusion sections
    gen_cfg.write_text(
        json.dumps({"generator": to_dict(GEN), "fusion": to_dict(FUS), "val_fraction": 0.25})
    )
    fus_cfg = gen_cfg
    cohort, feats = (str(p) for p in cohort_dirs)
    runner = CliRunner()
    args = ["--cohort", cohort, "--features", feats]
    r = runner.invoke(
        train,
        [
            "generator",
            *args,
            "--out",
            str(tmp_path / "g"),
            "--config",
            str(gen_cfg),
            "--epochs",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "generator bundle" in r.stdout and "generator epoch 2/2" in r.stderr
    gen = load_bundle(tmp_path / "g")
    assert isinstance(gen, TrainedGenerator) and gen.train_config["epochs"] == 2
    r = runner.invoke(
        train,
        [
            "fusion",
            *args,
            "--out",
            str(tmp_path / "f"),
            "--config",
            str(fus_cfg),
            "--generator",
            str(tmp_path / "g"),
            "--alpha",
            "0.25",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "fusion bundle" in r.stdout and "conformal qhat" in r.stdout
    fus = load_bundle(tmp_path / "f")
    assert isinstance(fus, TrainedFusion) and fus.grade_conformal is not None
    assert fus.provenance["val_patients"] == gen.provenance["val_patients"]
    cal = fus.provenance["conformal"]["cal_patients"]
    assert cal == gen.provenance["cal_patients"] and cal
    assert set(cal).isdisjoint(fus.provenance["val_patients"])
    assert fus.grade_conformal.n_cal == len(cal)
    assert "early-stopping" in r.stdout and "calibration patients" in r.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generator": {"epochs": 2, "learning_rate": 0.1}}))
    r = runner.invoke(
        train, ["generator", *args, "--out", str(tmp_path / "x"), "--config", str(bad)]
    )
    assert isinstance(r.exception, ConfigError) and "learning_rate" in str(r.exception)
    r = runner.invoke(
        train,
        ["fusion", *args, "--out", str(tmp_path / "y"), "--generator", str(tmp_path / "f")],
    )
    assert isinstance(r.exception, DataError) and "expected a generator bundle" in str(r.exception)
    for cmd in ([], ["generator"], ["fusion"]):
        assert runner.invoke(train, [*cmd, "--help"]).exit_code == 0


def test_calibrated_fusion_refuses_a_generator_of_other_data(data, generator) -> None:
    from pathgen_batch.training.trainers import generator_split, train_calibrated_fusion

    with pytest.raises(DataError, match="no calibration patients"):
        generator_split(data, generator)
    val = set(generator.provenance["val_patients"])
    spare = [p for p in data.patient_ids if p not in val][:3]
    held = dataclasses.replace(
        generator, provenance={**generator.provenance, "cal_patients": spare}
    )
    tr, va, cal = generator_split(data, held)
    assert [data.patient_ids[i] for i in va] == list(generator.provenance["val_patients"])
    assert [data.patient_ids[i] for i in cal] == spare
    assert not (set(tr) & set(va) or set(tr) & set(cal) or set(va) & set(cal))
    assert len(tr) + len(va) + len(cal) == data.n_patients
    held_out = data.without_fold(0)
    assert 0 not in set(held_out.folds.tolist()) and held_out.n_patients < data.n_patients
    with pytest.raises(DataError, match="trained on other data"):
        train_calibrated_fusion(held_out, generator, FUS)
    with pytest.raises(DataError, match="no patient has that fold"):
        data.without_fold(99)
