"""Diffusion: schedules, forward process, loss and samplers against closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pathgen_batch.config import from_dict, to_dict
from pathgen_batch.errors import ConfigError, DataError
from pathgen_batch.models.diffusion import (
    DiffusionConfig,
    GaussianDiffusion,
    NoiseSchedule,
    SamplerConfig,
    cosine_betas,
    linear_betas,
)
from pathgen_batch.models.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    build_sampler,
    check_sampler,
    posterior_mean,
    sample_n,
    tile_batch,
)

T = 1000


def hand_abar(T: int = T) -> np.ndarray:
    """abar_t of the default linear schedule, computed independently in numpy float64."""
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(T) / (T - 1)
    return np.cumprod(1.0 - betas)


def gaussian_eps_fn(mu: float, s: float, abar: np.ndarray):
    """The exact E[eps | x_t] when x0 ~ N(mu, s^2) elementwise.

    x_t = sqrt(a) x0 + sqrt(1-a) eps is Gaussian, so E[eps | x_t] =
    sqrt(1-a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a).
    """
    a_all = torch.tensor(abar, dtype=torch.float64)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = a_all[t].to(x.dtype)[:, None]  # (B, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return fn


# --------------------------------------------------------------------------------- schedules


def test_linear_schedule_endpoints_and_spacing() -> None:
    b = linear_betas()
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert b[-1].item() == pytest.approx(0.02, abs=1e-15)
    steps = torch.diff(b)
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / 999), atol=1e-15)


def test_cosine_schedule_matches_nichol_dhariwal() -> None:
    s = 0.008
    b = cosine_betas(T, s=s)

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    assert b[0].item() == pytest.approx(1 - f(1) / f(0), rel=1e-12)
    abar = torch.cumprod(1 - b, dim=0)
    for t in (0, 250, 500, 900):  # abar after step t is f(t+1)/f(0) wherever beta is unclipped
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert b[-1].item() == pytest.approx(0.999)  # f(T) = 0: clipped at max_beta
    assert bool((b > 0).all())


def test_schedule_rejects_bad_betas() -> None:
    with pytest.raises(ConfigError, match="beta"):
        NoiseSchedule(torch.tensor([0.1, 0.0]))
    with pytest.raises(ConfigError, match="beta_start"):
        linear_betas(10, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ConfigError, match="schedule"):
        NoiseSchedule.named("quadratic")


def test_configs_round_trip_json() -> None:
    for cfg in (DiffusionConfig(schedule="cosine", num_timesteps=50), SamplerConfig("ddpm")):
        back = from_dict(type(cfg), json.loads(json.dumps(to_dict(cfg))))
        assert back == cfg
    sched = NoiseSchedule.from_config(DiffusionConfig(schedule="cosine", num_timesteps=50))
    assert torch.equal(sched.betas, cosine_betas(50))
    with pytest.raises(ConfigError, match="schedule"):
        from_dict(DiffusionConfig, {"schedule": "sigmoid"})


# ------------------------------------------------------------------------- forward process


def test_add_noise_closed_form_and_moments() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    abar = hand_abar()
    x0 = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)  # (1, 3)
    for t in (0, 100, 999):
        tt = torch.tensor([t])
        mean = diff.add_noise(x0, torch.zeros_like(x0), tt)
        np.testing.assert_allclose(mean.numpy(), math.sqrt(abar[t]) * x0.numpy(), rtol=1e-12)
        # statistics over many noise draws: mean sqrt(abar) x0, variance 1 - abar
        g = torch.Generator().manual_seed(t)
        n = 20000
        noise = torch.randn(n, 3, generator=g, dtype=torch.float64)
        xt = diff.add_noise(x0.expand(n, 3), noise, tt.expand(n))
        np.testing.assert_allclose(
            xt.mean(0).numpy(), math.sqrt(abar[t]) * x0[0].numpy(), atol=0.03
        )
        np.testing.assert_allclose(xt.var(0).numpy(), 1 - abar[t], rtol=0.05, atol=1e-5)


def test_posterior_mean_variance_match_ddpm_formulas() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    betas = 1e-4 + (0.02 - 1e-4) * np.arange(T) / (T - 1)
    abar = np.cumprod(1 - betas)
    g = torch.Generator().manual_seed(0)
    ts = [0, 1, 17, 500, 999]
    x0 = torch.randn(len(ts), 4, generator=g, dtype=torch.float64)
    xt = torch.randn(len(ts), 4, generator=g, dtype=torch.float64)
    mean, var = diff.q_posterior_mean_variance(x0, xt, torch.tensor(ts))
    for i, t in enumerate(ts):
        a_prev = abar[t - 1] if t > 0 else 1.0
        c0 = betas[t] * math.sqrt(a_prev) / (1 - abar[t])
        ct = (1 - a_prev) * math.sqrt(1 - betas[t]) / (1 - abar[t])
        v = betas[t] * (1 - a_prev) / (1 - abar[t])
        np.testing.assert_allclose(
            mean[i].numpy(), c0 * x0[i].numpy() + ct * xt[i].numpy(), rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(var[i].numpy(), v, rtol=1e-10, atol=1e-15)
    assert float(var[0].abs().max()) == 0.0  # no noise is added at the last reverse step


def test_predict_x0_inverts_add_noise() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 7, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 7, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 300, 700, 999])
    xt = diff.add_noise(x0, eps, t)
    torch.testing.assert_close(diff.predict_x0_from_eps(xt, t, eps), x0, rtol=1e-9, atol=1e-9)


def test_forward_process_rejects_bad_inputs() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    x0 = torch.zeros(2, 3)
    with pytest.raises(DataError, match=r"t: expected timesteps in \[0, 1000\)"):
        diff.add_noise(x0, x0, torch.tensor([0, 1000]))
    with pytest.raises(DataError, match=r"t: expected shape \(B,\)"):
        diff.add_noise(x0, x0, torch.tensor([0]))
    with pytest.raises(DataError, match="integer"):
        diff.add_noise(x0, x0, torch.tensor([0.0, 1.0]))
    with pytest.raises(DataError, match="noise"):
        diff.add_noise(x0, torch.zeros(2, 4), torch.tensor([0, 1]))


def test_v_prediction_identity_closed_form() -> None:
    """v = sqrt(a) eps - sqrt(1 - a) x0 at x_t = sqrt(a) x0 + sqrt(1 - a) eps, and back:
    eps = sqrt(1 - a) x_t + sqrt(a) v; by hand with numpy's abar."""
    abar = hand_abar()
    rng = np.random.default_rng(4)
    x0, eps = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    ts = [0, 10, 300, 700, 999]
    a = abar[ts][:, None]  # (5, 1)
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    t = torch.tensor(ts)
    diff_v = GaussianDiffusion(NoiseSchedule(linear_betas()), "v")
    got_v = diff_v.velocity(torch.from_numpy(x0), torch.from_numpy(eps), t)
    np.testing.assert_allclose(got_v.numpy(), v, rtol=1e-10, atol=1e-12)
    got_eps = diff_v.eps(torch.from_numpy(v), torch.from_numpy(x_t), t)
    np.testing.assert_allclose(got_eps.numpy(), eps, rtol=1e-9, atol=1e-9)
    # an eps process reads the output as the noise itself
    diff_eps = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    out = torch.from_numpy(v)
    assert torch.equal(diff_eps.eps(out, torch.from_numpy(x_t), t), out)


