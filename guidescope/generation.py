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
    CheckedRequest made against the same classes, T and conditioning."""
    against = (len(bundle.class_names), bundle.num_timesteps, bundle.conditioning)
    if isinstance(request, CheckedRequest):
        if tuple(request[1:]) == against:
            return request.request
        request = request.request
    return check(request, *against).request


def _steps(bundle: Bundle, request: Request, items: Sequence[int], diagnostics: bool) -> Iterator[Step]:
    shape = (len(items), *bundle.sample_shape)
    return sample_loop(bundle.denoiser(), bundle.diffusion(request.steps), shape,
                       request.guidance(items, diagnostics, bundle.codec.clip_bound), request.noise(items),
                       request.sampler, request.eta, bundle.variance, bundle.device, bundle.guidance_order)


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
