"""Foundation-model tile encoders built with timm from local weights files.

Every model here is a small random-weight network of the real architecture family, built with
timm and saved by the test; nothing comes from the network. The full-size recipes are built on
the meta device only, to check their published sizes without allocating them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.features import (
    FeatureContract,
    build_encoder,
    check_weights,
    encoder_for_contract,
    encoder_names,
    read_slide_features,
)
from pathgen_batch.features.timm_encoder import (
    FOUNDATION_MODELS,
    TimmEncoderConfig,
    build_network,
    feature_dim,
    import_timm,
    recipe_for,
)

try:
    import_timm()
    HAVE_TIMM = True
except ConfigError:
    HAVE_TIMM = False
pytestmark = pytest.mark.skipif(
    not HAVE_TIMM, reason="timm is not installed (install the 'encoders' extra: see the Makefile)"
)

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}
# the published sizes: feature dimension and parameters (millions) of each full network
PUBLISHED = {
    "uni": (1024, 303.4),
    "uni2-h": (1536, 681.4),
    "virchow2": (2560, 631.2),
    "h-optimus-0": (1536, 1134.8),
    "h-optimus-1": (1536, 1134.8),
    "prov-gigapath": (1536, 1135.0),
}
GENERIC = {  # timm:<architecture> cases: options beyond the weights
    "timm:vit_small_patch16_224": {"timm_args": {**TINY, "img_size": 32}, "output": "cls+mean"},
    "timm:resnet18": {"timm_args": {"layers": [1, 1, 1, 1]}, "input_px": 32},
}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _tiny_px(name: str) -> int:
    return 32 if name == "prov-gigapath" else 28  # a multiple of the patch size (16 or 14)


def _tiny_options(name: str) -> dict:
    if name in GENERIC:
        return {**IMAGENET, **GENERIC[name]}
    return {"timm_args": TINY, "input_px": _tiny_px(name)}


def _save_random(name: str, path: Path, seed: int = 0) -> torch.nn.Module:
    """A random-weight network of ``name``'s family at tiny width, saved to ``path``."""
    torch.manual_seed(seed)
    cfg = TimmEncoderConfig(weights=str(path), **_tiny_options(name))
    model = build_network(recipe_for(name, cfg), name)
    state = model.state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return model


