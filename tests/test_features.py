"""Tile encoders, the feature contract, feature files and bag padding (real files, no mocks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features import (
    FeatureContract,
    build_encoder,
    encoder_for_contract,
    encoder_names,
    extract_slide,
    extract_slides,
    feature_file,
    load_bags,
    pad_bags,
    read_contract,
    read_slide_features,
    resolve_device,
    stored_slide_ids,
)
from pathgen_batch.features.resnet import ResNet50Trunc
from pathgen_batch.features.stain import feature_names

# Ruifrok & Johnston (2001) optical-density vectors, unit length.
HEMA = np.array([0.650, 0.704, 0.286]) / np.linalg.norm([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105]) / np.linalg.norm([0.072, 0.990, 0.105])
CUDA = torch.cuda.is_available()


# -- helpers ------------------------------------------------------------------------------------
def beer_lambert(ch: np.ndarray, ce: np.ndarray) -> np.ndarray:
    """Haematoxylin / eosin concentration maps (H, W) -> uint8 RGB (H, W, 3)."""
    od = ch[..., None] * HEMA + ce[..., None] * EOSIN  # (H, W, 3)
    return np.clip(np.round(255.0 * 10.0 ** (-od)), 0, 255).astype(np.uint8)


def nuclei_patch(rng: np.random.Generator, px: int) -> np.ndarray:
    """Dense dark-purple disks (nuclei) on light pink."""
    yy, xx = np.mgrid[0:px, 0:px]
    ch = np.full((px, px), 0.12) + rng.normal(0, 0.02, (px, px))
    ce = np.full((px, px), 0.20) + rng.normal(0, 0.02, (px, px))
    for _ in range(int(px * px / 300)):
        cy, cx, r = rng.uniform(0, px), rng.uniform(0, px), rng.uniform(3, 6)
        ch[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.7, 1.0)
    return beer_lambert(ch.clip(0), ce.clip(0))


def stroma_patch(rng: np.random.Generator, px: int) -> np.ndarray:
    """Pink eosin fibres at a random orientation, few nuclei."""
    yy, xx = np.mgrid[0:px, 0:px]
    th = rng.uniform(0, np.pi)
    u = xx * np.cos(th) + yy * np.sin(th)
    ce = 0.45 + 0.25 * np.sin(2 * np.pi * u / rng.uniform(6, 10)) + rng.normal(0, 0.03, (px, px))
    ch = np.full((px, px), 0.06) + rng.normal(0, 0.02, (px, px))
    return beer_lambert(ch.clip(0), ce.clip(0))


def background_patch(rng: np.random.Generator, px: int) -> np.ndarray:
    """Near-white glass with faint noise."""
    ch = np.abs(rng.normal(0, 0.01, (px, px)))
    ce = np.abs(rng.normal(0, 0.01, (px, px)))
    return beer_lambert(ch, ce)


def write_aperio(path: Path, level0: np.ndarray, mpp: float, levels: int = 2) -> Path:
    """A pyramidal Aperio-style TIFF, lossless (zlib) tiles, level k = level0[::2^k, ::2^k]."""
    h, w, _ = level0.shape
    desc = f"Aperio Image Library v1.0\n{w}x{h} [0,0 {w}x{h}] (256x256) |AppMag = 20|MPP = {mpp}"
    with tifffile.TiffWriter(path) as tw:
        tw.write(level0, tile=(256, 256), photometric="rgb", compression="zlib",
                 description=desc, metadata=None)  # fmt: skip
        for k in range(1, levels):
            lv = np.ascontiguousarray(level0[:: 2**k, :: 2**k])
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="zlib",
                     subfiletype=1, metadata=None)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def he_png(he_sources: tuple[Path, Path]) -> np.ndarray:
    """Real H&E pixels (1000, 1000, 3) uint8."""
    return np.asarray(Image.open(he_sources[1]).convert("RGB"))


@pytest.fixture(scope="module")
def canvas(he_png: np.ndarray) -> np.ndarray:
    """(768, 1024, 3): real H&E in x < 704, glass elsewhere."""
    c = np.full((768, 1024, 3), 244, dtype=np.uint8)
    c[:, :704] = he_png[:768, :704]
    return c


@pytest.fixture(scope="module")
def stain_enc():
    return build_encoder("stain-texture")


# -- contract -----------------------------------------------------------------------------------
def test_contract_round_trip_and_stable_digest() -> None:
    c = FeatureContract("stain-texture", "v1", 70, 256, 0.5)
    assert FeatureContract.from_dict(c.to_dict()) == c
    assert FeatureContract.from_dict(json.loads(c.to_json())) == c
    canonical = '{"dim":70,"encoder":"stain-texture","mpp":0.5,"tile_px":256,"version":"v1"}'
    assert c.digest == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert FeatureContract("stain-texture", "v1", 70, 256, 1).mpp == 1.0
    assert FeatureContract("stain-texture", "v2", 70, 256, 0.5).digest != c.digest


def test_contract_check_matches_names_differing_fields() -> None:
    a = FeatureContract("uni", "sha256:aa", 1024, 224, 0.5)
    a.check_matches(FeatureContract("uni", "sha256:aa", 1024, 224, 0.5))
    with pytest.raises(DataError, match=r"generator vs fusion mismatch: dim 1024 vs 768"):
        a.check_matches(FeatureContract("uni", "sha256:aa", 768, 224, 0.5), "generator vs fusion")
    with pytest.raises(DataError) as ei:
        a.check_matches(FeatureContract("uni", "sha256:bb", 1024, 256, 0.5))
    assert "version 'sha256:aa' vs 'sha256:bb'" in str(ei.value)
    assert "tile_px 224 vs 256" in str(ei.value)
    assert "dim" not in str(ei.value)


def test_contract_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        FeatureContract.from_dict(
            {"encoder": "x", "version": "v1", "dim": 4, "tile_px": 8, "mpp": 0.5, "mmp": 1}
        )
    with pytest.raises(ConfigError, match="dim"):
        FeatureContract("x", "v1", 0, 256, 0.5)
    with pytest.raises(ConfigError, match="mpp"):
        FeatureContract("x", "v1", 4, 256, -0.5)
    with pytest.raises(DataError, match="not valid JSON"):
        FeatureContract.from_json("{", source="model.json")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    if not CUDA:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# -- registry -----------------------------------------------------------------------------------
def test_registry_names_and_strict_options() -> None:
    assert {"stain-texture", "resnet50-trunc", "torchscript"} <= set(encoder_names())
    with pytest.raises(ConfigError, match="registered encoders are"):
        build_encoder("uni-from-the-web")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['tile_size'\]"):
        build_encoder("stain-texture", options={"tile_size": 128})
    with pytest.raises(ConfigError, match="--weights"):
        build_encoder("resnet50-trunc")
    with pytest.raises(ConfigError, match="takes no weights"):
        build_encoder("stain-texture", weights="w.pt")


# -- stain-texture ------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_set", ["v1", "v2"])
def test_stain_texture_recovers_known_concentrations(feature_set: str) -> None:
    """Uniform patches made by Beer-Lambert: deconvolution returns the concentrations."""
    enc = build_encoder("stain-texture", options={"tile_px": 64, "feature_set": feature_set})
    names = feature_names(enc.cfg)
    one = np.ones((64, 64))
    imgs = np.stack([beer_lambert(0.8 * one, 0.3 * one), beer_lambert(0.1 * one, 0.6 * one)])
    white = np.full((1, 64, 64, 3), 255, dtype=np.uint8)
    f = enc.encode(np.concatenate([imgs, white]))
    col = {n: f[:, i] for i, n in enumerate(names)}
    np.testing.assert_allclose(col["h_mean"], [0.8, 0.1, 0.0], atol=0.02)
    np.testing.assert_allclose(col["e_mean"], [0.3, 0.6, 0.0], atol=0.02)
    np.testing.assert_allclose(col["dab_mean"], [0.0, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(col["h_q95"] - col["h_q05"], 0.0, atol=1e-6)
    np.testing.assert_allclose(col["background_frac"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(col["nuclei_frac_0.35"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(col["eosin_frac"], [0.0, 1.0, 0.0])
    # A flat image has no texture: every energy sits at the floor, log10(1e-6) = -6.
    np.testing.assert_allclose(col["h_lap_log_s0"], -6.0, atol=1e-3)
    np.testing.assert_allclose(col["e_gabor_log_s2"], -6.0, atol=1e-3)
    assert f.dtype == np.float32 and f.shape == (3, enc.dim) and enc.dim == len(names)


@pytest.mark.parametrize("feature_set", ["v1", "v2"])
def test_stain_texture_separates_nuclei_stroma_and_glass(feature_set: str) -> None:
    enc = build_encoder("stain-texture", options={"tile_px": 128, "feature_set": feature_set})
    makers = (nuclei_patch, stroma_patch, background_patch)

    def sample(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = np.stack([m(rng, 128) for m in makers for _ in range(n)])
        return enc.encode(x), np.repeat(np.arange(3), n)

    f_fit, y_fit = sample(0, 5)
    f_new, y_new = sample(1, 5)
    mu, sd = f_fit.mean(0), f_fit.std(0) + 1e-3
    centroids = np.stack([((f_fit[y_fit == k] - mu) / sd).mean(0) for k in range(3)])
    z = (f_new - mu) / sd
    pred = np.argmin(((z[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(pred, y_new)
    names = feature_names(enc.cfg)
    nuc = f_new[:, names.index("nuclei_frac_0.35")]
    assert nuc[y_new == 0].min() > 5 * max(nuc[y_new == 1].max(), nuc[y_new == 2].max(), 0.01)


@pytest.mark.slow  # over ~2 s: the full suite runs it
@pytest.mark.parametrize("feature_set", ["v1", "v2"])
def test_stain_texture_rotation_invariant_deterministic_batch_independent(
    he_png, feature_set: str
) -> None:
    enc = build_encoder("stain-texture", options={"tile_px": 128, "feature_set": feature_set})
    tiles = np.stack([he_png[i : i + 128, j : j + 128] for i in (0, 300, 600) for j in (50, 700)])
    f = enc.encode(tiles)
    assert np.isfinite(f).all()
    for k in (1, 2, 3):
        rot = np.ascontiguousarray(np.rot90(tiles, k, axes=(1, 2)))
        np.testing.assert_allclose(enc.encode(rot), f, atol=1e-4)
    np.testing.assert_allclose(enc.encode(np.ascontiguousarray(tiles[:, :, ::-1])), f, atol=1e-4)
    np.testing.assert_array_equal(enc.encode(tiles), f)
    parts = np.concatenate([enc.encode(tiles[:1]), enc.encode(tiles[1:4]), enc.encode(tiles[4:])])
    np.testing.assert_allclose(parts, f, atol=1e-5)


def test_stain_texture_v2_measures_what_v1_measures(he_png) -> None:
    """On real H&E tiles every v2 feature follows its v1 namesake across tiles."""
    tiles = np.stack(
        [he_png[i : i + 128, j : j + 128] for i in range(0, 801, 200) for j in range(0, 801, 200)]
    )
    opts = {"tile_px": 128}
    f1 = build_encoder("stain-texture", options={**opts, "feature_set": "v1"}).encode(tiles)
    f2 = build_encoder("stain-texture", options=opts).encode(tiles)
    names = feature_names()
    r = np.array([np.corrcoef(f1[:, i], f2[:, i])[0, 1] for i in range(len(names))])
    colour = [i for i, n in enumerate(names) if "_log_" not in n and "aniso" not in n]
    energy = [i for i, n in enumerate(names) if "_log_" in n]
    assert r[colour].min() > 0.95, {names[i]: r[i] for i in colour if r[i] <= 0.95}
    assert r[energy].min() > 0.9, {names[i]: r[i] for i in energy if r[i] <= 0.9}
    assert np.median(r[[i for i, n in enumerate(names) if "aniso" in n]]) > 0.6
    scale = f1.std(0) + 1e-3
    assert np.median(np.abs(f2 - f1).mean(0) / scale) < 0.5  # same units, not just correlated


def test_stain_texture_v2_energies_are_filter_response_energies() -> None:
    """Parseval: v2's spectral energies equal the direct filter responses' mean energy."""
    from pathgen_batch.features import stain_v2
    from pathgen_batch.features.stain import _texture_kernels

    rng = np.random.default_rng(3)
    n = 64
    img = rng.normal(size=(n, n))
    win = stain_v2.tukey(n)
    w2 = np.outer(win, win)
    x = img * w2
    x = x - w2 * (x.sum() / w2.sum())
    kernels = _texture_kernels()[:, 0].numpy().astype(np.float64)
    w = stain_v2.spectral_weights(kernels, n, 2).double().numpy()
    spec = np.fft.rfft2(x)
    power = (np.abs(spec) ** 2).ravel()
    got = power @ w  # (12,)
    for k in range(2):  # scale k: 2^k box, then the kernel dilated by 2^k, circularly
        d = 2**k
        box = np.zeros((n, n))
        box[:d, :d] = 1.0 / d**2
        fx = np.fft.fft2(x) * np.fft.fft2(box)
        direct = []
        for kern in kernels:
            dil = np.zeros((n, n))
            c = kern.shape[0] // 2
            for a in range(-c, c + 1):
                for b in range(-c, c + 1):
                    dil[(a * d) % n, (b * d) % n] += kern[a + c, b + c]
            y = np.fft.ifft2(fx * np.fft.fft2(dil)).real
            direct.append((y**2).sum() / (w2**2).sum())
        want = [direct[0] + direct[1], direct[2], *direct[3:]]
        np.testing.assert_allclose(got[6 * k : 6 * k + 6], want, rtol=1e-5)


def test_stain_texture_v2_quantiles_follow_the_sorted_values() -> None:
    from pathgen_batch.features import stain_v2

    rng = np.random.default_rng(0)
    v = torch.from_numpy(rng.normal(0.4, 0.3, size=(5, 4096)).astype(np.float32))
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    got = stain_v2.hist_quantiles(v, qs).numpy()
    want = np.quantile(v.numpy(), qs, axis=1).T
    width = (stain_v2.HIST_RANGE[1] - stain_v2.HIST_RANGE[0]) / stain_v2.HIST_BINS
    np.testing.assert_allclose(got, want, atol=width)


def test_stain_texture_contract_and_input_checks(stain_enc) -> None:
    c = stain_enc.contract
    assert (c.encoder, c.version, c.dim, c.tile_px, c.mpp) == ("stain-texture", "v2", 70, 256, 0.5)
    small = build_encoder("stain-texture", options={"scales": 2, "grid": False})
    assert small.contract.version == "v2-s2-grid0"
    assert small.dim == 70 - 8 - 12  # one texture scale (2 stains x 4) and the grid (3 x 4) less
    assert encoder_for_contract(small.contract).contract == small.contract
    old = build_encoder("stain-texture", options={"scales": 2, "grid": False, "feature_set": "v1"})
    assert old.contract.version == "v1-s2-grid0" and old.dim == small.dim
    assert encoder_for_contract(old.contract).cfg.feature_set == "v1"
    with pytest.raises(ConfigError, match="feature_set must be one of"):
        build_encoder("stain-texture", options={"feature_set": "v3"})
    with pytest.raises(ConfigError, match="divisible by 4"):
        build_encoder("stain-texture", options={"tile_px": 130})
    with pytest.raises(ConfigError, match="unknown version 'v3'"):
        encoder_for_contract(FeatureContract("stain-texture", "v3", 70, 256, 0.5))
    with pytest.raises(ConfigError, match=r"\(B, 256, 256, 3\), got \(2, 128, 128, 3\)"):
        stain_enc.encode(np.zeros((2, 128, 128, 3), np.uint8))
    with pytest.raises(ConfigError, match="uint8"):
        stain_enc.encode(np.zeros((1, 256, 256, 3), np.float32))
    assert stain_enc.encode(np.zeros((0, 256, 256, 3), np.uint8)).shape == (0, 70)


# -- resnet50-trunc -----------------------------------------------------------------------------
def _random_resnet(seed: int) -> ResNet50Trunc:
    torch.manual_seed(seed)
    m = ResNet50Trunc()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.1, 0.1)
    return m.eval()


def test_resnet50_trunc_parameter_count() -> None:
    # torchvision resnet50: 25,557,032 parameters; layer4 holds 14,964,736 and fc 2,049,000.
    n = sum(p.numel() for p in ResNet50Trunc().parameters())
    assert n == 25_557_032 - 14_964_736 - 2_049_000


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_resnet50_trunc_loads_local_weights_through_registry(tmp_path: Path) -> None:
    model = _random_resnet(0)
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)  # a full torchvision state dict has these too
    state["layer4.0.conv1.weight"] = torch.zeros(512, 1024, 1, 1)
    path = tmp_path / "r50.pth"
    torch.save(state, path)
    enc = build_encoder("resnet50-trunc", weights=str(path), options={"tile_px": 64})
    assert enc.contract.version == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert (enc.dim, enc.tile_px, enc.mpp) == (1024, 64, 0.5)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    x = (imgs / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]  # ImageNet normalisation
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).numpy()
    got = enc.encode(imgs)
    assert got.shape == (3, 1024) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_resnet50_trunc_rejects_bad_weight_files(tmp_path: Path) -> None:
    good = _random_resnet(1).state_dict()
    renamed = dict(good)
    renamed["layer3.5.bn3.runing_var"] = renamed.pop("layer3.5.bn3.running_var")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ConfigError) as ei:
        build_encoder("resnet50-trunc", weights=str(tmp_path / "renamed.pth"))
    assert "layer3.5.bn3.running_var" in str(ei.value) and "runing_var" in str(ei.value)
    reshaped = dict(good)
    reshaped["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(ConfigError, match=r"conv1.weight: expected shape \(64, 3, 7, 7\)"):
        build_encoder("resnet50-trunc", weights=str(tmp_path / "reshaped.pth"))
    with pytest.raises(ConfigError, match=r"not found: .*missing\.pth"):
        build_encoder("resnet50-trunc", weights=str(tmp_path / "missing.pth"))
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        build_encoder("resnet50-trunc", weights=str(tmp_path / "notes.txt"))


# -- torchscript --------------------------------------------------------------------------------
class MeanMax(nn.Module):
    """(B, 3, H, W) -> (B, 6): per-channel mean and max."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


