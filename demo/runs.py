"""One sampling run as the app sees it: rows of guidance settings that share their noise, run
as one batch, and recorded step by step so the UI can stream, scrub and export them.

A batch is laid out row-major, rows x images_per_row: item r * n + j is image j of row r. Image j
of every row draws x_T and each step's noise from the seed's stream j (guidance.generation.ItemNoise),
so the rows differ only by their guidance, and a row is the same images that
`python -m guidance.sample --seed S` draws for the same settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Iterator, NamedTuple

import numpy as np
import torch

from guidance.checkpoints import Bundle
from guidance.generation import ItemNoise
from guidance.guide import Guidance, GuidedDenoiser
from guidance.images import to_uint8
from guidance.samplers import Step, sample

# Classifier-free guidance eps-tilde = (1 + w) eps(x_t, c) - w eps(x_t, null) is exactly the
# unconditional eps(x_t, null) at w = -1. Rows on the unconditional UNet get this value when they
# share a batch with classifier-free rows (guidance.Guidance has one cfg_scale for the batch).
UNCONDITIONAL_CFG = -1.0


class Row(NamedTuple):
    label: str                  # how the table, the chart legend and the grid name the row
    scale: float                # classifier guidance w
    cfg_scale: float | None     # classifier-free w_cfg; None = the unconditional UNet eps(x_t, null)
    varies: str = "w"           # the strength the row stands for, "w" or "w_cfg" (sets its chart colour)


@dataclass(frozen=True)
class RunSettings:
    """A validated request (see validate.py)."""
    class_index: int
    class_name: str
    rows: tuple[Row, ...]
    images_per_row: int
    steps: int
    sampler: str                # "ddim" or "ddpm"
    eta: float                  # DDIM only
    seed: int

    @property
    def batch_size(self) -> int:
        return len(self.rows) * self.images_per_row

    def guidance(self) -> Guidance:
        """Per-item w and w_cfg, each row's values repeated over its images: (B,) tensors."""
        n = self.images_per_row
        scale = torch.tensor([row.scale for row in self.rows]).repeat_interleave(n)
        cfg = None
        if any(row.cfg_scale is not None for row in self.rows):
            cfg = torch.tensor([UNCONDITIONAL_CFG if row.cfg_scale is None else row.cfg_scale
                                for row in self.rows]).repeat_interleave(n)
        return Guidance.make(self.class_index, scale, cfg, batch_size=self.batch_size)

    def parameters(self) -> str:
        """The settings as one line of JSON (embedded in the PNG and shown in the status)."""
        record = asdict(self)
        record["rows"] = [row._asdict() for row in self.rows]
        return json.dumps(record, ensure_ascii=False)


class Frame(NamedTuple):
    """One completed step, kept small: uint8 images and per-row numbers."""
    index: int                  # 0-based step; the last is steps - 1
    timestep: int               # original t of the x_t the step started from
    sample: np.ndarray          # (B, C, H, W) uint8, x_{t-1} (the image after the last step)
    pred_xstart: np.ndarray     # (B, C, H, W) uint8, x-hat_0 predicted from x_t
    class_prob: np.ndarray      # (rows,) mean p_phi(c | x_t, t) of each row, under the guidance classifier


class RowStats(NamedTuple):
    """Per-row summaries of a set of images, each (rows,) float (NaN where undefined)."""
    classifier_prob: np.ndarray  # mean p_phi(c | x) of the guidance classifier
    evaluator_prob: np.ndarray | None  # mean p(c | x) of the independent evaluator, when loaded
    diversity: np.ndarray       # mean pairwise RMS pixel distance in [0, 1] units; NaN for one image


@dataclass
class Recording:
    """Everything a run produced so far; lives in the session (gr.State) for scrubbing and export."""
    settings: RunSettings
    x_T: np.ndarray             # (B, C, H, W) uint8, the shared starting noise
    frames: list[Frame] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    state: str = "running"      # "running", "finished", "stopped" or "failed"
    stats: RowStats | None = None  # of the latest images: x-hat_0 while running, the samples when finished

    def add(self, step: Step) -> Frame:
        n_rows = len(self.settings.rows)
        prob = (step.log_prob.exp().reshape(n_rows, -1).mean(1).cpu().numpy()
                if step.log_prob is not None else np.full(n_rows, np.nan))
        frame = Frame(step.index, step.timestep, to_uint8(step.sample), to_uint8(step.pred_xstart), prob)
        self.frames.append(frame)
        self.elapsed = time.monotonic() - self.started
        return frame

    def end(self, state: str, stats: RowStats | None) -> None:
        self.state, self.stats = state, stats
        self.elapsed = time.monotonic() - self.started


def noise(settings: RunSettings) -> ItemNoise:
    """The run's noise: image j of every row gets the same x_T and the same noise at every step."""
    return ItemNoise(settings.seed, list(range(settings.images_per_row)) * len(settings.rows))


def initial_noise(settings: RunSettings, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T exactly as the sampler will draw it: the first draw of the run's noise."""
    return noise(settings)(shape, "cpu")


def image_shape(bundle: Bundle, settings: RunSettings) -> tuple[int, int, int, int]:
    config = bundle.unet.config
    return settings.batch_size, config.in_channels, config.image_size, config.image_size


def steps(bundle: Bundle, settings: RunSettings, device) -> Iterator[Step]:
    """The library's sampler for these settings: one guidance.Step per denoising step."""
    model = GuidedDenoiser(bundle.unet, bundle.classifier, bundle.unet.null_label)
    return sample(model, bundle.diffusion(settings.steps), image_shape(bundle, settings), settings.guidance(),
                  noise(settings), sampler=settings.sampler, eta=settings.eta, device=device)


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


def row_stats(bundle: Bundle, settings: RunSettings, images: torch.Tensor, t: int = 0) -> RowStats:
    """Per-row class confidence and diversity of images (B, C, H, W) in [-1, 1], read at timestep t.

    The guidance classifier sees them as x_t at t (0: clean samples); the evaluator, when the
    checkpoint has one, sees them as clean images.
    """
    n_rows, label = len(settings.rows), settings.class_index
    with torch.no_grad():
        timesteps = torch.full((images.shape[0],), t, device=images.device)
        probs = bundle.classifier(images, timesteps).float().softmax(-1)[:, label]
        classifier_prob = probs.reshape(n_rows, -1).mean(1).cpu().numpy()
        evaluator_prob = None
        if bundle.evaluator is not None:
            probs = bundle.evaluator(images).float().softmax(-1)[:, label]
            evaluator_prob = probs.reshape(n_rows, -1).mean(1).cpu().numpy()
    return RowStats(classifier_prob, evaluator_prob, diversity(images, n_rows))
