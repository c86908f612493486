"""demo/adversarial.png: why a clean classifier cannot guide by its gradient at x_t itself.

    python scripts/adversarial_example.py [--checkpoints checkpoints/fashion-mnist] [--out demo/adversarial.png]

A held-out test image of one class is noised to x_t (t = --timestep). Two ways to push it toward
another class with the clean guide classifier f, the same number of steps of the same size:
  at x_t      gradient ascent on log f(target | x_t): the classifier of clean images read on a noisy
              one. Its belief in the target rises near 1 while x_t moves by a little noise, and the
              image the model makes of it, x-hat_0(x_t), is still of the first class: an adversarial
              example, not guidance.
  through x-hat_0   ascent on log f(target | x-hat_0(x_t)) through the UNet (training-free
              guidance): x-hat_0 itself moves toward the target.
The evaluator, which never guides, reads every x-hat_0. The numbers are drawn into the picture,
with the run that made it (CPU, seed, steps); nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from guidescope.bundle import load_bundle  # noqa: E402
from guidescope.images import to_uint8  # noqa: E402
from guidescope.training.data import DataSource, load  # noqa: E402


def log_p(logits: torch.Tensor, label: int) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1)[:, label]


def ascend(x: torch.Tensor, objective, steps: int, size: float) -> torch.Tensor:
    """`steps` normalised gradient steps of L2 length `size` on objective(x) (B,)."""
    for _ in range(steps):
        x_in = x.detach().requires_grad_(True)
        grad = torch.autograd.grad(objective(x_in).sum(), x_in)[0]
        x = x + size * grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None, None]
    return x.detach()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/fashion-mnist")
    p.add_argument("--out", default="demo/adversarial.png")
    p.add_argument("--source", default="Sneaker", help="the test image's class")
    p.add_argument("--target", default="Bag", help="the class both pushes steer toward")
    p.add_argument("--timestep", type=int, default=700)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=float, default=0.5, help="L2 length of each step (the image has 784 pixels)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    bundle = load_bundle(args.checkpoints, need_evaluator=True)
    names = bundle.class_names
    source, target = names.index(args.source), names.index(args.target)
    _, test = load(DataSource())
    x0 = test.images[test.labels == source][args.seed:args.seed + 1]
    diffusion = bundle.diffusion()
    t = torch.tensor([args.timestep])
    x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed)))
    unet, guide, evaluator = bundle.torch_unet or bundle.unet, bundle.guide_classifier, bundle.evaluator
    labels = torch.tensor([unet.null_label])

    def xstart(x):
        return diffusion.predict_xstart_from_eps(x, t, unet(x, diffusion.timesteps[t], labels)).clamp(-1, 1)

    at_x_t = ascend(x_t, lambda x: log_p(guide(x), target), args.steps, args.size)
    through = ascend(x_t, lambda x: log_p(guide(xstart(x)), target), args.steps, args.size)
    with torch.no_grad():
        columns = []
        for title, x in (("x_t", x_t), ("pushed at x_t", at_x_t), ("pushed through x^0", through)):
            x0_hat = xstart(x)
            columns.append((title, x, x0_hat, log_p(guide(x), target).exp().item(), log_p(guide(x0_hat), target).exp().item(),
                            log_p(evaluator(x0_hat), target).exp().item(), log_p(evaluator(x0_hat), source).exp().item(),
                            (x - x_t).norm().item()))
    picture(columns, args, names).save(args.out)
    for title, _, _, f_xt, f_x0, e_target, e_source, moved in columns:
        print(f"{title}: f({args.target}|x_t) {f_xt:.3f}, f({args.target}|x^0) {f_x0:.3f}, evaluator on x^0: "
              f"{args.target} {e_target:.3f}, {args.source} {e_source:.3f}, |x - x_t| {moved:.2f}")
    print(f"wrote {args.out}")
    return 0


def picture(columns, args, names) -> Image.Image:
    """Each column: x_t (top) and its x-hat_0 (below), at 4x, with its numbers beneath."""
    scale, pad, text_h, width = 4, 10, 92, 210
    tile = 28 * scale
    image = Image.new("RGB", (pad + len(columns) * width, 2 * tile + 3 * pad + text_h + 40), "white")
    draw = ImageDraw.Draw(image)
    for k, (title, x, x0_hat, f_xt, f_x0, e_target, e_source, moved) in enumerate(columns):
        left = pad + k * width
        draw.text((left, pad), title, fill="black")
        for row, tensor in enumerate((x, x0_hat)):
            pixels = to_uint8(tensor)[0, 0]
            tile_image = Image.fromarray(np.repeat(np.repeat(pixels, scale, 0), scale, 1))
            image.paste(tile_image, (left, 2 * pad + 10 + row * (tile + pad)))
        lines = [f"clean f({args.target} | x_t)   {f_xt:.3f}", f"clean f({args.target} | x^0)   {f_x0:.3f}",
                 f"evaluator on x^0: {args.target} {e_target:.3f}", f"evaluator on x^0: {args.source} {e_source:.3f}",
                 f"|x_t moved|  {moved:.2f}"]
        for j, line in enumerate(lines):
            draw.text((left, 3 * pad + 10 + 2 * tile + j * 16), line, fill="black")
    draw.text((pad, image.height - 26), f"top: x_t at t = {args.timestep}; below: x^0 = x-hat_0(x_t). {args.steps} "
              f"steps of L2 length {args.size:g} each, CPU, seed {args.seed} (scripts/adversarial_example.py)",
              fill="black")
    return image


if __name__ == "__main__":
    sys.exit(main())
