"""The conditional denoiser: invariances, input checks, layout, registry and a toy problem."""

from __future__ import annotations

import io
import json

import pytest
import torch

from pathgen_batch.config import to_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models import GeneratorConfig, TranscriptomeDenoiser, build_model
from pathgen_batch.models.diffusion import GaussianDiffusion, NoiseSchedule
from pathgen_batch.models.families import FamilyLayout, family_ids
from pathgen_batch.models.samplers import DDIMSampler, sample_n, tile_batch

D = 8
CFG = GeneratorConfig(feature_dim=D, family_sizes=(2, 3, 1), width=16, depth=2, heads=2, time_dim=8)


def make_model(cfg: GeneratorConfig = CFG, seed: int = 0) -> TranscriptomeDenoiser:
    torch.manual_seed(seed)
    return TranscriptomeDenoiser(cfg).eval()


def inputs(B: int = 3, N: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, CFG.n_genes, generator=g)  # (B, G)
    t = torch.randint(0, 1000, (B,), generator=g)  # (B,)
    feats = torch.randn(B, N, D, generator=g)  # (B, N, D)
    mask = torch.ones(B, N, dtype=torch.bool)  # (B, N)
    return x, t, feats, mask


def test_output_shape_and_dtype() -> None:
    x, t, feats, mask = inputs()
    eps = make_model()(x, t, feats, mask)
    assert eps.shape == x.shape and eps.dtype == torch.float32
    assert bool(torch.isfinite(eps).all())


def test_tile_order_does_not_matter() -> None:
    model = make_model()
    x, t, feats, mask = inputs(N=7)
    mask[1, 5:] = False
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    a = model(x, t, feats, mask)
    b = model(x, t, feats[:, perm], mask[:, perm])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_padding_does_not_affect_outputs() -> None:
    model = make_model()
    x, t, feats, mask = inputs(B=2, N=4)
    alone = model(x, t, feats, mask)
    pad = torch.full((2, 6, D), 1e4)  # absurd values in the padding: they must be ignored
    pad[:, 0] = float("nan")
    pad[:, 1] = float("inf")
    padded = model(
        x, t, torch.cat([feats, pad], 1), torch.cat([mask, torch.zeros(2, 6, dtype=torch.bool)], 1)
    )
    torch.testing.assert_close(alone, padded, rtol=1e-5, atol=1e-6)
    # a short bag batched with a long one gives what it gives on its own
    short = model(x[:1], t[:1], feats[:1, :2], mask[:1, :2])
    mixed_mask = mask.clone()
    mixed_mask[0, 2:] = False
    mixed = model(x, t, feats, mixed_mask)
    torch.testing.assert_close(mixed[:1], short, rtol=1e-5, atol=1e-6)


def test_empty_bag_and_non_finite_tiles_are_clear_errors() -> None:
    model = make_model()
    x, t, feats, mask = inputs()
    mask[2] = False
    with pytest.raises(DataError, match=r"mask: bag\(s\) at batch index \[2\] have no real tile"):
        model(x, t, feats, mask)
    mask[2, 0] = True
    feats[1, 3, 0] = float("nan")
    with pytest.raises(DataError, match=r"feats: bag\(s\) at batch index \[1\] have NaN"):
        model(x, t, feats, mask)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, t, f, m: (x[:, :4], t, f, m), r"x_t: expected shape \(B, G\) = \(\?, 6\)"),
        (lambda x, t, f, m: (x, t, f[..., :5], m), r"feats: expected shape \(B, N, D\)"),
        (lambda x, t, f, m: (x, t, f[:2], m[:2]), r"feats: expected shape .* got \(2, 5, 8\)"),
        (lambda x, t, f, m: (x, t, f, m[:, :3]), r"mask: expected shape \(B, N\) = \(3, 5\)"),
        (lambda x, t, f, m: (x, t, f, m.float()), "mask: expected a bool tensor"),
        (lambda x, t, f, m: (x, t[:2], f, m), r"t: expected shape \(B,\) = \(3\)"),
        (lambda x, t, f, m: (x, t.float(), f, m), "t: expected an integer tensor"),
        (lambda x, t, f, m: (x, t, f.tolist(), m), "feats: expected a torch.Tensor, got list"),
    ],
)
def test_shape_errors_name_the_input(change, message: str) -> None:
    model = make_model()
    with pytest.raises(DataError, match=message):
        model(*change(*inputs()))


def test_sampling_many_samples_per_bag_equals_tiling_the_bag() -> None:
    """denoise() serves n samples of each bag against keys computed once; it must equal a
    forward pass on the bags tiled n times."""
    model = make_model()
    _, _, feats, mask = inputs(B=2, N=6)
    mask[0, 4:] = False
    n = 3
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2 * n, CFG.n_genes, generator=g)  # (B*n, G)
    t = torch.randint(0, 1000, (2 * n,), generator=g)
    memory = model.encode_bag(feats, mask)  # keys and values of the 2 bags, once
    folded = model.denoise(x, t, memory)
    tiled = model(x, t, tile_batch(feats, n), tile_batch(mask, n))
    torch.testing.assert_close(folded, tiled, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="multiple of the 2 bag"):
        model.denoise(x[:5], t[:5], memory)


