"""Sample-quality metrics in an evaluator's feature space, and their noise.

Frechet distance (Heusel et al. 2017) and k-NN precision and recall (Kynkaanniemi et al. 2019).
Features are (N, D) tensors; computations run in float64. bootstrap_scores resamples the
generated images to measure how much each number would move with other samples.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

PRECISION_RECALL_K = 3  # k of the k-NN balls of precision and recall (Kynkaanniemi et al. use 3)
CONFIDENCE = 0.95       # the bootstrap intervals' coverage


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite (D, D) matrix."""
    vals, vecs = torch.linalg.eigh(matrix)
    return vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T


def _trace_sqrt_product(sqrt_a: torch.Tensor, cov_b: torch.Tensor) -> torch.Tensor:
    """Tr((S_a S_b)^(1/2)): the sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2),
    which is symmetric, so no general matrix square root is needed."""
    return torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for Gaussians fitted to features a and b."""
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    cross = _trace_sqrt_product(_sqrt_psd(cov_a), cov_b)
    return float((a.mean(0) - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


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


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PRECISION_RECALL_K) -> PrecisionRecall:
    """Each set's manifold is the union of balls reaching each point's k-th nearest neighbour."""
    real, fake = real.double(), fake.double()
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _covered(fake, real, _knn_radii(real, k)).double().mean()
    recall = _covered(real, fake, _knn_radii(fake, k)).double().mean()
    return PrecisionRecall(float(precision), float(recall))


class Scores(NamedTuple):
    """The four numbers of one set of generated images (or, field by field, their bootstrap replicates)."""
    fidelity: float     # share the evaluator assigns to the requested class
    fd: float           # Frechet distance to the real features
    precision: float    # share of generated images inside the real manifold
    recall: float       # share of real images inside the generated manifold


class RealReference:
    """The real images' side of the metrics, computed once for every setting.

    features (M, D): the Gaussian (mu, S) fitted to them is the Frechet reference.
    pr_features (P, D): the real set of precision and recall, with its k-NN radii.
    """

    def __init__(self, features: torch.Tensor, pr_features: torch.Tensor, k: int = PRECISION_RECALL_K):
        if len(pr_features) <= k:
            raise ValueError(f"precision/recall with k={k} needs more than {k} real images")
        features = features.double()
        cov = torch.cov(features.T)
        self.mu, self.trace, self.sqrt_cov = features.mean(0), cov.trace(), _sqrt_psd(cov)
        self.pr_features, self.k = pr_features.double(), k
        self.pr_radii = _knn_radii(self.pr_features, k)

    def frechet(self, fake: torch.Tensor) -> float:
        """Frechet distance of fake features (N, D) to the reference, as frechet_distance(real, fake)."""
        fake = fake.double()
        cov = torch.cov(fake.T)
        return float((self.mu - fake.mean(0)).square().sum() + self.trace + cov.trace()
                     - 2 * _trace_sqrt_product(self.sqrt_cov, cov))


def bootstrap_scores(reference: RealReference, features: torch.Tensor, correct: torch.Tensor,
                     strata: torch.Tensor, resamples: int, seed: int = 0) -> tuple[Scores, Scores]:
    """Scores of generated images and `resamples` bootstrap replicates of them.

    features (N, D): the generated images' features; correct (N,) bool: the evaluator agrees with
    the requested class; strata (N,): each image's class. A replicate redraws, with replacement,
    as many images of each class as there are (the class counts are fixed by the design). Precision
    and fidelity are shares over the redrawn images; the Frechet distance is refitted; recall
    rebuilds the generated manifold from the distinct redrawn images (a copy is not its own
    neighbour: that would shrink its ball to nothing). The real images stay fixed: every setting is
    measured against the same ones.

    The same seed draws the same image indices for every setting of the same size, so replicate r
    of two settings describes the same resample: their difference is a paired bootstrap.

    Runs on the device of features and reference (both alike); the draws come from a CPU generator,
    so they are the same on every device.

    Returns (scores on all images, Scores whose fields are tuples of `resamples` replicates);
    a recall replicate is NaN when fewer than k + 1 distinct images were drawn.
    """
    generated = _Generated(reference, features, correct)
    everything = torch.arange(len(features), device=features.device)
    point = generated.scores(everything, everything)
    replicates = [generated.scores(index, torch.unique(index))
                  for index in (i.to(features.device) for i in _stratified_draws(strata, resamples, seed))]
    return point, Scores(*(tuple(r[m] for r in replicates) for m in range(len(Scores._fields))))


def _stratified_draws(strata: torch.Tensor, resamples: int, seed: int) -> Iterator[torch.Tensor]:
    """`resamples` index sets (on the CPU), each redrawing with replacement as many images of each
    stratum as it has, strata in sorted order."""
    generator = torch.Generator().manual_seed(seed)
    members = [torch.nonzero(strata.cpu() == c)[:, 0] for c in torch.unique(strata.cpu())]
    for _ in range(resamples):
        yield torch.cat([m[torch.randint(len(m), (len(m),), generator=generator)] for m in members])


class _Generated:
    """The generated images' side of the metrics, with the distances that every resample reuses."""

    def __init__(self, reference: RealReference, features: torch.Tensor, correct: torch.Tensor):
        self.reference, self.fake = reference, features.double()
        self.in_real = _covered(self.fake, reference.pr_features, reference.pr_radii).double()  # (N,) precision indicator
        self.fake_to_fake = torch.cdist(self.fake, self.fake)                                  # (N, N)
        self.real_to_fake = torch.cdist(reference.pr_features, self.fake)                      # (P, N)
        self.correct = correct.to(self.fake.device).double()

    def scores(self, index: torch.Tensor, distinct: torch.Tensor) -> Scores:
        """Scores of the images fake[index] (repeats allowed); recall from fake[distinct]."""
        return Scores(float(self.correct[index].mean()), self.reference.frechet(self.fake[index]),
                      float(self.in_real[index].mean()), self.recall(distinct))

    def recall(self, index: torch.Tensor) -> float:
        """Share of the real images inside the manifold of fake[index] (distinct images), NaN with k or fewer."""
        k = self.reference.k
        if len(index) <= k:
            return float("nan")
        radii = self.fake_to_fake[index][:, index].kthvalue(k + 1, dim=1).values
        return float((self.real_to_fake[:, index] <= radii[None]).any(dim=1).double().mean())


