"""One registry of the networks a checkpoint's JSON can name: its "kind" and "config" rebuild it."""
from __future__ import annotations

from dataclasses import asdict

from torch import nn

from .adm import ADMClassifier, ADMClassifierConfig, ADMUNet, ADMUNetConfig
from .guide_classifier import GuideClassifier, GuideClassifierConfig
from .small import (Autoencoder, AutoencoderConfig, ClassifierConfig, Evaluator, EvaluatorConfig, NoisyClassifier, UNet,
                    UNetConfig)

MODELS = {"unet": (UNet, UNetConfig), "classifier": (NoisyClassifier, ClassifierConfig),
          "evaluator": (Evaluator, EvaluatorConfig), "autoencoder": (Autoencoder, AutoencoderConfig),
          "adm_unet": (ADMUNet, ADMUNetConfig), "adm_classifier": (ADMClassifier, ADMClassifierConfig),
          "guide_classifier": (GuideClassifier, GuideClassifierConfig)}


def build_model(kind: str, config: dict) -> nn.Module:
    """Rebuild a network from its kind and config dict (as stored in the JSON beside its weights)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODELS)}")
    model_cls, config_cls = MODELS[kind]
    return model_cls(config_cls(**config))


def config_dict(model: nn.Module) -> dict:
    return asdict(model.config)
