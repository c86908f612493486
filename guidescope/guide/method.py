"""The one interface the samplers call: a guidance method takes one sampling step.

A method owns what guidance does inside a step: which networks run at x_t, what x-hat_0 the
solver is given, how the step is shifted, whether it is repeated. The solver (guidescope.samplers)
owns only the update from x_t and x-hat_0 to x_{t-1}; the sampler loop knows neither's insides.

    classifier-free   guidescope.guide.classifier_free   the UNet alone, or Ho & Salimans' CFG
    noise-aware       guidescope.guide.noise_aware       Dhariwal & Nichol's classifier of x_t, on top
    training-free     guidescope.guide.training_free     a clean classifier through x-hat_0 (TFG and
                                                          its special cases), on top

A new method is one file with a GuidanceMethod subclass and its line in guidescope.guide.METHODS.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .settings import Guidance

Noise = Callable[[tuple, torch.device], torch.Tensor]  # noise(shape, device) -> a fresh N(0, I) draw


class Prediction(NamedTuple):
    """What a method makes of x_t: the x-hat_0 the solver steps with, and what the page charts."""
    pred_xstart: torch.Tensor             # (B, C, H, W) x-hat_0, after its threshold and the guidance
    v: torch.Tensor | None                # (B, C, H, W) a learn_sigma UNet's variance output, or None
    log_prob: torch.Tensor | None         # (B,) log p_phi(c | x_t, t) of the noise-aware classifier
    guidance_norm: torch.Tensor | None    # (B,) L2 norm of guidance_term
    guidance_term: torch.Tensor | None    # (B, C, H, W) what the guidance changed (the method says what)


class Move(NamedTuple):
    """One step of a method: x_{t-1}, the x_t the solver stepped from (after its correction: a
    multistep solver keeps it) and the prediction."""
    sample: torch.Tensor                  # (B, C, H, W) x_{t-1}
    x_from: torch.Tensor                  # (B, C, H, W)
    prediction: Prediction


class GuidanceMethod:
    """One way of guiding a sampler. A subclass sets name and title, and predict (x-hat_0 at x_t,
    after which the solver steps as usual) or, where guidance also acts after the solver's step or
    repeats it, step."""
    name = ""                           # what requests, the command line and the API call it
    title = ""                          # how pages and reports name it
    samplers: tuple[str, ...] | None = None  # the samplers it runs with (guidescope.samplers.SAMPLERS); None: all

    def predict(self, x: torch.Tensor, i: int, solver, guidance: Guidance) -> Prediction:
        """x-hat_0 and the diagnostics at x_t (B, C, H, W), schedule index i of solver.diffusion."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, i: int, solver, guidance: Guidance, noise: Noise, history: tuple) -> Move:
        """x_t -> x_{t-1}: the prediction at x_t, the solver's correction of x_t, its step."""
        prediction = self.predict(x, i, solver, guidance)
        x_from = solver.correct(x, i, prediction.pred_xstart, history)
        return Move(solver.step(x_from, i, prediction.pred_xstart, noise, history, prediction.v), x_from, prediction)