def test_family_layout_scatters_back_into_gene_order() -> None:
    families = ["b", "a", "b", "c", "a", "b"]  # panel order; family ids by first appearance
    ids = family_ids(families)
    assert ids == (0, 1, 0, 2, 1, 0)
    layout = FamilyLayout((3, 2, 1), ids)
    x = torch.tensor([[10.0, 11.0, 12.0, 13.0, 14.0, 15.0]])
    parts = layout.split(x)
    assert [p.tolist() for p in parts] == [[[10.0, 12.0, 15.0]], [[11.0, 14.0]], [[13.0]]]
    torch.testing.assert_close(layout.merge(parts), x)
    contiguous = FamilyLayout((2, 1))
    assert [p.tolist() for p in contiguous.split(x[:, :3])] == [[[10.0, 11.0]], [[12.0]]]
    with pytest.raises(ConfigError, match=r"genes per family \(3, 2, 1\) differ"):
        FamilyLayout((2, 2, 2), ids)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="not divisible by heads"):
        GeneratorConfig(feature_dim=4, family_sizes=(2,), width=10, heads=4)
    with pytest.raises(ConfigError, match="family_sizes"):
        GeneratorConfig(feature_dim=4, family_sizes=())
    with pytest.raises(ConfigError, match="time_dim"):
        GeneratorConfig(feature_dim=4, family_sizes=(2,), time_dim=7)


def test_registry_round_trip_rebuilds_the_same_model() -> None:
    model = make_model(GeneratorConfig.small(D, (2, 3, 1), (0, 1, 1, 0, 2, 1)))
    cfg_json = json.dumps(to_dict(model.config))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    rebuilt = build_model("generator", json.loads(cfg_json))
    rebuilt.load_state_dict(torch.load(buf, weights_only=True))
    rebuilt.eval()
    assert rebuilt.config == model.config
    x, t, feats, mask = inputs()
    torch.testing.assert_close(rebuilt(x, t, feats, mask), model(x, t, feats, mask))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['widht'\]"):
        build_model("generator", {**json.loads(cfg_json), "widht": 3})


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_paper_scale_parameter_count() -> None:
    """Construction only, on the meta device; the count follows from the architecture."""
    cfg = GeneratorConfig.paper()
    with torch.device("meta"):
        model = TranscriptomeDenoiser(cfg)
    got = sum(p.numel() for p in model.parameters())
    d, D_, T_, G, F_, L = cfg.width, cfg.feature_dim, cfg.time_dim, cfg.n_genes, 6, cfg.depth
    mlp = lambda a, h, b: a * h + h + h * b + b  # noqa: E731
    attn = 4 * d * d + 4 * d  # q, kv (2d), out
    block = 2 * 2 * d + attn + (2 * d + attn + 2 * d + mlp(d, 4 * d, d))  # norms, cross, layer
    expected = (
        sum(mlp(g, d, d) + mlp(d, d, g) for g in cfg.family_sizes)  # family encoders, decoders
        + mlp(T_, d, d)  # timestep MLP
        + D_ * d
        + d  # bag projection
        + L * block
        + 2 * d  # final norm
    )
    assert len(cfg.family_sizes) == F_ and cfg.feature_dim == 1024 and d == 1024
    assert got == expected
    assert 5 * 10**7 < got < 5 * 10**8
    print(f"paper-scale generator: {got:,} parameters, G = {G}")


@pytest.fixture
def one_thread():
    """Tiny matrices gain nothing from intra-op threads, and lose much on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_toy_problem_target_is_recovered_by_training_then_ddim() -> None:
    """x0 = W @ mean(bag) for a fixed W: a few hundred diffusion training steps, then DDIM
    sampling from held-out bags recovers x0 (the mean of 4 samples per bag)."""
    torch.manual_seed(0)
    G = 6
    g = torch.Generator().manual_seed(1)
    W = torch.randn(G, D, generator=g) / D**0.5  # (G, D)

    def bags(B: int):
        n = torch.randint(3, 9, (B,), generator=g)  # real tiles per bag
        mask = torch.arange(8)[None, :] < n[:, None]  # (B, 8)
        z = torch.randn(B, 1, D, generator=g)
        feats = z + 0.5 * torch.randn(B, 8, D, generator=g)  # (B, 8, D)
        feats = torch.where(mask[..., None], feats, torch.full_like(feats, 50.0))
        mean = (feats * mask[..., None]).sum(1) / n[:, None]  # (B, D)
        return feats, mask, mean @ W.T  # x0 (B, G)

    cfg = GeneratorConfig(
        feature_dim=D,
        family_sizes=(3, 3),
        gene_families=(0, 1, 0, 1, 1, 0),
        width=32,
        depth=1,
        heads=2,
        time_dim=32,
    )
    model = TranscriptomeDenoiser(cfg)
    schedule = NoiseSchedule.named("cosine", 1000)
    diffusion = GaussianDiffusion(schedule, "eps")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        feats, mask, x0 = bags(128)
        loss = diffusion.training_loss(
            lambda x, t: model(x, t, feats, mask),  # noqa: B023
            x0,
            generator=g,
            families=model.layout.indices(),
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    feats, mask, x0 = bags(200)
    with torch.no_grad():
        memory = model.encode_bag(feats, mask)
    mean, std = sample_n(
        DDIMSampler(diffusion, steps=20),
        lambda x, t: model.denoise(x, t, memory),
        200,
        G,
        4,
        generator=g,
    )
    per_gene = [torch.corrcoef(torch.stack([mean[:, j], x0[:, j]]))[0, 1].item() for j in range(G)]
    assert min(per_gene) > 0.9, per_gene
    assert (mean - x0).abs().mean().item() < 0.3 * x0.std().item()
    assert std.shape == (200, G)