def test_prediction_is_part_of_the_process_config() -> None:
    cfg = DiffusionConfig(num_timesteps=50, prediction="eps")
    assert from_dict(DiffusionConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert GaussianDiffusion.from_config(cfg).prediction == "eps"
    assert DiffusionConfig().prediction == "v"
    with pytest.raises(ConfigError, match=r"prediction: expected one of \['eps', 'v'\]"):
        from_dict(DiffusionConfig, {"prediction": "x0"})
    with pytest.raises(ConfigError, match="prediction"):
        DiffusionConfig(prediction="x0")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prediction"):
        GaussianDiffusion(NoiseSchedule(linear_betas(10)), "x0")


# ------------------------------------------------------------------------------------ loss


def test_training_loss_is_mean_of_l1_and_mse_per_family() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    x0 = torch.zeros(2, 4)
    noise = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]])
    t = torch.tensor([3, 900])

    def model_fn(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)  # prediction 1 everywhere: error = 1 - noise

    # errors: [[0, 3, 0.5, -2], [1, 0, 2, -1]]
    l1_all = (0 + 3 + 0.5 + 2 + 1 + 0 + 2 + 1) / 8
    mse_all = (0 + 9 + 0.25 + 4 + 1 + 0 + 4 + 1) / 8
    got = diff.training_loss(model_fn, x0, t=t, noise=noise)
    assert got.item() == pytest.approx(0.5 * (l1_all + mse_all))

    fam_a, fam_b = torch.tensor([0]), torch.tensor([1, 2, 3])  # sizes 1 and 3
    loss_a = 0.5 * ((0 + 1) / 2 + (0 + 1) / 2)
    loss_b = 0.5 * ((3 + 0.5 + 2 + 0 + 2 + 1) / 6 + (9 + 0.25 + 4 + 0 + 4 + 1) / 6)
    got = diff.training_loss(model_fn, x0, t=t, noise=noise, families=[fam_a, fam_b])
    assert got.item() == pytest.approx(0.5 * (loss_a + loss_b))


