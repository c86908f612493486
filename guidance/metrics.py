"""Sample-quality metrics in an evaluator's feature space.

Frechet distance (Heusel et al. 2017) and k-NN precision and recall (Kynkaanniemi et al. 2019).
Features are (N, D) tensors; computations run in float64.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for Gaussians fitted to features a and b.

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2), which is symmetric, so no general matrix square root is needed.
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def _knn_radii(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row, shape (N,)."""
    radii = [torch.cdist(part, x).kthvalue(k + 1, dim=1).values for part in x.split(chunk)]
    return torch.cat(radii)


def _covered(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each query, whether it lies inside at least one ball (center, radius), shape (N,) bool."""
    return torch.cat([(torch.cdist(part, centers) <= radii[None]).any(dim=1) for part in queries.split(chunk)])


class PrecisionRecall(NamedTuple):
    precision: float    # share of generated samples inside the real manifold (fidelity)
    recall: float       # share of real samples inside the generated manifold (diversity)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> PrecisionRecall:
    """Each set's manifold is the union of balls reaching each point's k-th nearest neighbour."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _covered(fake, real, _knn_radii(real, k)).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k)).double().mean()
    return PrecisionRecall(float(precision), float(recall))


def row_diversity(features: torch.Tensor) -> float:
    """Mean pairwise L2 distance between the rows of (N, D) features (0 for N < 2)."""
    if len(features) < 2:
        return 0.0
    d = torch.cdist(features.double(), features.double())
    return float(d.sum() / (len(features) * (len(features) - 1)))


@torch.no_grad()
def noisy_accuracy_by_quarter(classifier, diffusion, images: torch.Tensor, labels: torch.Tensor,
                              seed: int = 1234, batch_size: int = 500) -> list[float]:
    """Accuracy of a noise-conditioned classifier on q_sample(x_0, t), with t drawn uniformly
    from each quarter of the timestep range [0, T/4), ..., [3T/4, T); as in guided-diffusion."""
    device = next(classifier.parameters()).device
    T, g = diffusion.num_timesteps, torch.Generator().manual_seed(seed)
    accuracies = []
    for q in range(4):
        t = torch.randint(q * T // 4, (q + 1) * T // 4, (len(images),), generator=g)
        x_t = diffusion.q_sample(images, t, torch.randn(images.shape, generator=g))
        correct = [(classifier(x.to(device), s.to(device)).argmax(1).cpu() == y).sum()
                   for x, s, y in zip(x_t.split(batch_size), t.split(batch_size), labels.split(batch_size))]
        accuracies.append(float(sum(correct)) / len(images))
    return accuracies
