"""A clean-image classifier p(c | x_0) from any timm architecture, to guide a sampler through the
predicted clean image x̂₀ (training-free guidance: ∇_{x_t} log p(c | x̂₀(x_t))), so it must be
differentiable end to end.

It must never be the evaluator that judges the samples (guidescope.networks.small.Evaluator, a
timm ResNet): the shipped one is another family, a ConvNeXt (Liu et al. 2022), whose LayerNorm
keeps every image of a batch apart (no BatchNorm statistics), so its gradients are per image.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import resize

# The shipped network: timm's ConvNeXt with a 1x1 "patch" stem (28x28x16, no blocks at full size:
# depth 0), then blocks at 14x14x32, 7x7x64 and 3x3x128: 22 MFLOP forward per 28x28 image, 0.42M
# weights. timm's ConvNeXt always has four stages, and a stem of patch 2 would put the first blocks
# at 7x7 (its first stage then strides too).
SHIPPED_ARCHITECTURE = "convnext_atto"
SHIPPED_MODEL_ARGS = {"patch_size": 1, "depths": (0, 2, 2, 2), "dims": (16, 32, 64, 128)}


@dataclass(frozen=True)
class GuideClassifierConfig:
    architecture: str = SHIPPED_ARCHITECTURE  # a timm model name (timm.list_models()); never pretrained
    model_args: dict = field(default_factory=lambda: dict(SHIPPED_MODEL_ARGS))  # more keyword arguments
                                    # of timm.create_model; lists become tuples, so a config read back
                                    # from JSON equals the one written
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28            # the side of the images it receives
    input_size: int | None = None   # the side the timm network sees (resized bilinearly); None: image_size
    input_range: tuple = (-1.0, 1.0)  # (lo, hi) of the pixel values the timm network sees

    def __post_init__(self):
        import timm  # here, not at the top: importing timm takes seconds

        if not timm.is_model(self.architecture):
            close = difflib.get_close_matches(self.architecture, timm.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"unknown timm architecture {self.architecture!r}; choose one of timm.list_models() "
                             f"({len(timm.list_models())} names)" + (f", such as {', '.join(close)}" if close else ""))
        args = {name: tuple(v) if isinstance(v, list) else v for name, v in self.model_args.items()}
        object.__setattr__(self, "model_args", args)
        object.__setattr__(self, "input_size", self.input_size or self.image_size)
        object.__setattr__(self, "input_range", tuple(float(v) for v in self.input_range))
        if len(self.input_range) != 2 or not self.input_range[0] < self.input_range[1]:
            raise ValueError(f"input_range must be (lo, hi) with lo < hi, got {self.input_range}")


class GuideClassifier(nn.Module):
    """Logits (B, num_classes) of images (B, in_channels, image_size, image_size) in [-1, 1]: each
    image is resized to input_size (when it differs) and mapped affinely onto input_range,
    x ↦ lo + (x + 1) (hi - lo) / 2, before the timm network."""

    def __init__(self, cfg: GuideClassifierConfig):
        import timm

        super().__init__()
        self.config = cfg
        try:
            self.net = timm.create_model(cfg.architecture, pretrained=False, num_classes=cfg.num_classes,
                                         in_chans=cfg.in_channels, **cfg.model_args)
        except TypeError as err:  # an argument the architecture does not take
            raise ValueError(f"timm's {cfg.architecture} refuses the model arguments {cfg.model_args}: {err}") from None
        lo, hi = cfg.input_range
        self.scale, self.shift = (hi - lo) / 2, (hi + lo) / 2  # (-1, 1) -> (lo, hi); exactly x for (-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.input_size != self.config.image_size:
            x = resize(x, self.config.input_size)
        return self.net(x * self.scale + self.shift)
