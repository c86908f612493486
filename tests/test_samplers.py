"""Sampler contracts with tiny random networks: shapes, step records, determinism, scale 0,
noise use, shared noise across guidance strengths, the DDPM guidance step, and failures; and
convergence to the exact probability-flow ODE solution for Gaussian data."""
import copy

import pytest
import torch

from guidescope import (GaussianDiffusion, Guidance, NoiseAwareGuidance, ItemNoise, NonFiniteError, Threshold, final,
                        sample_loop)
from guidescope.request import Request, Row, check

SAMPLERS = ["ddim", "ddpm", "dpm++2m", "unipc"]
UNCLIPPED = Threshold("none")

from conftest import tiny_classifier

SHAPE = (4, 1, 8, 8)
STEPS = 5


@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("cosine", 100, steps=STEPS)


@pytest.fixture
def model(unet, classifier) -> NoiseAwareGuidance:
    return NoiseAwareGuidance(unet, classifier, unet.null_label)


def guidance(scale=0.0, cfg_scale=None, labels=(0, 1, 2, 0), **kwargs) -> Guidance:
    return Guidance.make(list(labels), scale, cfg_scale, batch_size=len(labels), **kwargs)


def run(model, diffusion, sampler="ddim", seed=0, shape=SHAPE, **kwargs):
    guide = kwargs.pop("guide", None) or guidance()
    return list(sample_loop(model, diffusion, shape, guide, ItemNoise(seed, range(shape[0])), sampler, **kwargs))


class ScriptedNoise:
    """x_T from a fixed tensor, then fresh noise from its own seed; counts the draws."""

    def __init__(self, x_T: torch.Tensor, seed: int):
        self.x_T, self.generator, self.calls = x_T, torch.Generator().manual_seed(seed), 0

    def __call__(self, shape, device):
        self.calls += 1
        return self.x_T.clone() if self.calls == 1 else torch.randn(shape, generator=self.generator)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_records_have_the_right_shapes_and_timesteps(model, diffusion, sampler):
    for guide, has_norm in ((guidance(), False), (guidance(scale=2.0), True), (guidance(1.0, cfg_scale=1.5), True)):
        steps = run(model, diffusion, sampler, guide=guide)
        assert len(steps) == STEPS
        assert [s.index for s in steps] == list(range(STEPS))
        assert [s.timestep for s in steps] == diffusion.timesteps.flip(0).tolist()
        assert steps[0].timestep == 99 and steps[-1].timestep == 0
        for s in steps:
            assert s.sample.shape == SHAPE and s.pred_xstart.shape == SHAPE
            assert s.pred_xstart.abs().max() <= 1
            assert s.log_prob.shape == (SHAPE[0],) and bool((s.log_prob <= 0).all())
            assert (s.guidance_norm is not None) == has_norm
            if has_norm:
                assert s.guidance_norm.shape == (SHAPE[0],)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_networks_see_original_timesteps(unet, classifier, diffusion, sampler):
    seen = []

    def spy(x, t, y):
        seen.append(t.tolist())
        return unet(x, t, y)

    list(sample_loop(NoiseAwareGuidance(spy, classifier, unet.null_label), diffusion, SHAPE, guidance(),
                     ItemNoise(0, range(SHAPE[0])), sampler))
    assert seen == [[t] * SHAPE[0] for t in diffusion.timesteps.flip(0).tolist()]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_determinism(model, diffusion, sampler):
    guide = guidance(scale=3.0)
    eta = 0.5 if sampler == "ddim" else 0.0
    a = run(model, diffusion, sampler, seed=7, guide=guide, eta=eta)
    b = run(model, diffusion, sampler, seed=7, guide=guide, eta=eta)
    c = run(model, diffusion, sampler, seed=8, guide=guide, eta=eta)
    for x, y in zip(a, b):
        assert torch.equal(x.sample, y.sample) and torch.equal(x.pred_xstart, y.pred_xstart)
        assert torch.equal(x.guidance_norm, y.guidance_norm)
    assert not torch.allclose(a[-1].sample, c[-1].sample)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_scale_zero_equals_unguided(unet, classifier, diffusion, sampler):
    plain = run(NoiseAwareGuidance(unet, None, unet.null_label), diffusion, sampler, guide=guidance(0.0))
    other_classifier = tiny_classifier(seed=5)
    for clf in (classifier, other_classifier):
        zero = run(NoiseAwareGuidance(unet, clf, unet.null_label), diffusion, sampler, guide=guidance(0.0))
        assert all(torch.equal(p.sample, z.sample) for p, z in zip(plain, zero))
        assert zero[-1].guidance_norm is None
    guided = run(NoiseAwareGuidance(unet, classifier, unet.null_label), diffusion, sampler, guide=guidance(5.0))
    assert not torch.allclose(plain[-1].sample, guided[-1].sample)