@pytest.mark.parametrize("export", ["script", "trace"])
def test_torchscript_encoder_matches_closed_form(tmp_path: Path, export: str) -> None:
    path = tmp_path / f"meanmax_{export}.pt"
    if export == "script":
        torch.jit.script(MeanMax()).save(str(path))
    else:
        torch.jit.trace(MeanMax(), torch.rand(2, 3, 32, 32)).save(str(path))
    opts = {"dim": 6, "tile_px": 32, "mpp": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.25] * 3}
    enc = build_encoder("torchscript", weights=str(path), options=opts)
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert enc.contract.version == digest + ";mean=0.5,0.5,0.5;std=0.25,0.25,0.25"
    imgs = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    z = (imgs / 255.0 - 0.5) / 0.25  # (B, H, W, 3)
    want = np.concatenate([z.mean(axis=(1, 2)), z.max(axis=(1, 2))], axis=1)
    np.testing.assert_allclose(enc.encode(imgs), want, rtol=1e-5, atol=1e-5)
    assert encoder_for_contract(enc.contract, weights=str(path)).contract == enc.contract


def test_torchscript_declared_dim_checked_and_version_pinned(tmp_path: Path) -> None:
    path = tmp_path / "meanmax.pt"
    torch.jit.script(MeanMax()).save(str(path))
    enc = build_encoder("torchscript", weights=str(path), options={"dim": 7, "tile_px": 16})
    with pytest.raises(ConfigError, match=r"declared dim 7.*returned \(2, 6\)"):
        enc.encode(np.zeros((2, 16, 16, 3), np.uint8))
    other = tmp_path / "other.pt"
    torch.jit.trace(MeanMax(), torch.rand(1, 3, 8, 8)).save(str(other))
    with pytest.raises(DataError, match="version"):
        encoder_for_contract(enc.contract, weights=str(other))
    with pytest.raises(ConfigError, match="dim"):
        build_encoder("torchscript", weights=str(path))
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(ConfigError, match="not a TorchScript file"):
        build_encoder("torchscript", weights=str(tmp_path / "state.pt"), options={"dim": 6})