def test_training_loss_draws_t_and_noise_from_the_generator() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    seen: list[torch.Tensor] = []

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return torch.zeros_like(x)

    x0 = torch.zeros(64, 3)
    a = diff.training_loss(model_fn, x0, generator=torch.Generator().manual_seed(5))
    b = diff.training_loss(model_fn, x0, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item()
    assert torch.equal(seen[0], seen[1])
    assert seen[0].dtype == torch.long and int(seen[0].min()) >= 0 and int(seen[0].max()) < T
    with pytest.raises(DataError, match="model output"):
        diff.training_loss(lambda x, t: x[:, :2], x0)


def test_training_loss_reads_the_output_as_the_process_prediction() -> None:
    """A network that outputs the exact velocity has zero loss under a v process; read as a
    noise prediction the same output is wrong."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, 100, 400, 800, 999])
    diff_v = GaussianDiffusion(NoiseSchedule(linear_betas()), "v")
    v_true = diff_v.velocity(x0, noise, t)
    assert diff_v.training_loss(lambda x, tt: v_true, x0, t=t, noise=noise).item() < 1e-12
    diff_eps = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    assert diff_eps.training_loss(lambda x, tt: v_true, x0, t=t, noise=noise).item() > 0.1


# -------------------------------------------------------------------------------- samplers


def test_ddim_timesteps() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    assert DDIMSampler(diff, steps=10).timesteps == [
        900,
        800,
        700,
        600,
        500,
        400,
        300,
        200,
        100,
        0,
    ]
    assert DDIMSampler(diff, steps=T).timesteps == list(range(T - 1, -1, -1))
    with pytest.raises(ConfigError, match=r"steps: expected an integer in \[1, 1000\]"):
        DDIMSampler(diff, steps=1001)
    with pytest.raises(ConfigError, match="eta"):
        DDIMSampler(diff, steps=10, eta=1.5)


def test_ddim_eta0_is_deterministic_given_the_start() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    eps_fn = gaussian_eps_fn(1.0, 0.5, hand_abar())
    x_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    s = DDIMSampler(diff, steps=25, eta=0.0)
    a = s.sample(eps_fn, (8, 3), generator=torch.Generator().manual_seed(1), x_T=x_T)
    b = s.sample(eps_fn, (8, 3), generator=torch.Generator().manual_seed(2), x_T=x_T)
    assert torch.equal(a, b)
    # with eta > 0 fresh noise enters every step, so seeds matter
    s1 = DDIMSampler(diff, steps=25, eta=1.0)
    c = s1.sample(eps_fn, (8, 3), generator=torch.Generator().manual_seed(1), x_T=x_T)
    d = s1.sample(eps_fn, (8, 3), generator=torch.Generator().manual_seed(2), x_T=x_T)
    assert not torch.allclose(c, d)


def test_ddim_all_steps_eta1_is_ancestral_ddpm() -> None:
    """With steps = T and eta = 1, DDIM's update equals DDPM's (same mean, sigma^2 = posterior
    variance), so the same noise draws give the same path."""
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    eps_fn = gaussian_eps_fn(1.5, 0.5, hand_abar())
    shape = (16, 2)
    a = DDPMSampler(diff).sample(
        eps_fn, shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    b = DDIMSampler(diff, steps=T, eta=1.0).sample(
        eps_fn, shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "sampler",
    [
        lambda s: DDPMSampler(s),
        lambda s: DDIMSampler(s, steps=T, eta=1.0),
        lambda s: DDIMSampler(s, steps=T, eta=0.0),
    ],
    ids=["ddpm", "ddim-T-eta1", "ddim-T-eta0"],
)
def test_samplers_recover_a_gaussian_data_distribution(sampler) -> None:
    mu, sd = 1.5, 0.5
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    eps_fn = gaussian_eps_fn(mu, sd, hand_abar())
    x = sampler(diff).sample(eps_fn, (2000, 1), generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(mu, abs=0.04)
    assert x.std().item() == pytest.approx(sd, abs=0.04)


@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_eta0_with_exact_eps_is_the_affine_map_computed_by_hand(steps: int) -> None:
    """For x0 ~ N(mu, s^2) the exact eps makes each DDIM step affine. In posterior-mean form,
    with v = a s^2 + 1 - a:  x_prev = sqrt(a') mu + k (x - sqrt(a) mu),
    k = (sqrt(a' a) s^2 + sqrt((1 - a')(1 - a))) / v.  The product of the k is the slope."""
    mu, sd = 1.5, 0.5
    abar = hand_abar()
    ts = list(range(0, T, T // steps))[::-1]
    slope, offset = 1.0, 0.0
    for i, t in enumerate(ts):
        a, ap = abar[t], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        k = (math.sqrt(ap * a) * sd**2 + math.sqrt((1 - ap) * (1 - a))) / (a * sd**2 + 1 - a)
        slope, offset = k * slope, math.sqrt(ap) * mu + k * (offset - math.sqrt(a) * mu)
    sampler = DDIMSampler(
        GaussianDiffusion(NoiseSchedule(linear_betas()), "eps"), steps=steps, eta=0.0
    )
    x_T = torch.tensor([[0.0], [1.0], [-2.0]], dtype=torch.float64)
    out = sampler.sample(gaussian_eps_fn(mu, sd, abar), (3, 1), x_T=x_T)
    expected = torch.tensor([[offset], [offset + slope], [offset - 2 * slope]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # deterministic DDIM with few steps under-disperses: slope < 1 even with the exact eps
    assert slope < 1.0


@pytest.mark.parametrize("steps", [10, 50])
def test_posterior_mean_is_the_gaussian_mean(steps: int) -> None:
    """For x0 ~ N(mu, s^2) each DDIM step maps sqrt(a) mu + d to sqrt(a') mu + k d; from
    x_T = 0 the offset d starts at -sqrt(abar_top) mu and shrinks, so the estimate is mu up to
    sqrt(abar_top) |mu| (about 0.006 mu here), with no sampling noise at all."""
    mu, sd = 1.5, 0.5
    abar = hand_abar()
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    out = posterior_mean(diff, gaussian_eps_fn(mu, sd, abar), (4, 3), steps=steps)
    top = (steps - 1) * (T // steps)
    assert out.shape == (4, 3) and torch.all(out == out[0, 0])
    assert abs(out[0, 0].item() - mu) <= math.sqrt(abar[top]) * mu + 1e-6
    assert abs(out[0, 0].item() - mu) < 0.01
    samples = DDIMSampler(diff, steps=steps).sample(
        gaussian_eps_fn(mu, sd, abar), (5, 1), generator=torch.Generator().manual_seed(0)
    )
    assert (samples.squeeze() - mu).abs().max() > 0.05  # a few samples' mean is noisier


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_seeded_full_loop_is_reproducible() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    eps_fn = gaussian_eps_fn(0.0, 1.0, hand_abar())
    runs = [
        DDPMSampler(diff).sample(eps_fn, (4, 5), generator=torch.Generator().manual_seed(s))
        for s in (42, 42, 43)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])
    assert bool(torch.isfinite(runs[0]).all())


def test_sampler_rejects_wrong_eps_shape() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas(10)), "eps")
    with pytest.raises(DataError, match="model output"):
        DDPMSampler(diff).sample(lambda x, t: x[:, :1], (2, 3))


def test_sampler_registry_and_config() -> None:
    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    assert set(SAMPLERS) == {"ddpm", "ddim"}
    s = build_sampler(SamplerConfig("ddim", steps=20, eta=0.5), diff)
    assert isinstance(s, DDIMSampler) and s.steps == 20 and s.eta == 0.5
    assert isinstance(build_sampler(SamplerConfig("ddpm"), diff), DDPMSampler)


@pytest.mark.slow  # over ~2 s: the full suite runs it
def test_sample_n_tiles_each_item_and_summarises_its_samples() -> None:
    """Item b has data N(mu_b, sd^2); the per-item mean and std of n samples recover them."""
    mus = torch.tensor([-2.0, 0.0, 3.0])  # (B,)
    sd, n = 0.5, 800
    abar = torch.tensor(hand_abar())
    mu_rows = tile_batch(mus[:, None], n)  # (B*n, 1): the conditioning, tiled like x_t

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].to(x.dtype)[:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * mu_rows) / (a * sd**2 + 1 - a)

    diff = GaussianDiffusion(NoiseSchedule(linear_betas()), "eps")
    mean, std = sample_n(
        DDPMSampler(diff),
        eps_fn,
        batch_size=3,
        n_genes=2,
        n_samples=n,
        generator=torch.Generator().manual_seed(0),
    )
    assert mean.shape == (3, 2) and std.shape == (3, 2)
    torch.testing.assert_close(mean, mus[:, None].expand(3, 2), atol=0.06, rtol=0)
    torch.testing.assert_close(std, torch.full((3, 2), sd), atol=0.05, rtol=0)
    _, one_std = sample_n(DDIMSampler(diff, steps=5), lambda x, t: torch.zeros_like(x), 3, 2, 1)
    assert torch.equal(one_std, torch.zeros(3, 2))  # a single sample has no spread


def test_samplers_read_a_v_network_through_their_process() -> None:
    """The exact eps of a Gaussian turned into a velocity network: a sampler on a v process
    follows the same DDIM path as one on an eps process given the eps network."""
    mu, sd = 1.5, 0.5
    abar = hand_abar()
    a_all = torch.tensor(abar)
    eps_fn = gaussian_eps_fn(mu, sd, abar)

    def v_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = a_all[t].to(x.dtype)[:, None]  # (B, 1)
        e = eps_fn(x, t)
        x0_hat = (x - (1 - a).sqrt() * e) / a.sqrt()
        return a.sqrt() * e - (1 - a).sqrt() * x0_hat

    schedule = NoiseSchedule(linear_betas())
    x_T = torch.tensor([[0.0], [1.0], [-2.0]], dtype=torch.float64)
    via_eps = DDIMSampler(GaussianDiffusion(schedule, "eps"), steps=10).sample(
        eps_fn, (3, 1), x_T=x_T
    )
    via_v = DDIMSampler(GaussianDiffusion(schedule, "v"), steps=10).sample(v_fn, (3, 1), x_T=x_T)
    torch.testing.assert_close(via_v, via_eps, rtol=1e-9, atol=1e-9)
    misread = DDIMSampler(GaussianDiffusion(schedule, "eps"), steps=10).sample(
        v_fn, (3, 1), x_T=x_T
    )
    assert not torch.allclose(misread, via_eps, atol=1e-3)


def test_check_sampler_names_where_it_failed() -> None:
    cfg = DiffusionConfig(num_timesteps=10)
    check_sampler(SamplerConfig("ddim", steps=10), cfg, "gen.sampler")
    with pytest.raises(ConfigError, match=r"gen\.sampler: steps: expected an integer in \[1, 10\]"):
        check_sampler(SamplerConfig("ddim", steps=11), cfg, "gen.sampler")
    with pytest.raises(ConfigError, match=r"gen\.sampler\.n_samples"):
        check_sampler(SamplerConfig("ddim", steps=5, n_samples=0), cfg, "gen.sampler")
