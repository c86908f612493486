"""Checkpoints: weights in safetensors, a JSON config beside them from which the network is
rebuilt. Loading never unpickles.

Layout of a checkpoint folder:
    unet.safetensors        + unet.json        {"kind", "config", "class_names", "diffusion", "training"};
                                               "diffusion" is {"schedule", "num_timesteps"} and, for a
                                               converted ADM model (guidescope.convert), "learn_sigma"
                                               and "guidance_order" (guidescope.guide.ORDERS)
    classifier.safetensors  + classifier.json
    evaluator.safetensors   + evaluator.json
    guide_classifier.safetensors + guide_classifier.json   a clean-image classifier to guide through x̂₀
    autoencoder.safetensors + autoencoder.json   latent bundles only: the unet and the classifier
                                               then carry {"latent": {"autoencoder", "sha256",
                                               "scale_factor", "shape", "clip_bound"}} (guidescope.codec)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .networks.registry import build_model, config_dict

REBUILD_HINT = "rebuild it with `python -m guidescope.train {kind} --out {folder}` (see checkpoints/fashion-mnist/README.md)"


def rebuild_hint(kind: str, folder) -> str:
    return REBUILD_HINT.format(kind=kind, folder=folder)  # the trainer names kinds as the checkpoints do


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit its config."""


def save(model: nn.Module, folder: str | Path, kind: str, name: str | None = None, **metadata) -> Path:
    """Write NAME.safetensors and NAME.json ({"kind", "config", **metadata}) into folder. name is
    what load_bundle reads (unet, classifier, ...), by default the kind; a converted network
    names its own kind (adm_unet is saved as unet)."""
    folder, name = Path(folder), name or kind
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / f"{name}.safetensors")
    meta = {"kind": kind, "config": config_dict(model), **metadata}
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder / f"{name}.safetensors"


def read_config(folder: str | Path, name: str) -> dict:
    path = Path(folder) / f"{name}.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint config {path}; " + rebuild_hint(name, folder)) from None
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
    hint = rebuild_hint(meta["kind"], folder)
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


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (ties a latent network to the autoencoder it was trained on)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