# -- bags ---------------------------------------------------------------------------------------
def test_pad_bags_hand_case() -> None:
    a = np.array([[1, 2], [3, 4]], np.float32)
    b = np.array([[5, 6], [7, 8], [9, 10]], np.float32)
    feats, mask = pad_bags([a, b])
    assert feats.shape == (2, 3, 2) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[0], [[1, 2], [3, 4], [0, 0]])
    np.testing.assert_array_equal(feats[1], b)
    np.testing.assert_array_equal(mask, [[True, True, False], [True, True, True]])
    feats, mask = pad_bags([a, b], max_tiles=2)
    np.testing.assert_array_equal(feats[1], [[5, 6], [7, 8]])
    assert mask.all()


def test_pad_bags_random_subsample() -> None:
    big = np.arange(200, dtype=np.float32).reshape(100, 2)  # row i = (2i, 2i + 1)
    f1, m1 = pad_bags([big], max_tiles=10, rng=np.random.default_rng(3))
    f2, _ = pad_bags([big], max_tiles=10, rng=np.random.default_rng(3))
    rows = f1[0, :, 0] / 2
    assert m1.shape == (1, 10) and m1.all()
    assert len(set(rows)) == 10 and np.all(np.diff(rows) > 0)  # distinct rows, in bag order
    np.testing.assert_array_equal(f1[0, :, 1], f1[0, :, 0] + 1)  # whole rows kept
    np.testing.assert_array_equal(f1, f2)
    assert not np.array_equal(rows, np.arange(10))


