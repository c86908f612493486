"""The full-size ADM 64x64 ImageNet model in the app, on random weights (nothing can be downloaded
here): build the preset's networks (296 M + 65 M parameters), save them as guided-diffusion's .pt
files, convert them (`python -m guidescope.convert guided-diffusion --preset 64x64`), start
`python app.py --checkpoints DIR` and ask /generate for 1 image in 2 DDIM steps through
gradio_client. Prints the seconds per step the page shows (measured at start) and those of the
request. A check to run by hand, not a test: its numbers depend on the machine and its load.

    python scripts/adm_full_size_check.py [--work DIR] [--threads 1]

It needs about 3 GiB of memory and 3 GiB of disk in --work (default: a temporary folder).
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from guidescope import convert  # noqa: E402
from guidescope.networks.adm import ADMClassifier, ADMUNet  # noqa: E402
from scripts.launcher import running_app  # noqa: E402

PRESET = "64x64"
STEP_TEXT = re.compile(r"one step of one image takes ([0-9.]+) s here")


def write_random_checkpoints(work: Path) -> tuple[Path, Path]:
    """The preset's UNet and classifier with torch's initial weights, as guided-diffusion state dicts."""
    preset = convert.PRESETS[PRESET]
    flags = convert.parse_flags(f"{preset.model_flags} {preset.sample_flags}")
    paths = work / f"{PRESET}_diffusion.pt", work / f"{PRESET}_classifier.pt"
    torch.manual_seed(0)
    for path, build in zip(paths, (lambda: ADMUNet(convert.unet_config(flags)),
                                   lambda: ADMClassifier(convert.classifier_config(
                                       convert.parse_flags(preset.classifier_flags, flags))))):
        model = build()
        print(f"{path.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", flush=True)
        torch.save(model.state_dict(), path)
        del model
        gc.collect()
    return paths


def page_step_seconds(url: str) -> tuple[float | None, str]:
    """The seconds per step the page's info line shows, and that line."""
    with urllib.request.urlopen(f"{url}config", timeout=30) as response:
        config = json.loads(response.read())
    for component in config.get("components", []):
        value = component.get("props", {}).get("value")
        if isinstance(value, str) and STEP_TEXT.search(value):
            return float(STEP_TEXT.search(value)[1]), value
    return None, ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=None, help="folder for the .pt files and the converted bundle")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the app")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="adm-full-size-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model_path, classifier_path = write_random_checkpoints(work)
    out = work / "imagenet-64"
    if convert.main(["guided-diffusion", "--model", str(model_path), "--classifier", str(classifier_path),
                     "--preset", PRESET, "--out", str(out)]) != 0:
        return 1
    gc.collect()
    print(f"converted in {time.perf_counter() - start:.0f} s; defaults.json: {(out / 'defaults.json').read_text()}")

    from gradio_client import Client

    start = time.perf_counter()
    with running_app(out, threads=args.threads, timeout_s=900, log_path=work / "app.log") as url:
        print(f"app up in {time.perf_counter() - start:.0f} s at {url}")
        shown, line = page_step_seconds(url)
        print(f"the page: {line}")
        client = Client(url, verbose=False)
        steps = 2
        start = time.perf_counter()
        job = client.submit(class_name="golden retriever", scale=1.0, unet="conditional", cfg_scale=0.0, steps=steps,
                            sampler="ddim", eta=0.0, num_images=1, seed=0, api_name="/generate")
        outputs = job.result(timeout=900)
        seconds = time.perf_counter() - start
        frames = job.outputs()
        print(f"/generate: 1 image, {steps} DDIM steps in {seconds:.1f} s ({seconds / steps:.2f} s per step, "
              f"with the request's overhead); {len(frames)} frames; last status: {outputs[2]!r}")
    if shown is None:
        print("error: the page shows no seconds per step", file=sys.stderr)
        return 1
    print(f"seconds per step: {shown:.2f} (page, timed at start) / {seconds / steps:.2f} (this request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