def test_ddim_eta_zero_is_deterministic_given_x_T(model, diffusion):
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    noises = [ScriptedNoise(x_T, seed) for seed in (1, 2)]
    a, b = (final(sample_loop(model, diffusion, SHAPE, guidance(2.0), n, "ddim", eta=0.0)) for n in noises)
    assert torch.equal(a.sample, b.sample)
    assert [n.calls for n in noises] == [1, 1]


def test_ddim_with_eta_uses_fresh_noise(model, diffusion):
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    noises = [ScriptedNoise(x_T, seed) for seed in (1, 2)]
    a, b = (final(sample_loop(model, diffusion, SHAPE, guidance(2.0), n, "ddim", eta=0.7)) for n in noises)
    assert not torch.allclose(a.sample, b.sample)
    assert [n.calls for n in noises] == [STEPS, STEPS]  # x_T, then every step but the last


# eta's range, the sampler's name and "eta is DDIM's" are the request's rules, checked once where it
# enters the library (guidescope.request.check), not again by the samplers.
@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan")])
def test_a_request_with_eta_outside_0_1_is_refused(eta):
    with pytest.raises(ValueError, match="eta must be a number from 0 to 1"):
        check(Request((Row(0),), eta=eta), 3, 100)


def test_a_request_for_an_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="ddim, ddpm, dpm\\+\\+2m"):
        check(Request((Row(0),), sampler="euler"), 3, 100)


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m", "unipc"])
def test_eta_is_refused_outside_ddim(sampler):
    with pytest.raises(ValueError, match="DDIM"):
        check(Request((Row(0),), sampler=sampler, eta=0.5), 3, 100)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_shared_noise_makes_rows_with_equal_scales_identical(model, diffusion, sampler):
    groups, scales = 3, [2.0, 0.0, 2.0, 6.0]  # one row per scale, `groups` classes per row
    labels = list(range(groups)) * len(scales)
    per_item = [w for w in scales for _ in range(groups)]
    guide = Guidance.make(labels, per_item, batch_size=len(labels))
    eta = 1.0 if sampler == "ddim" else 0.0
    out = final(sample_loop(model, diffusion, (len(labels), 1, 8, 8), guide,
                            ItemNoise(0, list(range(groups)) * len(scales)), sampler, eta=eta)).sample
    rows = out.reshape(len(scales), groups, 1, 8, 8)
    assert torch.equal(rows[0], rows[2])
    assert not torch.allclose(rows[0], rows[1]) and not torch.allclose(rows[0], rows[3])
    # The same rows, sampled one scale at a time from the same seed, agree with the tiled batch.
    alone = final(sample_loop(model, diffusion, (groups, 1, 8, 8), Guidance.make(list(range(groups)), 6.0),
                              ItemNoise(0, range(groups)), sampler, eta=eta)).sample
    torch.testing.assert_close(alone, rows[3])


def test_one_guided_ddpm_step_moves_the_mean_by_w_sigma_g(unet, classifier):
    """Dhariwal & Nichol Algorithm 1: mu + w Sigma g. The sampler only picks k_t, so this checks k_t."""
    unet64, classifier64 = copy.deepcopy(unet).double(), copy.deepcopy(classifier).double()
    model = NoiseAwareGuidance(unet64, classifier64, unet.null_label)
    diffusion = GaussianDiffusion.from_schedule("linear", 100, steps=10)
    labels, w = torch.tensor([0, 1, 2, 1]), 3.0
    shape = (4, 1, 8, 8)

    def first_step(scale):
        noise = ItemNoise(11, range(4))
        gen = sample_loop(model, diffusion, shape, Guidance.make(labels, scale, diagnostics=False, threshold=UNCLIPPED),
                          lambda s, d: noise(s, d).double(), "ddpm")
        return next(gen).sample

    x_T = ItemNoise(11, range(4))(shape, "cpu").double()
    t = diffusion.timesteps[-1].repeat(4)
    x = x_T.clone().requires_grad_(True)
    log_p = torch.log_softmax(classifier64(x, t), dim=-1)[torch.arange(4), labels]
    g = torch.autograd.grad(log_p.sum(), x)[0]
    sigma = diffusion.fixed_variance(torch.tensor([9]), x_T).variance
    expected = w * sigma * g
    assert expected.abs().max() > 1e-3  # the check below is not vacuous
    torch.testing.assert_close(first_step(w) - first_step(0.0), expected, rtol=1e-9, atol=1e-12)


