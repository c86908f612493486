"""One sampling run as the app sees it, recorded step by step so the UI can stream, scrub and
export it. The sampling itself is guidescope.generation.stream(bundle, request): every row of the
request in one batch, laid out row-major (item r * n + j is image j of row r), image j of every
row drawing x_T and each step's noise from the seed's stream j, so rows differ only by their
guidance, and a row is the same images `python -m guidescope.sample --seed S` draws.

On a latent bundle the sampler's tensors are latents z_t (C, h, w): a frame shows z_t and the
classifier's push as maps, one per channel (runs.mosaic), and x-hat_0 decoded to pixels. Decoding
costs about a UNet pass, so it is not done per step: only for the frames that are shown (and
cached), and for the samples at the end.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from guidescope.bundle import Bundle
from guidescope.codec import Codec
from guidescope.images import to_model_range, to_uint8
from guidescope.samplers import Step

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


LATENT_VIEW_RANGE = 3.0  # latent maps show z in [-3, 3] (unit-variance latents) as black to white


def mosaic(z: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, 1, side, side): the C channels tiled in a square grid (row-major), each
    enlarged by the largest integer factor that fits, centred on zeros: a latent at the size of
    the images it decodes to."""
    b, c, h, w = z.shape
    cols = int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / cols))
    factor = max(1, min(side // (rows * h), side // (cols * w)))
    tiles = torch.zeros(b, rows * cols, h, w, dtype=z.dtype, device=z.device)
    tiles[:, :c] = z
    grid = tiles.reshape(b, rows, cols, h, w).permute(0, 1, 3, 2, 4).reshape(b, 1, rows * h, cols * w)
    grid = grid.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    top, left = (side - grid.shape[2]) // 2, (side - grid.shape[3]) // 2
    out = torch.zeros(b, 1, side, side, dtype=z.dtype, device=z.device)
    out[:, :, top:top + grid.shape[2], left:left + grid.shape[3]] = grid
    return out


class Frame(NamedTuple):
    """One completed step, kept small: uint8 images and per-row numbers."""
    index: int                  # 0-based step; the last is steps - 1
    timestep: int               # original t of the x_t the step started from
    sample: np.ndarray          # (B, C, H, W) uint8, x_{t-1} (the image after the last step); a
                                # latent bundle's z_{t-1} as channel maps (mosaic)
    pred_xstart: np.ndarray | None  # (B, C, H, W) uint8, x-hat_0 predicted from x_t; None on a latent
                                # bundle, whose x-hat_0 is decoded when shown (Recording.pred_xstart)
    push: Push                  # the guidance term k_t w(t) g the step subtracted from eps
    class_prob: np.ndarray      # (rows,) mean p_phi(c | x_t, t) of each row, under the guidance classifier
    guidance_norm: np.ndarray   # (rows,) mean L2 norm of each image's k_t w(t) g (0 where unguided)
    latent_xstart: torch.Tensor | None = None  # latent bundles: x-hat_0 as the sampler made it
    images: np.ndarray | None = None  # latent bundles, last step: the decoded samples (B, C, H, W) uint8
    clean_prob: np.ndarray | None = None  # (rows,) mean p(c | x-hat_0) of the clean guide classifier (decoded
                                # x-hat_0 on a latent bundle), where the bundle has one
    seconds: np.ndarray | None = None  # (rows,) each row's sampling seconds per image so far


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
    x_T: np.ndarray             # (B, C, H, W) uint8, the shared starting noise (as Frame.sample shows it)
    codec: Codec | None = None  # the bundle's (None: pixels)
    guide: torch.nn.Module | None = None  # the bundle's clean classifier, which reads each step's x-hat_0
    frames: list[Frame] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0
    state: str = "running"      # "running", "finished", "stopped", "cut" (at Limits.max_seconds) or "failed"
    stats: RowStats | None = None  # of the latest images: x-hat_0 while running, the samples when finished
    _decoded: dict = field(default_factory=dict, repr=False)  # frame index -> decoded x-hat_0 (uint8)

    @property
    def latent(self) -> bool:
        return self.codec is not None and self.codec.space == "latent"

    def add(self, step: Step, images: torch.Tensor | None = None) -> Frame:
        """Record a step. images: the decoded samples of the last step where the caller has them
        (on a latent bundle they are decoded here otherwise)."""
        rows = len(self.run.request.rows)
        prob = None if step.log_prob is None else step.log_prob.exp()
        stats = _row_means(prob, rows, np.nan), _row_means(step.guidance_norm, rows, 0.0)
        clean = self._clean_prob(step)
        seconds = None if step.seconds is None else _row_means(step.seconds, rows, np.nan)
        if not self.latent:
            frame = Frame(step.index, step.timestep, to_uint8(step.sample), to_uint8(step.pred_xstart),
                          push(step.guidance_term, tuple(step.sample.shape)), *stats, clean_prob=clean, seconds=seconds)
        else:
            side = self.codec.image_shape[-1]
            term = None if step.guidance_term is None else mosaic(step.guidance_term, side)
            last = step.index == self.run.request.steps - 1
            frame = Frame(step.index, step.timestep, latent_view(step.sample, side), None,
                          push(term, (len(step.sample), 1, side, side)), *stats,
                          latent_xstart=step.pred_xstart.detach().to("cpu", torch.float32),
                          images=to_uint8(self.codec.decode(step.sample) if images is None else images)
                          if last else None, clean_prob=clean, seconds=seconds)
            if last and torch.equal(step.pred_xstart, step.sample):  # every sampler's last step: not decoded twice
                self._decoded[step.index] = frame.images
        self.frames.append(frame)
        self.elapsed = time.monotonic() - self.started
        return frame

    def _clean_prob(self, step: Step) -> np.ndarray | None:
        """(rows,) mean p(c | x-hat_0) under the clean classifier: what a training-free guide sees
        (a latent x-hat_0 is decoded for it, and the decoded image kept for the frame's view)."""
        if self.guide is None:
            return None
        with torch.no_grad():
            images = self.codec.decode(step.pred_xstart) if self.latent else step.pred_xstart
            if self.latent:
                self._decoded[step.index] = to_uint8(images)
            labels = self.run.request.labels().to(images.device)[:, None]
            probs = self.guide(images.to(next(self.guide.parameters()).dtype)).float().softmax(-1).gather(1, labels)[:, 0]
        return _row_means(probs, len(self.run.request.rows), np.nan)

    def pred_xstart(self, frame: Frame) -> np.ndarray:
        """x-hat_0 of frame in pixels, (B, C, H, W) uint8 (decoded once, when first asked, on a latent bundle)."""
        if frame.pred_xstart is not None:
            return frame.pred_xstart
        if frame.index not in self._decoded:
            device = next(self.codec.autoencoder.parameters()).device
            self._decoded[frame.index] = to_uint8(self.codec.decode(frame.latent_xstart.to(device)))
        return self._decoded[frame.index]

    def images(self, frame: Frame) -> np.ndarray:
        """The images of frame's x_t in pixels, (B, C, H, W) uint8: the samples after the last step."""
        return frame.sample if frame.images is None else frame.images

    def end(self, state: str, stats: RowStats | None) -> None:
        self.state, self.stats = state, stats
        self.elapsed = time.monotonic() - self.started


def initial_noise(run: Run, shape: tuple[int, int, int]) -> torch.Tensor:
    """x_T (B, C, H, W) exactly as the sampler draws it, for tensors of shape (C, H, W): the first
    draw of the request's noise."""
    request = run.request
    return request.noise(range(request.num_items))((request.num_items, *shape), "cpu")


def latent_view(z: torch.Tensor, side: int) -> np.ndarray:
    """Latents (B, C, h, w) as uint8 channel maps (B, 1, side, side), z in [-LATENT_VIEW_RANGE,
    LATENT_VIEW_RANGE] from black to white."""
    return to_uint8(mosaic(z.detach().float().cpu(), side) / LATENT_VIEW_RANGE)


def start(bundle: Bundle, run: Run) -> Recording:
    """An empty Recording of run on bundle, holding x_T as the frames show it."""
    x_T = initial_noise(run, bundle.sample_shape)
    if bundle.space == "latent":
        return Recording(run, latent_view(x_T, bundle.image_shape[-1]), bundle.codec, guide=bundle.guide_classifier)
    return Recording(run, to_uint8(x_T), guide=bundle.guide_classifier)


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


def row_stats(bundle: Bundle, run: Run, sample: torch.Tensor, t: int = 0,
              images: torch.Tensor | None = None) -> RowStats:
    """Per-row confidence in each image's target class, and diversity, of the sampler's tensors
    (B, *bundle.sample_shape) read at timestep t: images in [-1, 1], or latents.

    The guidance classifier sees them as x_t at t (0: clean samples); the evaluator, when the
    checkpoint has one, sees them as clean images (decoded, on a latent bundle, unless images
    holds them already), and the diversity is measured in pixels.
    """
    rows = len(run.request.rows)
    labels = run.request.labels().to(sample.device)[:, None]  # (B, 1)
    with torch.no_grad():
        images = bundle.codec.decode(sample) if images is None else images
        timesteps = torch.full((sample.shape[0],), t, device=sample.device)
        probs = bundle.denoiser().class_log_prob(sample, timesteps, labels[:, 0]).exp()
        classifier_prob = _row_means(probs, rows, np.nan)
        evaluator_prob = None
        if bundle.evaluator is not None:
            probs = bundle.evaluator(images).float().softmax(-1).gather(1, labels)[:, 0]
            evaluator_prob = _row_means(probs, rows, np.nan)
    return RowStats(classifier_prob, evaluator_prob, diversity(images, rows))


def frame_stats(recording: Recording, frame: Frame | None) -> RowStats | None:
    """What the table shows at a frame: the run's own statistics at its finished last step;
    mid-run (and scrubbed back), p(c | x_t) of that step and the diversity of its x-hat_0 per row in
    pixels (decoded on a latent bundle), no evaluator; None before the first step."""
    if frame is None:
        return None
    if frame is recording.frames[-1] and recording.state == "finished":
        return recording.stats
    rows = len(recording.run.labels)
    return RowStats(frame.class_prob, None, diversity(to_model_range(recording.pred_xstart(frame)), rows))
