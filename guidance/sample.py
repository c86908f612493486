"""Sample images of one class from a checkpoint folder.

    python -m guidance.sample --checkpoints checkpoints/fashion-mnist --class Bag --scale 4 --out bags.png

Without --cfg-scale the UNet gets the null label (the unconditional model): --scale 0 gives
unconditional samples, --scale W pure classifier guidance. --cfg-scale 0 is the plain
conditional model, --cfg-scale W2 the classifier-free combination (both can be on at once).
OUT ending .npz holds `images` (uint8, (N, H, W) for one channel, else (N, C, H, W)) and
`labels` (int64, (N,)); OUT ending .png is a grid. Image i depends on --seed and i only, not
on --batch-size (see guidance/generation.py, which holds everything but the command line).

Run it, don't import it: `import guidance.sample` would rebind the package attribute
guidance.sample, the sampler function, to this module.
"""
if __name__ != "__main__":
    raise ImportError("guidance.sample is the command line `python -m guidance.sample`; "
                      "import generate from guidance.generation")

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from guidance.checkpoints import CheckpointError, load_bundle
from guidance.generation import check_request, class_index, generate
from guidance.guide import NonFiniteError
from guidance.images import grid
from guidance.samplers import SAMPLERS

FORMATS = (".npz", ".png")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m guidance.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", required=True, help="folder with unet and classifier checkpoints")
    p.add_argument("--class", dest="class_label", required=True, help="class index or name (any case)")
    p.add_argument("--scale", type=float, default=0.0, help="classifier guidance w (default 0: off)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free w_cfg (default: none, the unconditional model)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps, 1 to T")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--eta", type=float, default=None, help="DDIM noise, 0 (default) to 1")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="FILE.npz or FILE.png")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        p.error(f"--out must end in one of {', '.join(FORMATS)}, got {args.out!r}")
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be positive")
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    try:
        bundle = load_bundle(args.checkpoints, device)
    except CheckpointError as err:
        p.error(str(err))
    eta = 0.0 if args.eta is None else args.eta
    try:
        label = class_index(bundle.class_names, args.class_label)
        check_request(bundle, label, args.scale, args.cfg_scale, args.steps, args.sampler, eta, args.n, args.batch_size)
    except ValueError as err:
        p.error(str(err))

    batches = -(-args.n // args.batch_size)
    with tqdm(total=batches * args.steps, unit="step", desc=bundle.class_names[label], dynamic_ncols=True) as bar:
        try:
            samples = generate(bundle, label, args.scale, args.cfg_scale, args.steps, args.sampler, eta,
                               args.n, args.batch_size, args.seed, on_step=lambda _: bar.update())
        except NonFiniteError as err:
            bar.close()
            print(f"error: {err}", file=sys.stderr)
            return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        images = samples.images.numpy()
        with open(out, "wb") as f:  # a path would get ".npz" appended unless it ends in lower case ".npz"
            np.savez_compressed(f, images=images[:, 0] if images.shape[1] == 1 else images,
                                labels=samples.labels.numpy())
    else:
        grid(samples.images.numpy()).save(out)
    print(f"wrote {args.n} images of class {label} ({bundle.class_names[label]}) to {out}")
    return 0


sys.exit(main())
