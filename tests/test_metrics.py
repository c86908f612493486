"""Evaluation metrics on cases with known answers."""
import torch

from guidance.metrics import frechet_distance, precision_recall, row_diversity


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


def test_row_diversity():
    assert row_diversity(torch.ones(5, 3)) == 0.0
    assert abs(row_diversity(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) - 5.0) < 1e-9
