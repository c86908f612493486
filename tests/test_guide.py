"""The guidance wrapper against closed forms: the gradient of a Gaussian-class toy classifier,
the guidance sign on an analytic denoiser, the classifier-free combination, batch independence."""
import copy

import pytest
import torch
from torch import nn

from guidance import GaussianDiffusion, GuidedDenoiser, Guidance, SharedNoise, final, sample

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
    model = GuidedDenoiser(lambda x, t, y: torch.zeros_like(x), GaussianClassifier(), NULL)
    out = model(x, torch.zeros(6, dtype=torch.long), Guidance.make(labels, 1.0), torch.ones(6))
    # eps-tilde = eps - k w g with eps = 0 and k = w = 1.
    torch.testing.assert_close(-out.eps, GaussianClassifier.grad_log_prob(x, labels))
    # And k_t, w enter linearly, per item.
    k, w = torch.tensor([0.5, 1, 2, 0, 1, 3.0]), torch.tensor([2.0, -1, 0.5, 4, 0, 1])
    out = model(x, torch.zeros(6, dtype=torch.long), Guidance.make(labels, w), k)
    torch.testing.assert_close(-out.eps, (k * w).double().reshape(-1, 1, 1, 1) * GaussianClassifier.grad_log_prob(x, labels))
    torch.testing.assert_close(out.log_prob, torch.log_softmax(GaussianClassifier()(x, None), -1)[torch.arange(6), labels])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_guidance_moves_samples_toward_the_class(sampler):
    # Linear, not cosine: with x-hat_0 unclipped, the cosine schedule's beta_T = 0.999 turns the
    # first DDIM step's guidance into a jump of sqrt(alpha-bar_{T-1} / alpha-bar_T) ~ 30 times w g.
    diffusion = GaussianDiffusion.from_schedule("linear", 100, steps=20)
    full = GaussianDiffusion.from_schedule("linear", 100)
    model = GuidedDenoiser(StandardNormalEps(full), GaussianClassifier(), NULL)
    n, scales = 256, [0.0, 0.25, 0.5, 1.0]
    distances, log_probs = [], []
    for w in scales:
        noise = SharedNoise(0)
        steps = sample(model, diffusion, (n, *SHAPE), Guidance.make(0, w, batch_size=n),
                       lambda s, d: noise(s, d).double(), sampler, clip_denoised=False)
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
    model = GuidedDenoiser(StandardNormalEps(GaussianDiffusion.from_schedule("cosine", 100)), None, NULL)
    x = final(sample(model, diffusion, (2000, *SHAPE), Guidance.make(0, 0.0, batch_size=2000),
                     SharedNoise(1), "ddpm", clip_denoised=False)).sample
    assert abs(x.mean().item()) < 0.05 and abs(x.var().item() - 1) < 0.1


def test_cfg_scale_none_is_the_unconditional_model_and_zero_the_conditional():
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    t, labels = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 1, 0])
    model = GuidedDenoiser(LabelEps(), None, NULL)
    torch.testing.assert_close(model.eps(x, t, Guidance.make(labels)), LabelEps()(x, t, torch.full((4,), NULL)))
    torch.testing.assert_close(model.eps(x, t, Guidance.make(labels, cfg_scale=0.0)), LabelEps()(x, t, labels))


def test_cfg_combination_is_one_plus_w_cond_minus_w_uncond():
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    t, labels = torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 1, 0])
    w = torch.tensor([0.0, 1.0, 3.0, 7.5])
    model = GuidedDenoiser(LabelEps(), None, NULL)
    cond, uncond = LabelEps()(x, t, labels), LabelEps()(x, t, torch.full((4,), NULL))
    expected = (1 + w.reshape(-1, 1, 1, 1)) * cond - w.reshape(-1, 1, 1, 1) * uncond
    torch.testing.assert_close(model.eps(x, t, Guidance.make(labels, cfg_scale=w)), expected)
    # Through the full wrapper (no classifier), the same.
    torch.testing.assert_close(model(x, t, Guidance.make(labels, cfg_scale=w), torch.ones(4)).eps, expected)


def test_classifier_guidance_adds_on_top_of_cfg():
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, labels = torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 0])
    both = GuidedDenoiser(LabelEps(), GaussianClassifier(), NULL)
    cfg_only = GuidedDenoiser(LabelEps(), None, NULL)
    k = torch.tensor([0.5, 1.0, 2.0])
    out = both(x, t, Guidance.make(labels, 2.0, cfg_scale=1.5), k)
    expected = (cfg_only(x, t, Guidance.make(labels, cfg_scale=1.5), k).eps
                - 2.0 * k.double().reshape(-1, 1, 1, 1) * GaussianClassifier.grad_log_prob(x, labels))
    torch.testing.assert_close(out.eps, expected)


def test_classifier_guidance_without_a_classifier_is_refused():
    model = GuidedDenoiser(LabelEps(), None, NULL)
    with pytest.raises(ValueError, match="classifier"):
        model(torch.zeros(1, *SHAPE), torch.zeros(1, dtype=torch.long), Guidance.make(0, 1.0), torch.ones(1))


def test_per_item_gradients_do_not_mix_batch_items(unet, classifier):
    # float64, so batch-size-dependent float32 rounding in the convolutions cannot hide a leak.
    model = GuidedDenoiser(copy.deepcopy(unet).double(), copy.deepcopy(classifier).double(), unet.null_label)
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