def test_pad_bags_rejects_bad_bags() -> None:
    with pytest.raises(DataError, match="different feature dims"):
        pad_bags([np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)])
    with pytest.raises(DataError, match="bag 1 is empty"):
        pad_bags([np.zeros((2, 3), np.float32), np.zeros((0, 3), np.float32)])
    with pytest.raises(DataError, match="max_tiles"):
        pad_bags([np.zeros((2, 3), np.float32)], max_tiles=0)


# -- extraction and feature files ---------------------------------------------------------------
@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_extract_slide_encodes_the_slide_pixels(tmp_path: Path, canvas, stain_enc) -> None:
    slide = write_aperio(tmp_path / "S1.svs", canvas, mpp=0.5)
    sf = extract_slide(slide, stain_enc, batch_size=4)
    assert sf.slide_id == "S1" and sf.contract == stain_enc.contract and sf.size_l0 == 256
    assert len(sf) >= 6
    assert set(sf.x.tolist()) <= {0, 256, 512} and set(sf.y.tolist()) <= {0, 256, 512}
    assert (sf.tissue >= 0.5).all()
    crops = np.stack([canvas[y : y + 256, x : x + 256] for x, y in sf.coords])
    np.testing.assert_allclose(sf.feats, stain_enc.encode(crops), atol=1e-5)
    np.testing.assert_array_equal(sf.coords, np.stack([sf.x, sf.y], 1))


