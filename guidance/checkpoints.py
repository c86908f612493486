"""Checkpoints: weights in safetensors, a JSON config beside them from which the network is
rebuilt. Loading never unpickles.

Layout of a checkpoint folder:
    unet.safetensors        + unet.json        {"kind", "config", "class_names", "diffusion", "training"}
    classifier.safetensors  + classifier.json
    evaluator.safetensors   + evaluator.json
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .diffusion import GaussianDiffusion
from .models import build_model, config_dict

REBUILD_HINT = "rebuild it with `python -m guidance.train {kind} --out {folder}` (see checkpoints/fashion-mnist/README.md)"
TRAIN_KIND = {"unet": "diffusion"}  # the trainer's name for a model kind, where the two differ


def _rebuild_hint(kind: str, folder) -> str:
    return REBUILD_HINT.format(kind=TRAIN_KIND.get(kind, kind), folder=folder)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit its config."""


def save(model: nn.Module, folder: str | Path, kind: str, **metadata) -> Path:
    """Write KIND.safetensors and KIND.json (kind, config and the metadata) into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / f"{kind}.safetensors")
    meta = {"kind": kind, "config": config_dict(model), **metadata}
    (folder / f"{kind}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder / f"{kind}.safetensors"


def read_config(folder: str | Path, name: str) -> dict:
    path = Path(folder) / f"{name}.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint config {path}; " + _rebuild_hint(name, folder)) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"unreadable checkpoint config {path}: {err}") from None
    if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
        raise CheckpointError(f"checkpoint config {path} lacks 'kind' and 'config'")
    return meta


def load(folder: str | Path, name: str, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network from name.json and load name.safetensors into it, strictly.
    Returns (model in eval mode, metadata). Raises CheckpointError naming the file on any fault."""
    folder = Path(folder)
    meta = read_config(folder, name)
    weights = folder / f"{name}.safetensors"
    hint = _rebuild_hint(meta["kind"], folder)
    try:
        model = build_model(meta["kind"], meta["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint config {folder / f'{name}.json'} is invalid: {err}") from None
    if not weights.is_file():
        raise CheckpointError(f"missing checkpoint weights {weights}; {hint}")
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"unreadable checkpoint weights {weights} ({err}); {hint}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0:3]
        raise CheckpointError(f"weights {weights} do not fit the config {name}.json: {' '.join(first)}; {hint}") from None
    return model.to(device).eval().requires_grad_(False), meta


@dataclass(frozen=True)
class Bundle:
    """Everything the app and the evaluation need, loaded from one checkpoint folder."""
    unet: nn.Module
    classifier: nn.Module | None
    evaluator: nn.Module | None
    class_names: tuple[str, ...]
    schedule: str
    num_timesteps: int

    def diffusion(self, steps: int | None = None) -> GaussianDiffusion:
        return GaussianDiffusion.from_schedule(self.schedule, self.num_timesteps, steps)


def load_bundle(folder: str | Path, device="cpu", need_evaluator: bool = False) -> Bundle:
    """Load unet, classifier (and evaluator when present or needed) from folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    unet, meta = load(folder, "unet", device)
    classifier, _ = load(folder, "classifier", device)
    evaluator = None
    if need_evaluator or (folder / "evaluator.json").exists():
        evaluator, _ = load(folder, "evaluator", device)
    names = tuple(meta.get("class_names") or [str(i) for i in range(unet.config.num_classes)])
    if len(names) != unet.config.num_classes or classifier.config.num_classes != unet.config.num_classes:
        raise CheckpointError(f"class counts disagree in {folder}: unet {unet.config.num_classes}, "
                              f"classifier {classifier.config.num_classes}, names {len(names)}")
    for other in (classifier, evaluator):
        if other is not None and (other.config.image_size, other.config.in_channels) != (
                unet.config.image_size, unet.config.in_channels):
            raise CheckpointError(f"image sizes disagree in {folder}: unet {unet.config.image_size}px x "
                                  f"{unet.config.in_channels} channels, {type(other).__name__} "
                                  f"{other.config.image_size}px x {other.config.in_channels}")
    diffusion = meta.get("diffusion", {})
    return Bundle(unet, classifier, evaluator, names, diffusion.get("schedule", "cosine"),
                  int(diffusion.get("num_timesteps", 1000)))
