"""Data parallelism under `torchrun --standalone --nproc_per_node 2` on CPU (gloo): two processes
train the UNet (with its EMA) as one process does over the same global batches, only rank 0
writes, and --resume continues the run in both."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from guidescope.networks.registry import build_model
from guidescope.training import command as train

REPO = Path(__file__).resolve().parent.parent
# Output agreement between the two runs. DistributedDataParallel averages the two ranks' gradients,
# (g_0 + g_1) / 2, where one process sums the eight images in one pass: the same numbers added in
# another order, so the weights differ in the last bits (outputs agree to ~1e-7 here). A rank that
# trained on the wrong rows, or gradients left unaveraged, move the outputs by 1e-3 and more.
OUTPUT_ATOL = 1e-5
# Outputs, not weights, are compared: a bias right before a one-channel GroupNorm changes no output,
# so its gradient is zero in exact arithmetic, and Adam, which divides by the gradient's own size,
# turns the rounding noise there into lr-sized steps of arbitrary sign.


def write_folder(root: Path) -> Path:
    """Three classes of six distinct RGB images (8 to 13 pixels wide), each tinted by its class."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            image = rng.integers(0, 80, (8 + i, 9 + i % 3, 3), dtype=np.uint8)
            image[..., k] += 170
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def options(folder: Path, out: Path, steps: int, *extra: str) -> list[str]:
    # --dropout 0: dropout masks come from each rank's own generator, so they cannot match one process's.
    return ["unet", "--out", str(out), "--image-folder", str(folder), "--image-size", "8", "--steps", str(steps),
            "--save-every", "2", "--log-every", "2", "--batch-size", "8", "--base-channels", "8",
            "--num-timesteps", "100", "--dropout", "0", "--lr", "1e-3", "--ema-decay", "0.9", "--device", "cpu", *extra]


def torchrun(argv: list[str]) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "guidescope.train", *argv]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def outputs(out: Path, state: bool = False) -> torch.Tensor:
    """The exported UNet's (state=False: its EMA weights) or the raw weights' eps on a fixed batch."""
    config = json.loads((out / "unet.json").read_text())["config"]
    model = build_model("unet", config).eval()
    if state:
        tensors = load_file(out / "train-unet" / "state.safetensors")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    else:
        model.load_state_dict(load_file(out / "unet.safetensors"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 8, 8, generator=gen)
    with torch.no_grad():
        return model(x, torch.randint(100, (12,), generator=gen), torch.arange(12) % 4)


class Run(NamedTuple):
    ema: torch.Tensor               # the exported (EMA) UNet's outputs on a fixed batch
    raw: torch.Tensor               # the raw weights' outputs (from the resumable state)
    loss_steps: list[int]           # steps of the log's loss records
    saved_steps: list[int]          # steps of the log's save records
    files: list[str]                # what OUT holds
    training: dict                  # unet.json's training record


def finished(out: Path) -> Run:
    records = [json.loads(line) for line in (out / "train-unet.log").read_text().splitlines()]
    return Run(outputs(out), outputs(out, state=True), [r["step"] for r in records if "loss" in r],
               [r["step"] for r in records if r.get("saved")], sorted(os.listdir(out)),
               json.loads((out / "unet.json").read_text())["training"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[str, int], Run]:
    """One process and two, 4 steps and then resumed to 6: {("single" or "two", steps): Run}."""
    root = tmp_path_factory.mktemp("distributed")
    folder = write_folder(root / "images")
    results = {}
    for name in ("single", "two"):
        out = root / name
        for steps, extra in ((4, ()), (6, ("--resume",))):
            if name == "single":
                assert train.main(options(folder, out, steps, "--threads", "1", *extra)) == 0
            else:
                torchrun(options(folder, out, steps, *extra))
            results[name, steps] = finished(out)
    return results


def test_two_processes_train_what_one_does(runs):
    for steps in (4, 6):  # the second after --resume
        one, two = runs["single", steps], runs["two", steps]
        torch.testing.assert_close(two.ema, one.ema, rtol=0, atol=OUTPUT_ATOL)
        torch.testing.assert_close(two.raw, one.raw, rtol=0, atol=OUTPUT_ATOL)
        assert (one.ema - one.raw).abs().max() > 100 * OUTPUT_ATOL  # the EMA is not the raw weights
    assert runs["two", 6].training["processes"] == 2 and runs["single", 6].training["processes"] == 1


def test_only_rank_0_writes(runs):
    two = runs["two", 4]
    assert two.files == ["train-unet", "train-unet.log", "unet.json", "unet.safetensors"]
    assert two.loss_steps == [2, 4] and two.saved_steps == [2, 4]  # one log line per event, not one per rank
    assert two.training["steps"] == 4 and two.training["batch_size"] == 8


def test_resume_continues_under_torchrun(runs):
    before, after = runs["two", 4], runs["two", 6]
    assert after.loss_steps == [2, 4, 6] and after.saved_steps == [2, 4, 6] and after.training["steps"] == 6
    assert (after.raw - before.raw).abs().max() > 100 * OUTPUT_ATOL  # the weights moved on
    assert (after.ema - before.ema).abs().max() > 100 * OUTPUT_ATOL
