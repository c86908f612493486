"""The guidance wrapper against closed forms: the gradient of a Gaussian-class toy classifier,
the guidance sign on an analytic denoiser, the classifier-free combination, batch independence."""
import copy

import pytest
import torch
from torch import nn

from guidescope import GaussianDiffusion, Guidance, NoiseAwareGuidance, ItemNoise, Schedule, Threshold, final, sample_loop
from guidescope.request import Request, Row, check

UNCLIPPED = Threshold("none")

SHAPE = (1, 4, 4)
NULL = 2
# Two classes with means +-0.5 in every pixel; data is N(0, I), so both sit inside it.
MU = torch.stack([torch.full(SHAPE, 0.5), torch.full(SHAPE, -0.5)]).double()


class GaussianClassifier(nn.Module):
    """logits_c(x) = -||x - mu_c||^2 / 2 (ignores t), so grad_x log p(c | x) = mu_c - sum_k p_k mu_k."""

    def forward(self, x, t):
        return -0.5 * ((x[:, None] - MU.to(x.dtype)) ** 2).flatten(2).sum(-1)

    @staticmethod
    def grad_log_prob(x, c):
        p = torch.softmax(GaussianClassifier()(x, None), dim=-1)          # (B, K)
        return MU[c] - torch.einsum("bk,kchw->bchw", p, MU.to(x.dtype))


class StandardNormalEps(nn.Module):
    """The exact eps-prediction for data ~ N(0, I): x_t ~ N(0, I) too and E[eps | x_t] = sqrt(1 - alpha-bar_t) x_t."""

    def __init__(self, diffusion: GaussianDiffusion):
        super().__init__()
        self.alphas_cumprod = diffusion.alphas_cumprod

    def forward(self, x, t, y):
        return (1 - self.alphas_cumprod[t]).sqrt().to(x.dtype).reshape(-1, 1, 1, 1) * x


class LabelEps(nn.Module):
    """eps depends on the label in a known way: (y + 1) x / 4, the null label included."""

    def forward(self, x, t, y):
        return (y.to(x.dtype) + 1).reshape(-1, 1, 1, 1) * x / 4


def test_guidance_gradient_equals_the_analytic_gradient():
    x = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    model = NoiseAwareGuidance(lambda x, t, y: torch.zeros_like(x), GaussianClassifier(), NULL)
    out = model(x, torch.zeros(6, dtype=torch.long), Guidance.make(labels, 1.0), torch.ones(6))
    # eps-tilde = eps - k w g with eps = 0 and k = w = 1.
    torch.testing.assert_close(-out.eps, GaussianClassifier.grad_log_prob(x, labels))
    # And k_t, w enter linearly, per item.
    k, w = torch.tensor([0.5, 1, 2, 0, 1, 3.0]), torch.tensor([2.0, -1, 0.5, 4, 0, 1])
    out = model(x, torch.zeros(6, dtype=torch.long), Guidance.make(labels, w), k)
    torch.testing.assert_close(-out.eps, (k * w).double().reshape(-1, 1, 1, 1) * GaussianClassifier.grad_log_prob(x, labels))
    torch.testing.assert_close(out.log_prob, torch.log_softmax(GaussianClassifier()(x, None), -1)[torch.arange(6), labels])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m", "unipc"])
def test_guidance_moves_samples_toward_the_class(sampler):
    # Linear, not cosine: with x-hat_0 unclipped, the cosine schedule's beta_T = 0.999 turns the
    # first DDIM step's guidance into a jump of sqrt(alpha-bar_{T-1} / alpha-bar_T) ~ 30 times w g.
    diffusion = GaussianDiffusion.from_schedule("linear", 100, steps=20)
    full = GaussianDiffusion.from_schedule("linear", 100)
    model = NoiseAwareGuidance(StandardNormalEps(full), GaussianClassifier(), NULL)
    n, scales = 256, [0.0, 0.25, 0.5, 1.0]
    distances, log_probs = [], []
    for w in scales:
        noise = ItemNoise(0, range(n))
        steps = sample_loop(model, diffusion, (n, *SHAPE), Guidance.make(0, w, batch_size=n, threshold=UNCLIPPED),
                            lambda s, d: noise(s, d).double(), sampler)
        x = final(steps).sample
        distances.append(((x - MU[0]) ** 2).flatten(1).sum(1).sqrt().mean().item())
        log_probs.append(torch.log_softmax(GaussianClassifier()(x, None), -1)[:, 0].mean().item())
    # Under p(x) p(c | x)^w, d/dw E[log p(c | x)] = Var[log p(c | x)] >= 0: the log-prob rises with w.
    assert log_probs == sorted(log_probs) and log_probs[-1] > log_probs[0] + 1, log_probs
    # Only for moderate w: this classifier ignores t, so at w of 3 or more 20 DDIM steps overshoot
    # past mu_0 along mu_0 - mu_1 (the log-prob still rises).
    assert distances == sorted(distances, reverse=True) and distances[-1] < 0.95 * distances[0], distances


