"""Classifier and classifier-free guidance for diffusion models, small enough to read."""
from .diffusion import GaussianDiffusion, make_betas, respace_timesteps
from .guide import Guidance, GuidedEps, NoiseAwareGuidance, NonFiniteError, Schedule, Threshold
from .noise import ItemNoise
from .samplers import SAMPLERS, Step, final, sample_loop

__all__ = ["GaussianDiffusion", "make_betas", "respace_timesteps", "NoiseAwareGuidance", "GuidedEps", "Guidance",
           "NonFiniteError", "Schedule", "Threshold", "ItemNoise", "SAMPLERS", "Step", "final", "sample_loop"]
