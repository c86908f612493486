"""The resumable state of a training run, in OUT/train-KIND/ (--resume reads both files):

    state.safetensors   the weights "model.NAME", the EMA "ema.NAME", AdamW's per-parameter state
                        "opt.INDEX.NAME" and the loop generator's state "rng"
    state.json          step, elapsed seconds and AdamW's param_groups

Nested dictionaries of tensors become the file's dotted keys (join) and come back by cutting each
key at its first dot (split), so a name with dots of its own (a module path) comes back whole.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

TENSORS, META = "state.safetensors", "state.json"


class Progress(NamedTuple):
    step: int           # optimizer steps taken
    elapsed: float      # seconds spent training (the time budget counts them)


def join(sections: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{"model": {"w": t}} -> {"model.w": t}."""
    return {f"{section}.{name}": value for section, tensors in sections.items() for name, value in tensors.items()}


def split(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"model.w": t} -> {"model": {"w": t}}: the inverse of join."""
    sections: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = value
    return sections


@dataclass(frozen=True)
class TrainState:
    """The live objects whose state a resumed run restores."""
    model: nn.Module
    ema: nn.Module | None               # the averaged copy, where the kind keeps one
    optimizer: torch.optim.Optimizer
    generator: torch.Generator          # the loop's: batch indices and every random draw of a step

    def save(self, folder: Path, progress: Progress) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        opt = self.optimizer.state_dict()
        sections = {"model": self.model.state_dict()}
        if self.ema:
            sections["ema"] = self.ema.state_dict()
        sections["opt"] = join({str(i): {name: torch.as_tensor(v) for name, v in s.items()}
                                for i, s in opt["state"].items()})
        tensors = {**join(sections), "rng": self.generator.get_state()}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, folder / TENSORS)
        (folder / META).write_text(json.dumps(
            {"step": progress.step, "elapsed": progress.elapsed, "param_groups": opt["param_groups"]}, indent=1))

    def load(self, folder: Path, device: torch.device) -> Progress:
        """Restore the state saved in folder. Every rank reads the same files (on several nodes, OUT
        must be a shared folder)."""
        if not (folder / META).is_file():
            raise FileNotFoundError(f"--resume: no saved state in {folder}")
        meta = json.loads((folder / META).read_text())
        tensors = load_file(folder / TENSORS, device=str(device))
        rng = tensors.pop("rng")
        sections = split(tensors)
        self.model.load_state_dict(sections.get("model", {}))
        if self.ema:
            self.ema.load_state_dict(sections.get("ema", {}))
        state = {int(i): {name: v.cpu() if name == "step" else v for name, v in s.items()}  # AdamW keeps step on the CPU
                 for i, s in split(sections.get("opt", {})).items()}
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.generator.set_state(rng.cpu())
        return Progress(meta["step"], meta["elapsed"])