def test_unguided_analytic_sampler_reproduces_the_data_distribution():
    """A sanity check of the toy denoiser the sign test relies on."""
    diffusion = GaussianDiffusion.from_schedule("cosine", 100, steps=50)
    model = NoiseAwareGuidance(StandardNormalEps(GaussianDiffusion.from_schedule("cosine", 100)), None, NULL)
    x = final(sample_loop(model, diffusion, (2000, *SHAPE), Guidance.make(0, 0.0, batch_size=2000, threshold=UNCLIPPED),
                          ItemNoise(1, range(2000)), "ddpm")).sample
    assert abs(x.mean().item()) < 0.05 and abs(x.var().item() - 1) < 0.1


def test_cfg_scale_none_is_the_unconditional_model_and_zero_the_conditional():
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    t, labels = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 1, 0])
    model = NoiseAwareGuidance(LabelEps(), None, NULL)
    one = torch.ones(4)
    torch.testing.assert_close(model(x, t, Guidance.make(labels), one).eps, LabelEps()(x, t, torch.full((4,), NULL)))
    torch.testing.assert_close(model(x, t, Guidance.make(labels, cfg_scale=0.0), one).eps, LabelEps()(x, t, labels))


def test_cfg_combination_is_one_plus_w_cond_minus_w_uncond():
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    t, labels = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 1, 0])
    w = torch.tensor([0.0, 1.0, 3.0, 7.5])
    model = NoiseAwareGuidance(LabelEps(), None, NULL)
    cond, uncond = LabelEps()(x, t, labels), LabelEps()(x, t, torch.full((4,), NULL))
    expected = (1 + w.reshape(-1, 1, 1, 1)) * cond - w.reshape(-1, 1, 1, 1) * uncond
    torch.testing.assert_close(model(x, t, Guidance.make(labels, cfg_scale=w), torch.ones(4)).eps, expected)


def test_classifier_guidance_adds_on_top_of_cfg():
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, labels = torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 0])
    both = NoiseAwareGuidance(LabelEps(), GaussianClassifier(), NULL)
    cfg_only = NoiseAwareGuidance(LabelEps(), None, NULL)
    k = torch.tensor([0.5, 1.0, 2.0])
    out = both(x, t, Guidance.make(labels, 2.0, cfg_scale=1.5), k)
    expected = (cfg_only(x, t, Guidance.make(labels, cfg_scale=1.5), k).eps
                - 2.0 * k.double().reshape(-1, 1, 1, 1) * GaussianClassifier.grad_log_prob(x, labels))
    torch.testing.assert_close(out.eps, expected)


def test_classifier_guidance_without_a_classifier_is_refused():
    model = NoiseAwareGuidance(LabelEps(), None, NULL)
    with pytest.raises(ValueError, match="classifier"):
        model(torch.zeros(1, *SHAPE), torch.zeros(1, dtype=torch.long), Guidance.make(0, 1.0), torch.ones(1))