def test_extract_slide_coordinates_are_level0_when_reading_a_coarser_level(
    tmp_path: Path, canvas
) -> None:
    slide = write_aperio(tmp_path / "fine.svs", canvas, mpp=0.25)  # level 1 is 0.5 um/px
    enc = build_encoder("stain-texture", options={"tile_px": 128})
    sf = extract_slide(slide, enc)
    assert sf.size_l0 == 256 and len(sf) >= 6
    assert (sf.x % 256 == 0).all() and (sf.y % 256 == 0).all()
    level1 = canvas[::2, ::2]
    crops = np.stack([level1[y // 2 : y // 2 + 128, x // 2 : x // 2 + 128] for x, y in sf.coords])
    np.testing.assert_allclose(sf.feats, enc.encode(crops), atol=1e-5)


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_extract_slides_writes_resumes_and_guards_the_contract(
    tmp_path: Path, canvas, stain_enc
) -> None:
    slides = {
        "A": write_aperio(tmp_path / "a.svs", canvas, mpp=0.5),
        "B": write_aperio(tmp_path / "b.svs", np.ascontiguousarray(canvas[::-1]), mpp=0.5),
    }
    out = tmp_path / "feats"
    seen: list[str] = []
    res = extract_slides(slides, out, stain_enc, progress=lambda r: seen.append(r.slide_id))
    assert [r.status for r in res] == ["done", "done"] and seen == ["A", "B"]
    assert sorted(p.name for p in out.iterdir()) == ["A.parquet", "B.parquet"]  # no temp files
    assert stored_slide_ids(out) == ("A", "B")

    table = pq.read_table(feature_file(out, "A"))
    assert table.schema.field("feature").type == pa.list_(pa.float32(), 70)
    assert table.schema.field("x").type == pa.int64()
    assert set(table.column_names) >= {"slide_id", "x", "y", "tile_px", "mpp", "tissue"}
    assert read_contract(feature_file(out, "A")) == stain_enc.contract
    direct = extract_slide(slides["A"], stain_enc, slide_id="A")
    bags = load_bags(out, ["A", "B"], stain_enc.contract)
    np.testing.assert_array_equal(bags["A"][0], direct.coords)
    np.testing.assert_array_equal(bags["A"][1], direct.feats)
    assert bags["A"][0].dtype == np.int64 and bags["B"][1].dtype == np.float32
    stored = read_slide_features(feature_file(out, "A"))
    np.testing.assert_array_equal(stored.tissue, direct.tissue)

    mtimes = {s: feature_file(out, s).stat().st_mtime_ns for s in slides}
    res = extract_slides(slides, out, stain_enc)
    assert [r.status for r in res] == ["skipped", "skipped"]
    assert {s: feature_file(out, s).stat().st_mtime_ns for s in slides} == mtimes

    other = build_encoder("stain-texture", options={"grid": False})
    with pytest.raises(DataError, match=r"version 'v2-s3-grid0' vs 'v2'; dim 58 vs 70"):
        extract_slides(slides, out, other)
    with pytest.raises(DataError, match="version"):
        load_bags(out, ["A"], other.contract)
    with pytest.raises(DataError, match=r"1 of 2 slide\(s\) have no features, e.g. \['C'\]"):
        load_bags(out, ["A", "C"])
    with pytest.raises(DataError, match=r"min_tissue 0\.5 vs 0\.3"):
        extract_slides(slides, out, stain_enc, min_tissue=0.3)
    res = extract_slides({"A": slides["A"]}, out, other, overwrite=True)
    assert res[0].status == "done" and read_contract(feature_file(out, "A")) == other.contract


def test_extract_slides_records_failures(tmp_path: Path, canvas, stain_enc, openslide_fixtures):
    slides = {
        "bad": openslide_fixtures / "unopenable.tiff",
        "good": write_aperio(tmp_path / "good.svs", canvas, mpp=0.5),
    }
    res = extract_slides(slides, tmp_path / "out", stain_enc, on_error="record")
    assert [r.status for r in res] == ["failed", "done"]
    assert "unopenable.tiff" in (res[0].error or "")
    assert stored_slide_ids(tmp_path / "out") == ("good",)


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_training import render_tiny_cohort

    root = tmp_path_factory.mktemp("cohort")
    render_tiny_cohort(root, 3, slide_px=1024)
    return root


def test_extract_cohort_then_cli_resumes(small_cohort: Path, tmp_path: Path, stain_enc) -> None:
    from pathgen_batch.cli.features import features as features_cli
    from pathgen_batch.cohort import load_cohort
    from pathgen_batch.features import extract_cohort

    ids = load_cohort(small_cohort).slide_ids
    out = tmp_path / "feats"
    res = extract_cohort(small_cohort, out, stain_enc, slide_ids=ids[:2])
    assert [r.slide_id for r in res] == ids[:2] and all(r.status == "done" for r in res)
    assert all(r.n_tiles > 0 for r in res)
    args = ["extract", "--cohort", str(small_cohort), "--out", str(out), "--device", "cpu"]
    r = CliRunner().invoke(features_cli, args)
    assert r.exit_code == 0, r.output
    assert f"{ids[0]}: skipped" in r.output and f"{ids[1]}: skipped" in r.output
    assert f"{ids[2]}: " in r.output and "tiles/s" in r.output
    assert "done 1, skipped 2, failed 0" in r.output
    assert stored_slide_ids(out) == tuple(sorted(ids))
    bags = load_bags(out, ids, stain_enc.contract)
    assert all(f.shape[1] == 70 and len(c) == len(f) for c, f in bags.values())
    threads = torch.get_num_threads()
    try:  # two workers (one torch thread each) write the same features
        again = [*args, "--workers", "2", "--overwrite", "--slides", ids[0]]
        r = CliRunner().invoke(features_cli, again)
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(load_bags(out, ids[:1])[ids[0]][1], bags[ids[0]][1], atol=1e-5)

    r = CliRunner().invoke(features_cli, [*args, "--slides", "NOPE"])
    assert isinstance(r.exception, DataError) and "NOPE" in str(r.exception)
    r = CliRunner().invoke(features_cli, [*args, "--encoder", "resnet50-trunc"])
    assert isinstance(r.exception, ConfigError) and "--weights" in str(r.exception)
    r = CliRunner().invoke(features_cli, [*args, "-o", "grid=false"])
    assert isinstance(r.exception, DataError) and "use overwrite" in str(r.exception)


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_encoders_and_help() -> None:
    from pathgen_batch.cli.features import features as features_cli

    runner = CliRunner()
    r = runner.invoke(features_cli, ["encoders"])
    assert r.exit_code == 0, r.output
    for name in ("stain-texture", "resnet50-trunc", "torchscript"):
        assert name in r.output
    assert "dim (required)" in r.output and "--weights PATH (required" in r.output
    for cmd in ([], ["extract"], ["encoders"]):
        r = runner.invoke(features_cli, [*cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output


# -- GPU ----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_encoders_on_cuda_match_cpu(tmp_path: Path, he_png) -> None:
    tiles = np.stack([he_png[i : i + 128, j : j + 128] for i in (0, 400) for j in (0, 400)])
    cpu = build_encoder("stain-texture", options={"tile_px": 128}, device="cpu")
    gpu = build_encoder("stain-texture", options={"tile_px": 128}, device="cuda")
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.encode(tiles), cpu.encode(tiles), atol=2e-3, rtol=1e-3)
    torch.save(_random_resnet(2).state_dict(), tmp_path / "r.pth")
    opts = {"tile_px": 128}
    rc = build_encoder("resnet50-trunc", weights=str(tmp_path / "r.pth"), options=opts)
    rg = build_encoder(
        "resnet50-trunc", weights=str(tmp_path / "r.pth"), options=opts, device="cuda"
    )
    a, b = rc.encode(tiles), rg.encode(tiles)
    assert np.abs(a - b).max() <= 2e-2 * np.abs(a).max()  # TF32 convolutions on the GPU