def test_one_guided_ddim_step_uses_eps_minus_sqrt_one_minus_alpha_bar_w_g(unet, classifier):
    """Dhariwal & Nichol Algorithm 2: eps-hat = eps - sqrt(1 - alpha-bar_t) w g, so (unclipped)
    x-hat_0 moves by (1 - alpha-bar_t) / sqrt(alpha-bar_t) w g and x_{t-1} by
    sqrt(1 - alpha-bar_t) w g (sqrt(alpha-bar_{t-1} (1 - alpha-bar_t) / alpha-bar_t) - sqrt(1 - alpha-bar_{t-1}))."""
    model = NoiseAwareGuidance(copy.deepcopy(unet).double(), copy.deepcopy(classifier).double(), unet.null_label)
    diffusion = GaussianDiffusion.from_schedule("linear", 100, steps=10)
    labels, w, shape = torch.tensor([0, 1, 2, 1]), 3.0, (4, 1, 8, 8)

    def first_step(scale):
        noise = ItemNoise(5, range(4))
        return next(sample_loop(model, diffusion, shape, Guidance.make(labels, scale, diagnostics=False, threshold=UNCLIPPED),
                                lambda s, d: noise(s, d).double(), "ddim"))

    x_T = ItemNoise(5, range(4))(shape, "cpu").double().requires_grad_(True)
    t = diffusion.timesteps[-1].repeat(4)
    log_p = torch.log_softmax(model.classifier(x_T, t), dim=-1)[torch.arange(4), labels]
    g = torch.autograd.grad(log_p.sum(), x_T)[0]
    ab, ab_prev = diffusion.alphas_cumprod[-1], diffusion.alphas_cumprod[-2]
    guided, plain = first_step(w), first_step(0.0)
    torch.testing.assert_close(guided.pred_xstart - plain.pred_xstart, (1 - ab) / ab.sqrt() * w * g,
                               rtol=1e-9, atol=1e-12)
    shift = (1 - ab).sqrt() * w * g * ((ab_prev * (1 - ab) / ab).sqrt() - (1 - ab_prev).sqrt())
    assert shift.abs().max() > 1e-3
    torch.testing.assert_close(guided.sample - plain.sample, shift, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("where", ["unet", "classifier"])
def test_nan_raises_non_finite_error_at_that_step(unet, classifier, diffusion, sampler, where):
    bad_t = int(diffusion.timesteps[2])  # the third step from the end

    def poisoned(net):
        def forward(x, t, *rest):
            out = net(x, t, *rest)
            return out * torch.nan if int(t[0]) == bad_t else out
        return forward

    model = (NoiseAwareGuidance(poisoned(unet), classifier, unet.null_label) if where == "unet"
             else NoiseAwareGuidance(unet, poisoned(classifier), unet.null_label))
    gen = sample_loop(model, diffusion, SHAPE, guidance(1.0), ItemNoise(0, range(4)), sampler)
    done = []
    with pytest.raises(NonFiniteError):
        for step in gen:
            done.append(step.timestep)
    assert done == diffusion.timesteps.flip(0).tolist()[: STEPS - 3]


def test_max_guidance_norm_clips_the_term_and_its_report(model, diffusion):
    free = run(model, diffusion, guide=guidance(50.0))
    largest = max(float(s.guidance_norm.max()) for s in free)
    assert largest > 1.0
    clipped = run(model, diffusion, guide=guidance(50.0, max_guidance_norm=1.0))
    for s in clipped:
        assert float(s.guidance_norm.max()) <= 1.0 + 1e-5
    assert any(float(s.guidance_norm.max()) == pytest.approx(1.0, abs=1e-5) for s in clipped)
    loose = run(model, diffusion, guide=guidance(50.0, max_guidance_norm=10 * largest))
    assert torch.equal(loose[-1].sample, free[-1].sample)


def test_clipped_term_has_the_reported_norm(model):
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    t, k = torch.full((4,), 50), torch.full((4,), 0.8)
    plain = model(x, t, guidance(0.0), k).eps
    for cap in (None, 0.5):
        out = model(x, t, guidance(torch.tensor([0.0, 1.0, 20.0, 20.0]), max_guidance_norm=cap), k)
        torch.testing.assert_close((plain - out.eps).flatten(1).norm(dim=1), out.guidance_norm)
        assert out.guidance_norm[0] == 0
    assert out.guidance_norm.max() <= 0.5 + 1e-6


class GaussianDataEps(torch.nn.Module):
    """The exact eps-prediction for data x_0 ~ N(mu, s^2 I): x_t ~ N(a mu, v I) with a = sqrt(alpha-bar_t),
    sigma = sqrt(1 - alpha-bar_t), v = a^2 s^2 + sigma^2, and E[eps | x_t] = sigma (x_t - a mu) / v."""

    def __init__(self, diffusion: GaussianDiffusion, mu: float, s: float):
        super().__init__()
        self.alphas_cumprod, self.mu, self.s = diffusion.alphas_cumprod, mu, s

    def forward(self, x, t, y):
        abar = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        a, sigma = abar.sqrt(), (1 - abar).sqrt()
        return sigma * (x - a * self.mu) / (abar * self.s ** 2 + sigma ** 2)


def exact_solution(full: GaussianDiffusion, x_T: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    """The probability-flow ODE keeps z = (x_t - a_t mu) / sqrt(v_t) fixed for Gaussian data; solved
    from t = T-1 to t = 0, then the x-hat_0 at t = 0 that every sampler's last step returns."""
    abar_T, abar_0 = full.alphas_cumprod[-1], full.alphas_cumprod[0]
    z = (x_T - abar_T.sqrt() * mu) / (abar_T * s ** 2 + 1 - abar_T).sqrt()
    v_0 = abar_0 * s ** 2 + 1 - abar_0
    x_0 = abar_0.sqrt() * mu + v_0.sqrt() * z
    return mu + abar_0.sqrt() * s ** 2 * (x_0 - abar_0.sqrt() * mu) / v_0


def gaussian_errors(sampler: str, step_counts=(25, 50, 100, 200)) -> list[float]:
    """Max |error| of the sampler's x_0 against the exact ODE solution for Gaussian data, per step count."""
    mu, s = 0.3, 0.5
    full = GaussianDiffusion.from_schedule("cosine", 1000)  # the shipped schedule
    model = NoiseAwareGuidance(GaussianDataEps(full, mu, s), None, 0)
    shape = (64, 1, 2, 2)
    x_T = ItemNoise(0, range(64))(shape, "cpu").double()
    exact = exact_solution(full, x_T, mu, s)
    guide = Guidance.make(0, 0.0, batch_size=64, threshold=UNCLIPPED)
    errors = []
    for steps in step_counts:
        diffusion = GaussianDiffusion.from_schedule("cosine", 1000, steps=steps)
        out = final(sample_loop(model, diffusion, shape, guide, lambda *_: x_T.clone(), sampler)).sample
        errors.append(float((out - exact).abs().max()))
    return errors


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpm++2m", 2)])
def test_solver_error_shrinks_at_its_order_on_gaussian_data(sampler, order):
    """Against the exact ODE solution: doubling the steps divides DDIM's error by about 2 and
    DPM-Solver++(2M)'s by about 4."""
    errors = gaussian_errors(sampler)
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(0.8 * 2 ** order < r < 1.25 * 2 ** order for r in ratios), (errors, ratios)


def test_unipc_is_at_least_second_order_and_beats_its_predictor_alone():
    """The corrector makes UniPC at least second order, with a smaller error than DPM-Solver++(2M)
    (its predictor without the corrector) at every step count from 25 up."""
    errors, predictor = gaussian_errors("unipc"), gaussian_errors("dpm++2m")
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(0.8 * 4 < r < 1.25 * 8 for r in ratios), (errors, ratios)
    assert all(e < p for e, p in zip(errors, predictor)), (errors, predictor)


def test_dpm_solver_first_step_is_ddim_and_the_last_returns_x0(model):
    diffusion = GaussianDiffusion.from_schedule("cosine", 100, steps=6)
    guide = guidance(2.0)
    ddim, dpm = run(model, diffusion, "ddim", guide=guide), run(model, diffusion, "dpm++2m", guide=guide)
    unipc = run(model, diffusion, "unipc", guide=guide)
    torch.testing.assert_close(dpm[0].sample, ddim[0].sample, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(unipc[0].sample, ddim[0].sample, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(dpm[1].sample, ddim[1].sample)  # the second-order correction is on
    assert not torch.allclose(unipc[1].sample, dpm[1].sample)  # the corrector is on
    for steps in (ddim, dpm, unipc):
        assert torch.equal(steps[-1].sample, steps[-1].pred_xstart)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_step_jumps_from_noise_to_x0(model, sampler):
    diffusion = GaussianDiffusion.from_schedule("cosine", 100, steps=1)
    steps = run(model, diffusion, sampler, guide=guidance(1.0))
    assert len(steps) == 1 and steps[0].timestep == 99
    assert torch.equal(steps[0].sample, steps[0].pred_xstart)
