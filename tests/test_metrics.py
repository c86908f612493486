"""Evaluation metrics on cases with known answers."""
import math

import torch

from guidescope.metrics import RealReference, bootstrap_scores, frechet_distance, precision_recall


def test_identical_sets_have_zero_distance_and_full_recall():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(x, x)) < 1e-6
    pr = precision_recall(x, x.clone(), k=3)
    assert pr.precision == 1.0 and pr.recall == 1.0


def test_disjoint_sets_have_zero_precision_and_recall():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 100.0
    pr = precision_recall(real, fake, k=3)
    assert pr.precision == 0.0 and pr.recall == 0.0


def test_frechet_distance_matches_closed_form_for_shifted_gaussians():
    # Same covariance, means 3 apart along one axis: the distance is ||mu_a - mu_b||^2 = 9 (up to sampling noise).
    g = torch.Generator().manual_seed(2)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = a + torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    assert abs(frechet_distance(a, b) - 9.0) < 1e-6
    # Scaling one set by 2 adds Tr(S_a + 4 S_a - 2 * 2 S_a) = Tr(S_a) ~ 3 for unit covariance.
    assert abs(frechet_distance(a, 2 * a) - 3.0) < 0.15


def test_a_collapsed_set_keeps_precision_but_loses_recall():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(500, 2, generator=g)
    collapsed = real[:50].repeat(10, 1) + 1e-4 * torch.randn(500, 2, generator=g)
    pr = precision_recall(real, collapsed, k=3)
    assert pr.precision > 0.95
    assert pr.recall < 0.5


def test_the_reference_scores_like_the_plain_functions():
    g = torch.Generator().manual_seed(4)
    real, fake = torch.randn(400, 5, generator=g), 0.8 * torch.randn(120, 5, generator=g) + 0.3
    reference = RealReference(real, real[:120])
    assert abs(reference.frechet(fake) - frechet_distance(real, fake)) < 1e-9
    labels = torch.arange(120) % 4
    scores, _ = bootstrap_scores(reference, fake, labels == 0, labels, resamples=3)
    pr = precision_recall(real[:120], fake)
    assert (scores.precision, scores.recall) == (pr.precision, pr.recall) and scores.fidelity == 0.25


def test_bootstrap_redraws_within_each_class_with_one_seed():
    g = torch.Generator().manual_seed(5)
    real, fake = torch.randn(200, 3, generator=g), torch.randn(60, 3, generator=g)
    reference = RealReference(real, real[:60])
    labels = torch.arange(60) % 2
    # Class 0 always right, class 1 always wrong: every stratified replicate keeps fidelity at 1/2.
    _, reps = bootstrap_scores(reference, fake, labels == 0, labels, resamples=50, seed=7)
    assert set(reps.fidelity) == {0.5}
    # The same seed draws the same resamples (paired across settings); another seed other ones.
    assert bootstrap_scores(reference, fake, labels == 0, labels, 50, seed=7)[1] == reps
    assert bootstrap_scores(reference, fake, labels == 0, labels, 50, seed=8)[1].fd != reps.fd
    # Spread around the full-sample value, not collapsed onto it.
    full, _ = bootstrap_scores(reference, fake, labels == 0, labels, 0)
    assert min(reps.fd) < full.fd < max(reps.fd) and len(set(reps.recall)) > 1


def test_recall_is_undefined_when_a_resample_has_too_few_distinct_images():
    g = torch.Generator().manual_seed(6)
    real, fake = torch.randn(50, 2, generator=g), torch.randn(4, 2, generator=g)
    reference = RealReference(real, real[:10])
    labels = torch.zeros(4, dtype=torch.long)
    full, reps = bootstrap_scores(reference, fake, labels == 0, labels, resamples=30)
    assert not math.isnan(full.recall)
    assert any(math.isnan(r) for r in reps.recall)  # 4 draws from 4 images repeat one most of the time


def test_the_plug_in_posterior_is_the_mixture_posterior_of_the_training_images():
    """Against the posterior written out with torch.distributions: one Gaussian
    N(sqrt(a) x_0^i, (1 - a) I) per training image, summed by class. With T = 8 each quarter holds
    two timesteps; the noisy images are the ones noised_by_quarter draws."""
    from guidescope.diffusion import GaussianDiffusion
    from guidescope.metrics import noised_by_quarter, plug_in_accuracy_by_quarter

    g = torch.Generator().manual_seed(0)
    train, train_labels = torch.randn(12, 1, 2, 3, generator=g), torch.arange(12) % 3
    test, labels = torch.randn(40, 1, 2, 3, generator=g), torch.arange(40) % 3
    diffusion = GaussianDiffusion.from_schedule("cosine", 8)
    expected = []
    for x_t, t in noised_by_quarter(diffusion, test, seed=5):
        a = diffusion.alphas_cumprod[t].float()[:, None, None]           # (n, 1, 1)
        components = torch.distributions.Normal(a.sqrt() * train.flatten(1)[None], (1 - a).sqrt())
        log_q = components.log_prob(x_t.flatten(1)[:, None]).sum(-1)     # (n, N)
        posterior = torch.stack([log_q[:, train_labels == c].logsumexp(1) for c in range(3)], 1)
        expected.append(int((posterior.argmax(1) == labels).sum()) / len(labels))
    got = plug_in_accuracy_by_quarter(train, train_labels, diffusion, test, labels, seed=5, batch_size=7)
    assert got == expected and len(set(expected)) > 1


def test_the_plug_in_posterior_reads_clean_images_as_their_nearest_training_image():
    from guidescope.diffusion import GaussianDiffusion
    from guidescope.metrics import plug_in_accuracy_by_quarter

    train, labels = torch.tensor([[-1.0] * 4, [1.0] * 4]).reshape(2, 1, 2, 2), torch.tensor([0, 1])
    test = (train * 0.5).repeat(10, 1, 1, 1)
    accuracy = plug_in_accuracy_by_quarter(train, labels, GaussianDiffusion.from_schedule("cosine", 1000),
                                           test, labels.repeat(10))
    assert accuracy[0] == 1.0 and accuracy[3] < 1.0


def test_a_paired_difference_sees_what_unpaired_noise_would_hide():
    """Two scorers that agree on 990 of 1000 items and differ on 10, all in a's favour: +1 point,
    and the interval excludes 0 (pairing cancels the items' own spread); with no difference the
    interval holds 0."""
    from guidescope.metrics import paired_difference

    g = torch.Generator().manual_seed(1)
    b = (torch.rand(1000, generator=g) < 0.5).float()
    a = b.clone()
    a[(b == 0).nonzero()[:10, 0]] = 1
    diff, low, high = paired_difference(a, b)
    assert abs(diff - 0.01) < 1e-12 and 0 < low < 0.01 < high
    diff, low, high = paired_difference(b, b.clone())
    assert diff == low == high == 0


def test_noisy_accuracy_runs_the_classifier_without_gradients():
    from guidescope.diffusion import GaussianDiffusion
    from guidescope.metrics import noisy_accuracy_by_quarter

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.grad_enabled = torch.nn.Parameter(torch.zeros(2)), []

        def forward(self, x, t):
            self.grad_enabled.append(torch.is_grad_enabled())
            return x.flatten(1)[:, :2] + self.weight

    recorder = Recorder()
    noisy_accuracy_by_quarter(recorder, GaussianDiffusion.from_schedule("cosine", 8), torch.randn(6, 1, 2, 2),
                              torch.arange(6) % 2, batch_size=4)
    assert recorder.grad_enabled == [False] * 8  # two batches in each of four quarters
