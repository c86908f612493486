"""Diffusion math against closed forms computed here, independently of guidescope/diffusion.py."""
import math

import pytest
import torch

from guidescope.diffusion import GaussianDiffusion, make_betas, respace_timesteps
from guidescope.request import Request, Row, check

T = 1000


@pytest.fixture(params=["linear", "cosine"])
def diffusion(request) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(request.param, T)


def _alpha_bar(schedule: str, t: torch.Tensor) -> torch.Tensor:
    """alpha-bar_t from the papers' formulas, written out without the library's cumprod tables."""
    t = t.double()
    if schedule == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        return torch.stack([torch.prod(1 - betas[: int(s) + 1]) for s in t])
    f = lambda s: torch.cos((s / T + 0.008) / 1.008 * math.pi / 2) ** 2
    # The cosine schedule clips beta at 0.999, which only bites at the very last steps.
    return f(t + 1) / f(torch.zeros((), dtype=torch.float64))


def _batch(seed: int = 0, b: int = 6):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(b, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])[:b]
    return x0, eps, t


def test_alpha_bar_matches_the_papers(diffusion):
    schedule = "linear" if diffusion.betas[0] == pytest.approx(1e-4) else "cosine"
    t = torch.tensor([0, 1, 100, 500, 900, 990])
    torch.testing.assert_close(diffusion.alphas_cumprod[t], _alpha_bar(schedule, t), rtol=1e-9, atol=1e-12)


def test_q_sample_then_predict_xstart_returns_x0(diffusion):
    x0, eps, t = _batch()
    x_t = diffusion.q_sample(x0, t, eps)
    ab = diffusion.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    # Not at t = 999 of the cosine schedule, where sqrt(alpha-bar) ~ 1e-5 amplifies rounding.
    keep = t < 999
    torch.testing.assert_close(diffusion.predict_xstart_from_eps(x_t, t, eps)[keep], x0[keep], rtol=0, atol=1e-8)


def test_predict_eps_from_xstart_inverts_predict_xstart(diffusion):
    x0, eps, t = _batch(1)
    x_t = diffusion.q_sample(x0, t, eps)
    pred = diffusion.predict_xstart_from_eps(x_t, t, eps)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(x_t, t, pred), eps, rtol=0, atol=1e-8)
    torch.testing.assert_close(diffusion.predict_eps_from_xstart(x_t[1:], t[1:], x0[1:]), eps[1:], rtol=0, atol=1e-6)


def test_posterior_mean_and_variance_match_the_closed_form(diffusion):
    x0, eps, t = _batch(2)
    x_t = diffusion.q_sample(x0, t, eps)
    betas = diffusion.betas
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    col = lambda v: v[t].reshape(-1, 1, 1, 1)
    mean = (col(ab_prev.sqrt() * betas / (1 - ab)) * x0
            + col((1 - betas).sqrt() * (1 - ab_prev) / (1 - ab)) * x_t)
    variance = col((1 - ab_prev) / (1 - ab) * betas)
    out = diffusion.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.variance, variance)
    assert out.variance[0].item() == 0  # x_0 is known exactly given x_1 and x_0
    # The log variance is clipped at t = 0 to its t = 1 value, so it stays finite.
    torch.testing.assert_close(out.log_variance[1:], variance[1:].log())
    torch.testing.assert_close(out.log_variance[0], out.log_variance[1])


def test_posterior_is_the_bayes_product_of_forward_steps():
    """mu-tilde and beta-tilde are the Gaussian product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0)."""
    d = GaussianDiffusion.from_schedule("linear", 100)
    x0, eps, _ = _batch(3, 1)
    t = 40
    x_t = d.q_sample(x0, torch.tensor([t]), eps)
    alpha, ab_prev = 1 - d.betas[t], d.alphas_cumprod[t - 1]
    # q(x_{t-1} | x_0) = N(sqrt(ab_prev) x0, 1 - ab_prev); q(x_t | x_{t-1}) = N(sqrt(alpha) x_{t-1}, beta).
    precision = 1 / (1 - ab_prev) + alpha / d.betas[t]
    mean = (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * x_t / d.betas[t]) / precision
    out = d.q_posterior_mean_variance(x0, x_t, torch.tensor([t]))
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.variance.flatten(), (1 / precision).reshape(1))


def test_respacing_with_all_steps_reproduces_the_schedule(diffusion):
    schedule = "linear" if diffusion.betas[0] == pytest.approx(1e-4) else "cosine"
    same = GaussianDiffusion.from_schedule(schedule, T, steps=T)
    assert torch.equal(same.timesteps, torch.arange(T))
    assert torch.equal(same.betas, diffusion.betas)
    assert torch.equal(same.alphas_cumprod, diffusion.alphas_cumprod)


@pytest.mark.parametrize("num_timesteps", [1, 2, 3, 7, 100, 1000])
def test_respacing_every_step_count(num_timesteps):
    for steps in range(1, num_timesteps + 1):
        kept = respace_timesteps(num_timesteps, steps)
        assert kept.dtype == torch.long and len(kept) == steps, steps
        assert kept[-1] == num_timesteps - 1, steps
        assert steps == 1 or kept[0] == 0, steps
        assert bool((kept[1:] > kept[:-1]).all()), steps


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_respaced_alpha_bar_equals_the_original_at_kept_steps(schedule):
    full = GaussianDiffusion.from_schedule(schedule, T)
    for steps in range(1, T + 1):
        respaced = GaussianDiffusion.from_schedule(schedule, T, steps=steps)
        assert respaced.num_timesteps == steps
        torch.testing.assert_close(respaced.alphas_cumprod, full.alphas_cumprod[respaced.timesteps],
                                   rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("schedule, num_timesteps", [("linear", 21), ("linear", 50), ("linear", 1000),
                                                     ("linear", 4000), ("cosine", 1), ("cosine", 2),
                                                     ("cosine", 10), ("cosine", 1000), ("cosine", 4000)])
def test_schedules_are_sane(schedule, num_timesteps):
    betas = make_betas(schedule, num_timesteps)
    assert betas.shape == (num_timesteps,) and betas.dtype == torch.float64
    assert bool(((betas > 0) & (betas < 1)).all())
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert bool((alpha_bar[1:] < alpha_bar[:-1]).all())
    assert alpha_bar[-1] < 0.01
    if num_timesteps >= 10:
        assert alpha_bar[0] > 0.95
    if schedule == "linear":  # rescaled by 1000 / T, so every T is the same process
        assert betas[-1] == pytest.approx(0.02 * 1000 / num_timesteps)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="linear.*cosine"):
        make_betas("quadratic")


@pytest.mark.parametrize("schedule, num_timesteps", [("linear", 20), ("linear", 5), ("cosine", 0),
                                                     ("cosine", -3), ("cosine", 2.0), ("linear", True)])
def test_invalid_timestep_counts_raise(schedule, num_timesteps):
    with pytest.raises(ValueError, match="timesteps"):
        make_betas(schedule, num_timesteps)


@pytest.mark.parametrize("steps", [0, -1, T + 1, 2.5, True, "10"])
def test_invalid_step_counts_name_the_range(steps):
    """A step count is the request's, checked where it enters the library, not again by respacing."""
    with pytest.raises(ValueError, match=f"steps must be an integer from 1 to {T}"):
        check(Request((Row(0),), steps=steps), 3, T)
