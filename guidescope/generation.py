"""From a sampling request to its stream of steps: the one entry point of the library.

    stream(bundle, request)            every item in one batch, one Step per network evaluation
                                       (the app streams these)
    generate(bundle, request, batch)   all images, in batches of `batch` items (the command line,
                                       the evaluation and the benchmarks)

Both check the request where it enters the library (guidescope.request.check; a CheckedRequest,
which the app has made, is not checked again) and seed every image by the one rule of guidescope.noise,
so image i of a seed is the same from every caller and any batch size.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterator, NamedTuple, Sequence

import torch

from .bundle import Bundle
from .images import to_uint8
from .request import CheckedRequest, Request, check
from .samplers import Step, sample_loop


class Samples(NamedTuple):
    images: torch.Tensor    # (N, C, H, W) uint8 in [0, 255], row-major (row k // n, image k % n)
    labels: torch.Tensor    # (N,) int64, the class each image was guided toward


def _checked(bundle: Bundle, request: Request | CheckedRequest) -> Request:
    """The request, checked against this bundle (guidescope.request.check) unless it comes as a
    CheckedRequest made against the same classes, T and conditioning; and a clean classifier for
    its training-free rows."""
    against = (len(bundle.class_names), bundle.num_timesteps, bundle.conditioning)
    if isinstance(request, CheckedRequest) and tuple(request[1:]) == against:
        request = request.request
    else:
        request = check(request.request if isinstance(request, CheckedRequest) else request, *against).request
    for guide in {row.guide for row in request.rows} - {None}:
        bundle.training_free(guide)  # raises where the bundle has no clean classifier to guide with
    return request


def _groups(request: Request, items: Sequence[int]) -> list[list[int]]:
    """The items by sample loop: by sampler and steps, then by guidance method (the noise-aware rows
    together, each training-free setting with its schedule apart: the recurrence acts where the
    schedule does); in order of first appearance."""
    groups: dict = {}
    for k in items:
        row = request.row_of(k)
        method = None if row.guide is None else (row.guide, row.schedule)
        groups.setdefault((request.sampler_of(row), request.steps_of(row), method), []).append(k)
    return list(groups.values())


def _group_steps(bundle: Bundle, request: Request, items: Sequence[int], diagnostics: bool) -> Iterator[Step]:
    """One group's sample loop, each Step with its items' seconds so far (the loop's, shared evenly)."""
    row = request.row_of(items[0])
    method = bundle.denoiser() if row.guide is None else bundle.training_free(row.guide)
    sampler = request.sampler_of(row)
    loop = sample_loop(method, bundle.diffusion(request.steps_of(row)), (len(items), *bundle.sample_shape),
                       request.guidance(items, diagnostics, bundle.codec.clip_bound), request.noise(items),
                       sampler, request.eta if sampler == "ddim" else 0.0, bundle.variance, bundle.device)
    seconds = 0.0
    while True:
        start = time.perf_counter()
        step = next(loop, None)
        if step is None:
            return
        seconds += time.perf_counter() - start
        yield step._replace(seconds=torch.full((len(items),), seconds / len(items)))


def _steps(bundle: Bundle, request: Request, items: Sequence[int], diagnostics: bool) -> Iterator[Step]:
    """Every item's steps: one sample loop per group (_groups), run side by side and merged back
    into item order, so a batch may mix methods, samplers and step counts from the same noise. At
    each of the request's steps a group takes its step where it has reached it (Request.step_of)
    and otherwise shows its last one again."""
    groups = _groups(request, items)
    if len(groups) == 1 and request.steps_of(request.row_of(items[0])) == request.steps:
        yield from _group_steps(bundle, request, items, diagnostics)
        return
    order = torch.tensor([k for group in groups for k in group]).argsort()
    loops = [_group_steps(bundle, request, group, diagnostics) for group in groups]
    rows = [request.row_of(group[0]) for group in groups]
    parts: list[Step | None] = [None] * len(groups)
    for index in range(request.steps):
        for g, (loop, row) in enumerate(zip(loops, rows)):
            if parts[g] is None or parts[g].index < request.step_of(row, index):
                parts[g] = next(loop)
        longest = next((p for p, row in zip(parts, rows) if request.steps_of(row) == request.steps), parts[0])
        yield _merged(parts, order)._replace(index=index, timestep=longest.timestep)


def _merged(parts: Sequence[Step], order: torch.Tensor) -> Step:
    """One Step of the groups' Steps (at the first one's index and timestep), its items in request
    order (order: their permutation). A quantity one group lacks is 0 there (the guidance norm and
    term of unguided items), or NaN (a log-probability no classifier gave)."""
    def joined(name: str, missing: float):
        values = [getattr(p, name) for p in parts]
        if all(v is None for v in values):
            return None
        like = next(v for v in values if v is not None)
        filled = [v if v is not None else torch.full((len(p.sample), *like.shape[1:]), missing, dtype=like.dtype,
                                                     device=like.device) for v, p in zip(values, parts)]
        return torch.cat(filled)[order]
    first = parts[0]
    return Step(first.index, first.timestep, torch.cat([p.sample for p in parts])[order],
                torch.cat([p.pred_xstart for p in parts])[order], joined("log_prob", math.nan),
                joined("guidance_norm", 0.0), joined("guidance_term", 0.0), joined("seconds", 0.0))


def stream(bundle: Bundle, request: Request | CheckedRequest, diagnostics: bool = True) -> Iterator[Step]:
    """Every item of the request as one batch, one Step per step (a generator: nothing runs until
    iterated). A Step holds the sampler's tensors: latents for a latent bundle (bundle.codec.decode
    turns them into images). diagnostics: also compute log p(c | x_t) where guidance is off (for charts).
    Raises ValueError for an invalid request, at once."""
    request = _checked(bundle, request)
    return _steps(bundle, request, range(request.num_items), diagnostics)


def generate(bundle: Bundle, request: Request | CheckedRequest, batch_size: int = 64,
             on_step: Callable[[Step], None] | None = None) -> Samples:
    """All images of the request, sampled batch_size items at a time on bundle.device; on_step is
    called with every Step of every batch. Returns uint8 images (N, C, H, W) and labels (N,)."""
    request = _checked(bundle, request)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    images = []
    for start in range(0, request.num_items, batch_size):
        items = range(start, min(start + batch_size, request.num_items))
        for step in _steps(bundle, request, items, diagnostics=False):
            if on_step is not None:
                on_step(step)
        images.append(torch.from_numpy(to_uint8(bundle.codec.decode(step.sample))))
    return Samples(torch.cat(images), request.labels())
