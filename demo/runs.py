"""One sampling run as the app sees it, recorded step by step so the UI can stream, scrub and
export it. The sampling itself is guidance.generation.stream(bundle, request): every row of the
request in one batch, laid out row-major (item r * n + j is image j of row r), image j of every
row drawing x_T and each step's noise from the seed's stream j, so rows differ only by their
guidance, and a row is the same images `python -m guidance.sample --seed S` draws.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from guidance.checkpoints import Bundle
from guidance.images import to_uint8
from guidance.samplers import Step

from .arguments import Run


class Push(NamedTuple):
    """The classifier's push k_t w(t) g of one step, kept as a colour-map index: level 128 is 0,
    1 is -scale and 255 is +scale. Colour checkpoints keep the mean over channels."""
    levels: np.ndarray          # (B, H, W) uint8
    scale: float                # s, the largest |push| over the batch; 0 when no item is guided


def push(term: torch.Tensor | None, shape: tuple[int, ...]) -> Push:
    """Push of a step's guidance term (B, C, H, W), or of None (no item guided) for images of shape
    (B, C, H, W): levels = round(128 + 127 m / s) with m the channel mean and s = max |m|."""
    if term is None:
        return Push(np.full((shape[0], *shape[2:]), 128, np.uint8), 0.0)
    mean = term.detach().float().mean(1).cpu()
    scale = float(mean.abs().max())
    if scale == 0:
        return Push(np.full(mean.shape, 128, np.uint8), 0.0)
    return Push((128 + 127 * mean / scale).round().to(torch.uint8).numpy(), scale)


class Frame(NamedTuple):
    """One completed step, kept small: uint8 images and per-row numbers."""
    index: int                  # 0-based step; the last is steps - 1
    timestep: int               # original t of the x_t the step started from
    sample: np.ndarray          # (B, C, H, W) uint8, x_{t-1} (the image after the last step)
    pred_xstart: np.ndarray     # (B, C, H, W) uint8, x-hat_0 predicted from x_t
    push: Push                  # the guidance term k_t w(t) g the step subtracted from eps
    class_prob: np.ndarray      # (rows,) mean p_phi(c | x_t, t) of each row, under the guidance classifier
    guidance_norm: np.ndarray   # (rows,) mean L2 norm of each image's k_t w(t) g (0 where unguided)


class RowStats(NamedTuple):
    """Per-row summaries of a set of images, each (rows,) float (NaN where undefined)."""
    classifier_prob: np.ndarray  # mean p_phi(c | x) of the guidance classifier
    evaluator_prob: np.ndarray | None  # mean p(c | x) of the independent evaluator, when loaded
    diversity: np.ndarray       # mean pairwise RMS pixel distance in [0, 1] units; NaN for one image


def _row_means(values: torch.Tensor | None, rows: int, missing: float) -> np.ndarray:
    """(B,) -> (rows,) means; `missing` for every row when values is None."""
    if values is None:
        return np.full(rows, missing)
    return values.detach().float().reshape(rows, -1).mean(1).cpu().numpy()


@dataclass
class Recording:
    """Everything a run produced so far; lives in the session (gr.State) for scrubbing and export."""
    run: Run
    x_T: np.ndarray             # (B, C, H, W) uint8, the shared starting noise
    frames: list[Frame] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    state: str = "running"      # "running", "finished", "stopped" or "failed"
    stats: RowStats | None = None  # of the latest images: x-hat_0 while running, the samples when finished

    def add(self, step: Step) -> Frame:
        rows = len(self.run.request.rows)
        prob = None if step.log_prob is None else step.log_prob.exp()
        frame = Frame(step.index, step.timestep, to_uint8(step.sample), to_uint8(step.pred_xstart),
                      push(step.guidance_term, tuple(step.sample.shape)), _row_means(prob, rows, np.nan),
                      _row_means(step.guidance_norm, rows, 0.0))
        self.frames.append(frame)
        self.elapsed = time.monotonic() - self.started
        return frame

    def end(self, state: str, stats: RowStats | None) -> None:
        self.state, self.stats = state, stats
        self.elapsed = time.monotonic() - self.started


def initial_noise(run: Run, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """x_T (B, C, H, W) exactly as the sampler draws it: the first draw of the request's noise."""
    request = run.request
    return request.noise(range(request.batch_size))((request.batch_size, *image_shape), "cpu")


def diversity(images: torch.Tensor, n_rows: int) -> np.ndarray:
    """Mean pairwise RMS distance between the images of each row, in [0, 1] pixel units.

    images: (rows * n, C, H, W) in [-1, 1]. Returns (rows,); NaN when a row has one image.
    """
    per_row = images.float().reshape(n_rows, -1, images[0].numel())  # (rows, n, D)
    n, dim = per_row.shape[1], per_row.shape[2]
    if n < 2:
        return np.full(n_rows, np.nan)
    distances = torch.cdist(per_row, per_row) / (2 * dim ** 0.5)  # (rows, n, n); /2 maps [-1, 1] to [0, 1]
    return (distances.sum((1, 2)) / (n * (n - 1))).cpu().numpy()


def row_stats(bundle: Bundle, run: Run, images: torch.Tensor, t: int = 0) -> RowStats:
    """Per-row confidence in each image's target class, and diversity, of images (B, C, H, W) in
    [-1, 1] read at timestep t.

    The guidance classifier sees them as x_t at t (0: clean samples); the evaluator, when the
    checkpoint has one, sees them as clean images.
    """
    rows = len(run.request.rows)
    labels = run.request.labels().to(images.device)[:, None]  # (B, 1)
    with torch.no_grad():
        timesteps = torch.full((images.shape[0],), t, device=images.device)
        probs = bundle.classifier(images, timesteps).float().softmax(-1).gather(1, labels)[:, 0]
        classifier_prob = _row_means(probs, rows, np.nan)
        evaluator_prob = None
        if bundle.evaluator is not None:
            probs = bundle.evaluator(images).float().softmax(-1).gather(1, labels)[:, 0]
            evaluator_prob = _row_means(probs, rows, np.nan)
    return RowStats(classifier_prob, evaluator_prob, diversity(images, rows))