def _tiles(n: int, px: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_named_recipes_have_the_published_sizes(name: str) -> None:
    """Full width, one and two blocks (cheap to build); the count extrapolates linearly."""
    recipe = recipe_for(name, TimmEncoderConfig(weights="unused"))
    assert recipe.input_px == 224 and recipe.args["img_size"] == 224
    depth = recipe.args.get("depth", 24 if "large" in recipe.architecture else 32)
    if "dinov2" in recipe.architecture and "depth" not in recipe.args:
        depth = 40  # timm's vit_giant_patch14*_dinov2 default
    counts = []
    for d in (1, 2):
        short = recipe_for(name, TimmEncoderConfig(weights="unused", timm_args={"depth": d}))
        try:  # no allocation on the meta device; older timm cannot initialise there
            with torch.device("meta"):
                model = build_network(short, name)
        except ConfigError:
            model = build_network(short, name)
        counts.append(sum(p.numel() for p in model.parameters()))
    dim, millions = PUBLISHED[name]
    assert feature_dim(model, recipe.output) == dim
    total = counts[0] + (depth - 1) * (counts[1] - counts[0])
    assert total / 1e6 == pytest.approx(millions, abs=0.1)


FAST_FAMILIES = ("uni", "uni2-h")  # one .safetensors and one .bin family in the fast tier


@pytest.mark.parametrize(
    "name",
    [
        n if n in FAST_FAMILIES else pytest.param(n, marks=pytest.mark.slow)
        for n in [*PUBLISHED, *GENERIC]
    ],
)
def test_each_family_loads_local_weights_and_is_batch_size_invariant(
    name: str, tmp_path: Path
) -> None:
    suffix = ".safetensors" if name in ("uni", "virchow2", "timm:resnet18") else ".bin"
    path = tmp_path / f"w{suffix}"
    _save_random(name, path)
    enc = build_encoder(name, weights=str(path), options=_tiny_options(name))
    px = enc.tile_px
    tiles = _tiles(7, px)
    whole = enc.encode(tiles)
    assert whole.shape == (7, enc.dim) and whole.dtype == np.float32
    assert np.isfinite(whole).all() and np.ptp(whole, axis=0).max() > 0  # tiles differ
    ones = np.concatenate([enc.encode(tiles[i : i + 1]) for i in range(7)])
    parts = np.concatenate([enc.encode(tiles[:3]), enc.encode(tiles[3:])])
    np.testing.assert_array_equal(ones, whole)
    np.testing.assert_array_equal(parts, whole)
    c = enc.contract
    recipe = json.loads(c.recipe)
    assert c.encoder == name and c.version.startswith("sha256:") and c.mpp == 0.5
    assert recipe["input_px"] == px and recipe["output"] in ("cls", "cls+mean", "pooled")
    again = encoder_for_contract(c, weights=str(path))
    assert again.contract == c
    np.testing.assert_array_equal(again.encode(tiles), whole)


def test_output_rules_are_the_models_own(tmp_path: Path) -> None:
    """virchow2: class token + mean of the patch tokens (registers left out); uni: the class
    token, which is what timm's own pooled head returns."""
    v = _save_random("virchow2", tmp_path / "v.bin")
    enc = build_encoder(
        "virchow2", weights=str(tmp_path / "v.bin"), options=_tiny_options("virchow2")
    )
    tiles = _tiles(3, 28)
    x = (
        torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    ) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = v.forward_features(x)  # (3, 1 + 4 + 4, 32)
    assert tokens.shape[1] == 1 + 4 + (28 // 14) ** 2
    want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=-1).numpy()
    np.testing.assert_allclose(enc.encode(tiles), want, rtol=1e-5, atol=1e-6)
    u = _save_random("uni", tmp_path / "u.bin")
    enc = build_encoder("uni", weights=str(tmp_path / "u.bin"), options=_tiny_options("uni"))
    with torch.no_grad():
        want = u(x).numpy()
    np.testing.assert_allclose(enc.encode(tiles), want, rtol=1e-5, atol=1e-6)


def test_tiles_larger_than_the_input_are_resized_and_recorded(tmp_path: Path) -> None:
    _save_random("uni", tmp_path / "u.bin")
    opts = {**_tiny_options("uni"), "tile_px": 56}
    enc = build_encoder("uni", weights=str(tmp_path / "u.bin"), options=opts)
    assert (enc.tile_px, json.loads(enc.contract.recipe)["input_px"]) == (56, 28)
    assert enc.encode(_tiles(2, 56)).shape == (2, 32)
    with pytest.raises(ConfigError, match=r"shape \(B, 56, 56, 3\)"):
        enc.encode(_tiles(2, 28))


def test_bad_weight_files_give_one_line_errors_naming_the_problem(tmp_path: Path) -> None:
    opts = _tiny_options("virchow2")
    _save_random("uni", tmp_path / "uni.bin")
    with pytest.raises(ConfigError) as ei:  # another architecture's weights
        build_encoder("virchow2", weights=str(tmp_path / "uni.bin"), options=opts)
    msg = str(ei.value)
    assert "missing key(s)" in msg and "reg_token" in msg and "\n" not in msg
    _save_random("virchow2", tmp_path / "v.safetensors")
    wide = {**opts, "timm_args": {**TINY, "embed_dim": 48}}  # mis-shaped
    with pytest.raises(
        ConfigError,
        match=r"mismatch\(es\): blocks.0.attn.proj.bias: expected shape \(48,\), got \(32,\)",
    ):
        build_encoder("virchow2", weights=str(tmp_path / "v.safetensors"), options=wide)
    state = torch.load(tmp_path / "uni.bin", weights_only=True)
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(ConfigError, match=r"1 unexpected key\(s\) \['extra.weight'\]"):
        build_encoder("uni", weights=str(tmp_path / "extra.bin"), options=_tiny_options("uni"))
    for good in (tmp_path / "uni.bin", tmp_path / "v.safetensors"):  # truncated files
        cut = tmp_path / f"cut{good.suffix}"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(ConfigError) as ei:
            build_encoder("uni", weights=str(cut), options=_tiny_options("uni"))
        assert str(cut) in str(ei.value) and "\n" not in str(ei.value)
    model = _save_random("uni", tmp_path / "u2.bin")
    torch.save(model, tmp_path / "pickled.bin")  # a whole pickled module
    with pytest.raises(ConfigError, match="refused, the file holds Python objects") as ei:
        build_encoder("uni", weights=str(tmp_path / "pickled.bin"), options=_tiny_options("uni"))
    assert "\n" not in str(ei.value)
    torch.save({"model": state}, tmp_path / "nested.bin")
    with pytest.raises(ConfigError, match=r"expected a state dict .* keys \['model'\]"):
        build_encoder("uni", weights=str(tmp_path / "nested.bin"), options=_tiny_options("uni"))


def test_options_and_names_are_checked(tmp_path: Path) -> None:
    assert set(PUBLISHED) == set(FOUNDATION_MODELS) <= set(encoder_names())
    assert "timm:<architecture>" in encoder_names()
    _save_random("timm:resnet18", tmp_path / "r.bin")
    with pytest.raises(ConfigError, match="declare the normalisation"):
        build_encoder("timm:resnet18", weights=str(tmp_path / "r.bin"))
    with pytest.raises(ConfigError, match="timm cannot build 'no_such_net'"):
        build_encoder("timm:no_such_net", weights=str(tmp_path / "r.bin"), options=IMAGENET)
    with pytest.raises(ConfigError, match="needs a transformer with a class token"):
        opts = {**IMAGENET, "output": "cls"}
        build_encoder("timm:resnet18", weights=str(tmp_path / "r.bin"), options=opts)
    with pytest.raises(ConfigError, match="needs a weights file"):
        build_encoder("uni")
    with pytest.raises(ConfigError, match="output must be one of"):
        build_encoder("uni", weights=str(tmp_path / "r.bin"), options={"output": "mean"})


def test_contract_recipe_guards_against_other_features(tmp_path: Path) -> None:
    _save_random("h-optimus-0", tmp_path / "h.bin")
    opts = _tiny_options("h-optimus-0")
    enc = build_encoder("h-optimus-0", weights=str(tmp_path / "h.bin"), options=opts)
    recipe = json.loads(enc.contract.recipe)
    assert recipe["mean"] == [0.707223, 0.578729, 0.703617]
    assert recipe["architecture"] == "vit_giant_patch14_reg4_dinov2"
    same = FeatureContract.from_json(enc.contract.to_json())
    assert same == enc.contract and same.digest == enc.contract.digest
    other = enc.contract.to_dict()
    other["recipe"] = json.dumps(
        {**recipe, "std": [1, 1, 1]}, sort_keys=True, separators=(",", ":")
    )
    with pytest.raises(
        DataError, match=r"recipe std \[0.211883, 0.230117, 0.177517\] vs \[1, 1, 1\]"
    ):
        enc.contract.check_matches(FeatureContract.from_dict(other))
    _save_random("h-optimus-0", tmp_path / "other.bin", seed=5)  # same recipe, other weights
    with pytest.raises(DataError, match="version"):
        encoder_for_contract(enc.contract, weights=str(tmp_path / "other.bin"))
    check_weights(enc.contract, str(tmp_path / "h.bin"))  # by digest, nothing built
    with pytest.raises(DataError, match="not the weights of the feature contract h-optimus-0@"):
        check_weights(enc.contract, str(tmp_path / "other.bin"))
    old = FeatureContract("stain-texture", "v1", 70, 224, 0.5)  # no recipe: digest as before
    assert "recipe" not in old.to_dict()
    with pytest.raises(ConfigError, match="takes no weights file"):
        check_weights(old, str(tmp_path / "h.bin"))
    with pytest.raises(ConfigError, match="canonical JSON"):
        FeatureContract("uni", "sha256:00", 4, 224, 0.5, recipe='{"b": 1, "a": 2}')


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_training import render_tiny_cohort

    root = tmp_path_factory.mktemp("cohort")
    render_tiny_cohort(root, 2)
    return root


def test_cli_extracts_features_with_a_named_encoder(tiny_cohort: Path, tmp_path: Path) -> None:
    from pathgen_batch.cli.features import features as features_cli

    weights = tmp_path / "pytorch_model.bin"
    _save_random("uni", weights)
    out = tmp_path / "feats"
    args = ["extract", "--cohort", str(tiny_cohort), "--out", str(out), "--device", "cpu"]
    opts = ["-o", 'timm_args={"embed_dim":32,"depth":1,"num_heads":2}', "-o", "input_px=28"]
    r = CliRunner().invoke(
        features_cli, [*args, "--encoder", "uni", "--weights", str(weights), *opts]
    )
    assert r.exit_code == 0, r.output
    assert "encoder uni@sha256:" in r.output and "failed 0" in r.output
    sf = read_slide_features(next(out.glob("*.parquet")))
    assert sf.contract.encoder == "uni" and sf.feats.shape[1] == 32 and len(sf.feats) > 0
    r = CliRunner().invoke(features_cli, [*args, "--encoder", "no-such-encoder"])
    assert isinstance(r.exception, ConfigError) and "unknown name 'no-such-encoder'" in str(
        r.exception
    )
    r = CliRunner().invoke(features_cli, ["encoders"])
    assert "virchow2: Virchow2" in r.output and "timm:<architecture>" in r.output


def test_batch_size_from_memory_is_the_largest_power_of_two_that_fits() -> None:
    from pathgen_batch.features.encoder import CPU_BATCH, MAX_BATCH, batch_for_memory

    gib = 2**30
    assert batch_for_memory(10 * gib, 0.1 * gib) == 32  # half of 10 GiB holds 50 tiles
    assert batch_for_memory(10 * gib, 0.1 * gib, share=1.0) == 64
    assert batch_for_memory(140 * gib, 1e6) == MAX_BATCH  # capped
    assert batch_for_memory(gib, 4 * gib) == 1  # never zero
    with pytest.raises(ConfigError, match="share must be in"):
        batch_for_memory(gib, gib, share=0)
    enc = build_encoder("stain-texture", options={"tile_px": 64, "scales": 2})
    assert enc.auto_batch_size() == CPU_BATCH  # the CPU default


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_batch_size_on_cuda_fits_and_encodes(tmp_path: Path) -> None:
    _save_random("uni2-h", tmp_path / "w.bin")
    gpu = build_encoder(
        "uni2-h", weights=str(tmp_path / "w.bin"), options=_tiny_options("uni2-h"), device="cuda"
    )
    b = gpu.auto_batch_size()
    assert b >= 8 and b & (b - 1) == 0, b  # a tiny ViT: many tiles fit, a power of two
    tiles = _tiles(b, 28)
    assert gpu.encode(tiles).shape == (b, gpu.dim)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_timm_encoder_on_cuda_matches_cpu_at_bf16(tmp_path: Path) -> None:
    _save_random("uni2-h", tmp_path / "w.bin")
    opts = _tiny_options("uni2-h")
    cpu = build_encoder("uni2-h", weights=str(tmp_path / "w.bin"), options=opts)
    gpu = build_encoder("uni2-h", weights=str(tmp_path / "w.bin"), options=opts, device="cuda")
    tiles = _tiles(16, 28)
    a, b = cpu.encode(tiles), gpu.encode(tiles)
    assert gpu.device.type == "cuda" and b.dtype == np.float32
    assert np.abs(a - b).max() <= 5e-2 * np.abs(a).max()  # bf16 autocast
    parts = np.concatenate([gpu.encode(tiles[:5]), gpu.encode(tiles[5:])])
    np.testing.assert_allclose(parts, b, rtol=1e-2, atol=1e-2 * np.abs(b).max())


@pytest.mark.slow
def test_registered_foundation_encoder_is_found_by_the_models_contract(
    tmp_path: Path, no_mlflow_env: None
) -> None:
    import mlflow

    from pathgen_batch.registry import (
        RegistryConfig,
        fetch_encoder,
        find_encoder,
        open_store,
        register_encoder,
    )

    store = open_store(RegistryConfig(workspace=str(tmp_path / "ws")))
    weights = tmp_path / "model.safetensors"
    _save_random("virchow2", weights)
    opts = _tiny_options("virchow2")
    local = build_encoder("virchow2", weights=str(weights), options=opts)
    assert find_encoder(store, local.contract) is None  # nothing registered yet
    reg = register_encoder(store, weights, encoder="virchow2", options=opts)
    found = find_encoder(store, local.contract)
    assert found is not None and found.pinned == reg.model_uri and found.contract == local.contract
    tiles = _tiles(3, 28)
    again = encoder_for_contract(found.contract, weights=found.path)
    np.testing.assert_array_equal(again.encode(tiles), local.encode(tiles))
    with store.active():
        model = mlflow.pyfunc.load_model(reg.model_uri)
    np.testing.assert_allclose(model.predict(tiles), local.encode(tiles), rtol=1e-6, atol=1e-6)
    _save_random("virchow2", tmp_path / "other.bin", seed=3)
    other = build_encoder("virchow2", weights=str(tmp_path / "other.bin"), options=opts)
    assert find_encoder(store, other.contract) is None  # same recipe, other weights
    with pytest.raises(DataError, match=r"vs pathgen-encoder v1 mismatch: version"):
        fetch_encoder(store, "pathgen-encoder", "1", other.contract)


def _have_transformers() -> bool:
    from pathgen_batch.features.hf_encoder import import_transformers

    try:
        import_transformers()
    except ConfigError:
        return False
    return True


@pytest.mark.skipif(not _have_transformers(), reason="transformers is not installed")
@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_phikon_v2_is_built_by_transformers_from_its_folder(tmp_path: Path) -> None:
    from pathgen_batch.features.hf_encoder import import_transformers

    tf = import_transformers()
    torch.manual_seed(0)
    cfg = tf.Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=56, patch_size=14
    )
    net = tf.Dinov2Model(cfg).eval()
    net.save_pretrained(tmp_path / "phikon")  # model.safetensors + config.json
    weights = tmp_path / "phikon" / "model.safetensors"
    enc = build_encoder("phikon-v2", weights=str(weights), options={"input_px": 28})
    tiles = _tiles(5, 28)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1)) / torch.tensor(IMAGENET["std"]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        want = net(pixel_values=x).last_hidden_state[:, 0].numpy()
    got = enc.encode(tiles)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        np.concatenate([enc.encode(tiles[:2]), enc.encode(tiles[2:])]), got
    )
    recipe = json.loads(enc.contract.recipe)
    assert (
        recipe["architecture"] == "transformers:Dinov2Model" and recipe["args"]["hidden_size"] == 32
    )
    from safetensors.torch import load_file, save_file

    legacy = {  # the key names of the file as published (transformers 4)
        "attention.q_proj": "attention.attention.query",
        "attention.k_proj": "attention.attention.key",
        "attention.v_proj": "attention.attention.value",
        "attention.o_proj": "attention.output.dense",
    }
    old_names = {}
    for k, v in load_file(str(weights)).items():
        for new, old in legacy.items():
            k = k.replace(new, old)
        old_names[k] = v
    (tmp_path / "published").mkdir()
    save_file(old_names, str(tmp_path / "published" / "model.safetensors"), {"format": "pt"})
    (tmp_path / "published" / "config.json").write_text(cfg.to_json_string())
    published = build_encoder(
        "phikon-v2",
        weights=str(tmp_path / "published" / "model.safetensors"),
        options={"input_px": 28},
    )
    np.testing.assert_array_equal(published.encode(tiles), got)
    moved = tmp_path / "weights.safetensors"  # as a registry bundle holds it: no config beside
    moved.write_bytes(weights.read_bytes())
    again = encoder_for_contract(enc.contract, weights=str(moved))
    np.testing.assert_array_equal(again.encode(tiles), got)
    with pytest.raises(ConfigError, match=r"config\.json"):
        build_encoder("phikon-v2", weights=str(moved))
    torch.save(net.state_dict(), tmp_path / "phikon" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="safetensors weights only"):
        build_encoder("phikon-v2", weights=str(tmp_path / "phikon" / "pytorch_model.bin"))
    wide = tf.Dinov2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=2)
    (tmp_path / "wide.json").write_text(wide.to_json_string())
    with pytest.raises(ConfigError, match=r"mis-shaped key\(s\) \['embeddings.cls_token'"):
        build_encoder(
            "phikon-v2", weights=str(weights), options={"config": str(tmp_path / "wide.json")}
        )