def test_per_item_gradients_do_not_mix_batch_items(unet, classifier):
    # float64, so batch-size-dependent float32 rounding in the convolutions cannot hide a leak.
    model = NoiseAwareGuidance(copy.deepcopy(unet).double(), copy.deepcopy(classifier).double(), unet.null_label)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    t, k = torch.tensor([90, 50, 50, 10, 0]), torch.ones(5)
    guide = Guidance.make([0, 1, 2, 0, 1], 1.0)
    before = model(x, t, guide, k)
    changed = x.clone()
    changed[2] = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64) * 3
    after = model(changed, t, guide, k)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(after.eps[keep], before.eps[keep], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(after.guidance_norm[keep], before.guidance_norm[keep], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(after.eps[2], before.eps[2])
    # Each item's term equals the term computed for that item alone.
    for i in range(5):
        alone = model(x[i:i + 1], t[i:i + 1], Guidance.make([0, 1, 2, 0, 1][i], 1.0), k[i:i + 1])
        torch.testing.assert_close(alone.eps[0], before.eps[i], rtol=1e-10, atol=1e-12)


# -- per-item UNet passes: the unconditional mask ---------------------------------------------------

class CountingEps(nn.Module):
    """LabelEps that records the labels of every call (one entry per batch row the UNet ran on)."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[int]] = []

    def forward(self, x, t, y):
        self.rows.append(y.tolist())
        return LabelEps()(x, t, y)


def test_a_mixed_batch_runs_the_null_pass_only_on_rows_that_need_it():
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.zeros(4, dtype=torch.long)
    labels = torch.tensor([0, 1, 0, 1])
    # Items 0, 1: unconditional (classifier rows); item 2: conditional, w_cfg 2; item 3: conditional, w_cfg 0.
    guide = Guidance.make(labels, 0.0, [0.0, 0.0, 2.0, 0.0], batch_size=4,
                          conditional=[False, False, True, True])
    unet = CountingEps()
    out = NoiseAwareGuidance(unet, None, NULL)(x, t, guide, torch.ones(4)).eps
    assert len(unet.rows) == 1 and sorted(unet.rows[0]) == sorted([0, 1, NULL, NULL, NULL])  # 5 rows, not 8
    null, cond = LabelEps()(x, t, torch.full((4,), NULL)), LabelEps()(x, t, labels)
    torch.testing.assert_close(out[:2], null[:2])
    torch.testing.assert_close(out[2], 3 * cond[2] - 2 * null[2])
    torch.testing.assert_close(out[3], cond[3])
    # Each item equals the item run alone.
    for i in range(4):
        alone = Guidance.make(labels[i:i + 1], 0.0, [0.0, 0.0, 2.0, 0.0][i], conditional=[False, False, True, True][i])
        torch.testing.assert_close(NoiseAwareGuidance(LabelEps(), None, NULL)(x[i:i + 1], t[:1], alone, torch.ones(1)).eps[0], out[i])


# -- schedules: w(t) ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape, expected", [
    ("constant", lambda t: 1.0),
    ("ramp-up", lambda t: (800 - t) / 600),
    ("ramp-down", lambda t: (t - 200) / 600),
])
def test_schedule_factor_follows_its_formula(shape, expected):
    schedule = Schedule(shape, (200, 800))
    for t in range(0, 1000, 7):
        want = expected(t) if 200 <= t <= 800 else 0.0
        assert schedule.factor(t) == pytest.approx(want, abs=1e-12), t


def test_a_ramp_without_interval_spans_the_whole_range_when_T_is_known():
    with pytest.raises(ValueError, match="needs an interval"):
        Schedule("ramp-up")
    guide = Guidance.make([0, 1], [2.0, 4.0], schedule=[Schedule(), Schedule("ramp-down", (0, 999))])
    torch.testing.assert_close(guide.at(333)[0], torch.tensor([2.0, 4.0 * 333 / 999]))
    assert Guidance.make(0, 3.0, batch_size=1).at(0)[0].item() == 3.0


@pytest.mark.parametrize("bad", [("steep", None), ("constant", (1.5, 10)), ("constant", (True, 10)), ("constant", 5)])
def test_bad_schedules_name_the_choices(bad):
    with pytest.raises(ValueError, match="constant, ramp-up, ramp-down|interval"):
        Schedule(*bad)


@pytest.mark.parametrize("interval", [(500, 100), (-1, 10), (0, 1000)])
def test_where_an_interval_may_lie_is_the_requests_rule(interval):
    """0 <= t_lo <= t_hi <= T-1 depends on the model's T: checked with the request, not by Schedule."""
    with pytest.raises(ValueError, match="a guidance interval needs 0 <= t_lo <= t_hi <= 999"):
        check(Request((Row(0, 1.0, schedule=Schedule("constant", interval)),)), 3, 1000)


def test_per_step_w_is_the_schedule_times_w_and_scales_cfg_too():
    guide = Guidance.make([0, 0, 1], [2.0, 2.0, 0.0], [0.0, 0.0, 4.0], batch_size=3,
                          conditional=[False, False, True],
                          schedule=[Schedule(), Schedule("ramp-up", (0, 100)), Schedule("constant", (50, 60))])
    w, w_cfg = guide.at(75)
    torch.testing.assert_close(w, torch.tensor([2.0, 2.0 * 25 / 100, 0.0]))
    torch.testing.assert_close(w_cfg, torch.tensor([0.0, 0.0, 0.0]))
    assert guide.at(55)[1].tolist() == [0.0, 0.0, 4.0]


class CountingClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls, self.grad_calls, self.rows = 0, 0, 0

    def forward(self, x, t):
        self.calls += 1
        self.rows += len(x)
        self.grad_calls += torch.is_grad_enabled() and x.requires_grad
        return GaussianClassifier()(x, t)


def test_the_classifier_backward_pass_is_skipped_when_no_item_is_guided_at_a_step():
    classifier = CountingClassifier()
    model = NoiseAwareGuidance(LabelEps(), classifier, NULL)
    x, t = torch.randn(2, *SHAPE, dtype=torch.float64), torch.full((2,), 900)
    outside = Guidance.make([0, 1], 5.0, schedule=Schedule("constant", (0, 500)), diagnostics=False)
    out = model(x, t, outside, torch.ones(2))
    assert classifier.calls == 0 and out.guidance_term is None and out.guidance_norm is None
    torch.testing.assert_close(out.eps, LabelEps()(x, t, torch.full((2,), NULL)))
    inside = Guidance.make([0, 1], 5.0, schedule=Schedule("constant", (0, 500)), diagnostics=False)
    model(x, torch.full((2,), 400), inside, torch.ones(2))
    assert classifier.grad_calls == 1
    # Only the guided rows go through the backward pass; the others get a plain forward for the chart.
    classifier.calls = classifier.grad_calls = classifier.rows = 0
    mixed = Guidance.make([0, 1], [5.0, 0.0])
    out = model(x, torch.full((2,), 400), mixed, torch.ones(2))
    assert classifier.grad_calls == 1 and classifier.calls == 2 and classifier.rows == 2
    assert out.guidance_term[1].abs().max() == 0 and out.guidance_term[0].abs().max() > 0
    expected = torch.log_softmax(GaussianClassifier()(x, None), -1)[torch.arange(2), torch.tensor([0, 1])]
    torch.testing.assert_close(out.log_prob, expected)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++2m", "unipc"])
def test_an_interval_without_steps_is_unguided_and_one_covering_all_is_constant(sampler):
    diffusion = GaussianDiffusion.from_schedule("linear", 100, steps=10)
    kept = diffusion.timesteps.tolist()  # 0, 11, 22, ..., 99
    model = NoiseAwareGuidance(StandardNormalEps(GaussianDiffusion.from_schedule("linear", 100)), GaussianClassifier(), NULL)

    def images(w, schedule):
        noise = ItemNoise(3, range(4))
        guide = Guidance.make([0, 1, 0, 1], w, schedule=schedule, threshold=UNCLIPPED)
        return final(sample_loop(model, diffusion, (4, *SHAPE), guide, lambda s, d: noise(s, d).double(), sampler)).sample

    gap = (kept[3] + 1, kept[4] - 1)  # between two kept timesteps: contains none
    assert not any(gap[0] <= t <= gap[1] for t in kept)
    assert torch.equal(images(4.0, Schedule("constant", gap)), images(0.0, Schedule()))
    assert torch.equal(images(4.0, Schedule("constant", (0, 99))), images(4.0, Schedule()))
    assert not torch.allclose(images(4.0, Schedule()), images(0.0, Schedule()))


# -- x-hat_0 thresholds ------------------------------------------------------------------------

def test_dynamic_thresholding_against_a_hand_computed_case():
    # Image 0: |x| = 0.5, 1, 1.5, 3 -> the 0.75-quantile (linear interpolation) is 1.5 + 0.25 * 1.5 = 1.875.
    # Image 1: every |x| <= 1 -> s = max(1, .) = 1: nothing changes.
    x = torch.tensor([[[[0.5, -1.0], [1.5, -3.0]]], [[[0.2, -0.4], [0.9, 1.0]]]])
    out = Threshold("dynamic", 0.75)(x)
    s = 1.875
    expected0 = torch.tensor([[[0.5, -1.0], [1.5, -s]]]) / s
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1], x[1])
    assert Threshold("clip")(x).abs().max() == 1 and torch.equal(Threshold("none")(x), x)


def test_thresholds_apply_per_item():
    x = torch.tensor([[[[3.0]]], [[[3.0]]], [[[3.0]]]])
    guide = Guidance.make([0, 0, 0], 0.0, threshold=[Threshold("clip"), Threshold("none"), Threshold("dynamic", 1.0)])
    assert guide.threshold(x).flatten().tolist() == [1.0, 3.0, 1.0]


@pytest.mark.parametrize("bad", [("soft", 0.99), ("dynamic", 0.2), ("dynamic", float("nan"))])
def test_bad_thresholds_are_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match="clip, dynamic, none|percentile"):
        Threshold(*bad)