def noised_by_quarter(diffusion, images: torch.Tensor, seed: int = 1234) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, t) for each quarter of the timestep range [0, T/4), ..., [3T/4, T): q_sample(x_0, t)
    of every image, with t drawn uniformly from the quarter; the same draws for the same seed."""
    T, g = diffusion.num_timesteps, torch.Generator().manual_seed(seed)
    for q in range(4):
        t = torch.randint(q * T // 4, (q + 1) * T // 4, (len(images),), generator=g)
        yield diffusion.q_sample(images, t, torch.randn(images.shape, generator=g)), t


@torch.no_grad()
def noisy_correct_by_quarter(classifier, diffusion, images: torch.Tensor, labels: torch.Tensor,
                             seed: int = 1234, batch_size: int = 500) -> list[torch.Tensor]:
    """For each quarter of the timestep range (noised_by_quarter), (n,) bool: whether the
    noise-conditioned classifier's most likely class of each noised image is its label."""
    device = next(classifier.parameters()).device
    return [torch.cat([classifier(x.to(device), s.to(device)).argmax(1).cpu() == y
                       for x, s, y in zip(x_t.split(batch_size), t.split(batch_size), labels.split(batch_size))])
            for x_t, t in noised_by_quarter(diffusion, images, seed)]


def noisy_accuracy_by_quarter(classifier, diffusion, images: torch.Tensor, labels: torch.Tensor,
                              seed: int = 1234, batch_size: int = 500) -> list[float]:
    """Accuracy of a noise-conditioned classifier on q_sample(x_0, t), with t drawn uniformly
    from each quarter of the timestep range (noised_by_quarter); as in guided-diffusion."""
    return [int(c.sum()) / len(c) for c in noisy_correct_by_quarter(classifier, diffusion, images, labels, seed,
                                                                   batch_size)]


def paired_difference(a: torch.Tensor, b: torch.Tensor, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) of per-item scores on the same items (n,), with the central CONFIDENCE
    percentile interval of its bootstrap (the items redrawn with replacement, the same draw for both)."""
    a, b = a.double(), b.double()
    index = torch.randint(len(a), (resamples, len(a)), generator=torch.Generator().manual_seed(seed))
    diffs = a[index].mean(1) - b[index].mean(1)
    tail = (1 - CONFIDENCE) / 2
    low, high = torch.quantile(diffs, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(a.mean() - b.mean()), low, high


def plug_in_accuracy_by_quarter(train_images: torch.Tensor, train_labels: torch.Tensor, diffusion,
                                images: torch.Tensor, labels: torch.Tensor, seed: int = 1234,
                                batch_size: int = 100) -> list[float]:
    """noisy_accuracy_by_quarter of the Bayes classifier of the training set itself, no network:
    with x_0 drawn from the N training images, q(x_t | x_0^i) = N(sqrt(alpha-bar_t) x_0^i,
    (1 - alpha-bar_t) I) gives p(c | x_t) = sum_{i in c} q(x_t | x_0^i) / sum_i q(x_t | x_0^i).

    On held-out images this is what the training data alone says about x_t: as the noise grows,
    the sum over many neighbours approaches the true posterior, so in the noisy quarters it is
    about the most any classifier trained on these images can reach (at low noise it is a nearest
    neighbour, which a network beats). train_images (N, ...) and images (n, ...) in one space."""
    x0 = train_images.flatten(1).float()                       # (N, D)
    x0_sq = (x0 ** 2).sum(1)
    members = torch.nn.functional.one_hot(train_labels).T.bool()  # (classes, N)
    accuracies = []
    for x_t, t in noised_by_quarter(diffusion, images, seed):
        abar = diffusion.alphas_cumprod[t].float()
        correct = 0
        for x, a, y in zip(x_t.flatten(1).split(batch_size), abar.split(batch_size), labels.split(batch_size)):
            # -||x_t - sqrt(a) x_0^i||^2 / (2 (1 - a)), the terms of x_t alone dropped: (b, N)
            log_q = (2 * a.sqrt()[:, None] * (x @ x0.T) - a[:, None] * x0_sq) / (2 * (1 - a))[:, None]
            per_class = torch.stack([log_q[:, m].logsumexp(1) for m in members], 1)  # (b, classes)
            correct += int((per_class.argmax(1) == y).sum())
        accuracies.append(correct / len(images))
    return accuracies