def test_weights_in_object_storage_are_fetched_once_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server, s3_bucket: str
) -> None:
    """A cluster without a shared file system: weights given as s3:// are fetched into each
    machine's cache once and give the same contract and features as the local file; the
    scorer's reference keeps the URI so that every node fetches them itself."""
    from pathgen_batch.batch.model_refs import (
        EncoderRef,
        RegistryAccess,
        local_encoder_weights,
        resolve_encoder,
    )
    from pathgen_batch.storage import StorageError

    cache = tmp_path / "cache"
    monkeypatch.setenv("PATHGEN_WEIGHTS_CACHE", str(cache))
    weights = tmp_path / "model.safetensors"
    _save_random("uni", weights)
    key = "encoders/uni/model.safetensors"
    s3_server.client().upload_file(str(weights), s3_bucket, key)
    uri = f"s3://{s3_bucket}/{key}"
    local = build_encoder("uni", weights=str(weights), options=_tiny_options("uni"))
    remote = build_encoder("uni", weights=uri, options=_tiny_options("uni"))
    assert remote.contract == local.contract
    tiles = _tiles(3, local.tile_px)
    np.testing.assert_array_equal(remote.encode(tiles), local.encode(tiles))
    (copy,) = cache.iterdir()  # one cached file, its suffix kept, nothing partial left
    assert copy.suffix == ".safetensors" and copy.read_bytes() == weights.read_bytes()
    assert key not in str(copy)  # the object key never becomes a local path
    before = copy.stat().st_mtime_ns
    access = RegistryAccess(workspace=str(tmp_path / "ws"))
    ref = resolve_encoder(uri, local.contract, access)
    assert ref == EncoderRef(path=uri)
    assert local_encoder_weights(ref, local.contract, access) == uri
    assert encoder_for_contract(local.contract, weights=uri).contract == local.contract
    assert copy.stat().st_mtime_ns == before  # reused, not fetched again
    with pytest.raises(StorageError, match=r"missing\.bin"):
        build_encoder("uni", weights=f"s3://{s3_bucket}/missing.bin", options=_tiny_options("uni"))
    with pytest.raises(ConfigError, match=r"not-here\.bin.*shared file system"):
        encoder_for_contract(local.contract, weights=str(tmp_path / "not-here.bin"))


