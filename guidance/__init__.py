"""Classifier and classifier-free guidance for diffusion models, small enough to read."""
from .diffusion import GaussianDiffusion, make_betas, respace_timesteps
from .guide import GuidedDenoiser, GuidedEps, Guidance, NonFiniteError
from .samplers import SAMPLERS, SharedNoise, Step, ddim_sample, ddpm_sample, final, sample

__all__ = ["GaussianDiffusion", "make_betas", "respace_timesteps", "GuidedDenoiser", "GuidedEps", "Guidance",
           "NonFiniteError", "SAMPLERS", "SharedNoise", "Step", "ddim_sample", "ddpm_sample", "final", "sample"]