@pytest.mark.slow
def test_scorer_resolves_the_encoder_of_the_models_contract(
    tmp_path: Path, no_mlflow_env: None
) -> None:
    from pathgen_batch.batch.model_refs import (
        EncoderRef,
        RegistryAccess,
        local_encoder_weights,
        resolve_encoder,
    )
    from pathgen_batch.registry import RegistryConfig, open_store, register_encoder

    access = RegistryAccess(workspace=str(tmp_path / "ws"))
    weights = tmp_path / "pytorch_model.bin"
    _save_random("uni", weights)
    contract = build_encoder("uni", weights=str(weights), options=_tiny_options("uni")).contract
    with pytest.raises(ConfigError, match=r"trained on features of uni@sha256:.*--encoder-weights"):
        resolve_encoder(None, contract, access)  # nothing given, nothing registered
    local = resolve_encoder(str(weights), contract, access)
    assert local == EncoderRef(path=str(weights.resolve()))
    _save_random("uni", tmp_path / "other.bin", seed=9)
    with pytest.raises(DataError, match="not the weights of the feature contract"):
        resolve_encoder(str(tmp_path / "other.bin"), contract, access)
    store = open_store(RegistryConfig(workspace=access.workspace))
    reg = register_encoder(store, weights, encoder="uni", options=_tiny_options("uni"))
    found = resolve_encoder(None, contract, access)  # the registered version of the contract
    assert found.pinned == reg.model_uri and found.path is not None
    assert resolve_encoder("models:/pathgen-encoder/1", contract, access).pinned == reg.model_uri
    gone = EncoderRef(path=str(tmp_path / "not-on-this-node.bin"), pinned=reg.model_uri)
    assert local_encoder_weights(gone, contract, access) == found.path  # fetched again
    enc = encoder_for_contract(contract, weights=local_encoder_weights(found, contract, access))
    assert enc.contract == contract
    stain = FeatureContract("stain-texture", "v1", 70, 224, 0.5)
    assert resolve_encoder(None, stain, access) == EncoderRef()
    with pytest.raises(ConfigError, match="takes no weights"):
        resolve_encoder(str(weights), stain, access)
