"""Training the diffusion UNet, the noise-conditioned classifier and the clean-image evaluator.

    python -m guidance.train diffusion  --out checkpoints/fashion-mnist --minutes 150
    python -m guidance.train classifier --out checkpoints/fashion-mnist --minutes 20
    python -m guidance.train evaluator  --out checkpoints/fashion-mnist --minutes 10

Each run logs progress (tqdm and a JSON-lines log), writes its model every --save-every steps
and at the end, and keeps a resumable state (weights, EMA, optimizer, step) under
OUT/train-KIND/; --resume continues from it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.utils import ModelEmaV3
from tqdm import tqdm

from . import checkpoints
from .data import DataError, load_dataset
from .diffusion import SCHEDULES, GaussianDiffusion
from .metrics import noisy_accuracy_by_quarter
from .runtime import configure
from .models import ClassifierConfig, Evaluator, EvaluatorConfig, NoisyClassifier, UNet, UNetConfig

KINDS = {"diffusion": "unet", "classifier": "classifier", "evaluator": "evaluator"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m guidance.train", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--data-dir", help="folder with the Fashion-MNIST idx files (default: Debian's)")
    p.add_argument("--image-folder", help="train on a folder with one subfolder of images per class")
    p.add_argument("--download", action="store_true", help="fetch Fashion-MNIST with torchvision")
    p.add_argument("--steps", type=int, default=100_000, help="optimizer steps (the time budget may stop sooner)")
    p.add_argument("--minutes", type=float, default=None, help="wall-time budget; stop and save when spent")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 diffusion, 1e-3 classifiers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train-KIND/state.safetensors")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (fast on GPUs, slow on CPUs)")
    p.add_argument("--base-channels", type=int, default=None, help="network width (default per kind)")
    # diffusion only
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--num-timesteps", type=int, default=1000)
    p.add_argument("--p-uncond", type=float, default=0.2, help="probability of the null label (CFG training)")
    p.add_argument("--input-perturbation", type=float, default=0.0, help="DDPM-IP gamma (0 = off; 0.1 in the paper)")
    p.add_argument("--ema-decay", type=float, default=0.9995)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.save_every < 1 or args.log_every < 1:
        p.error("--steps, --batch-size, --save-every and --log-every must be positive")
    if not 0 <= args.p_uncond < 1:
        p.error("--p-uncond must be in [0, 1)")
    return args


def build(args, num_classes: int, image_size: int, channels: int):
    common = dict(image_size=image_size, in_channels=channels, num_classes=num_classes)
    width = {"base_channels": args.base_channels} if args.base_channels else {}
    if args.kind == "diffusion":
        return UNet(UNetConfig(**common, **width))
    if args.kind == "classifier":
        return NoisyClassifier(ClassifierConfig(**common, **width))
    return Evaluator(EvaluatorConfig(**{k: v for k, v in common.items()}))


class Trainer:
    """One optimizer loop over in-memory data with EMA, periodic saves and resume."""

    def __init__(self, args, data, test):
        self.args, self.device = args, torch.device(args.device)
        torch.manual_seed(args.seed)
        self.images, self.labels = data.images.to(self.device), data.labels.to(self.device)
        self.test = test
        self.class_names = data.class_names
        _, c, h, _ = data.images.shape
        self.model = build(args, len(data.class_names), h, c).to(self.device)
        self.lr = args.lr or (2e-4 if args.kind == "diffusion" else 1e-3)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr,
                                     weight_decay=0.0 if args.kind == "diffusion" else 0.05)
        self.ema = ModelEmaV3(self.model, decay=args.ema_decay, use_warmup=True) if args.kind == "diffusion" else None
        self.diffusion = GaussianDiffusion.from_schedule(args.schedule, args.num_timesteps)
        self.generator = torch.Generator(self.device).manual_seed(args.seed)
        self.step, self.elapsed = 0, 0.0
        self.state_dir = Path(args.out) / f"train-{args.kind}"
        self.log_path = Path(args.out) / f"train-{args.kind}.log"
        Path(args.out).mkdir(parents=True, exist_ok=True)

    # -- losses -----------------------------------------------------------------------------
    def batch(self):
        idx = torch.randint(len(self.images), (self.args.batch_size,), device=self.device, generator=self.generator)
        return self.images[idx], self.labels[idx]

    def loss(self, x0, y):
        """Returns (loss, logits or None) for one batch."""
        n = len(x0)
        if self.args.kind == "evaluator":
            # Light augmentation: shifts of up to 2 pixels.
            x0 = torch.roll(x0, shifts=tuple(torch.randint(-2, 3, (2,)).tolist()), dims=(2, 3))
            logits = self.model(x0)
            return F.cross_entropy(logits, y), logits
        t = torch.randint(self.args.num_timesteps, (n,), device=self.device, generator=self.generator)
        noise = torch.randn(x0.shape, device=self.device, generator=self.generator)
        if self.args.kind == "classifier":
            logits = self.model(self.diffusion.q_sample(x0, t, noise), t)
            return F.cross_entropy(logits, y), logits
        drop = torch.rand(n, device=self.device, generator=self.generator) < self.args.p_uncond
        y = torch.where(drop, torch.full_like(y, self.model.null_label), y)
        # DDPM-IP (Ning et al. 2023): noise the input with eps + gamma * xi, still regress eps.
        perturbed = noise + self.args.input_perturbation * torch.randn(x0.shape, device=self.device, generator=self.generator)
        x_t = self.diffusion.q_sample(x0, t, perturbed)
        return F.mse_loss(self.model(x_t, t, y), noise), None

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def held_out_accuracy(self, n: int = 2000) -> dict:
        """Test accuracy of the evaluator, or of the classifier per quarter of the timestep range."""
        model = self.model.eval()
        x0, y = self.test.images[:n], self.test.labels[:n]
        if self.args.kind == "evaluator":
            correct = sum((model(xb.to(self.device)).argmax(1).cpu() == yb).sum() for xb, yb in zip(x0.split(500), y.split(500)))
            out = {"test_acc": float(correct) / len(x0)}
        else:
            quarters = noisy_accuracy_by_quarter(model, self.diffusion, x0, y)
            out = {f"acc_q{q}": acc for q, acc in enumerate(quarters)}
        model.train()
        return out

    # -- saving and resuming ----------------------------------------------------------------
    def export(self, metrics: dict):
        """Write the shipped model (EMA weights for the diffusion model) with its config."""
        model = self.ema.module if self.ema else self.model
        training = {"command": "python -m guidance.train " + " ".join(sys.argv[1:]), "steps": self.step,
                    "wall_time_minutes": round(self.elapsed / 60, 1), "device": str(self.device),
                    "batch_size": self.args.batch_size, "seed": self.args.seed, **metrics}
        if self.args.kind == "diffusion":
            training["p_uncond"] = self.args.p_uncond
        elif self.args.kind == "classifier":
            training["loss"] = "cross-entropy on q_sample(x_0, t)"
        extra = {} if self.args.kind == "evaluator" else {
            "diffusion": {"schedule": self.args.schedule, "num_timesteps": self.args.num_timesteps}}
        checkpoints.save(model, self.args.out, KINDS[self.args.kind], class_names=list(self.class_names),
                         training=training, **extra)

    def save_state(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema:
            tensors.update({f"ema.{k}": v for k, v in self.ema.module.state_dict().items()})
        opt = self.opt.state_dict()
        for i, s in opt["state"].items():
            tensors.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in s.items()})
        tensors["rng"] = self.generator.get_state()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, self.state_dir / "state.safetensors")
        (self.state_dir / "state.json").write_text(json.dumps(
            {"step": self.step, "elapsed": self.elapsed, "param_groups": opt["param_groups"]}, indent=1))

    def load_state(self):
        meta_path = self.state_dir / "state.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"--resume: no saved state in {self.state_dir}")
        meta = json.loads(meta_path.read_text())
        tensors = load_file(self.state_dir / "state.safetensors", device=str(self.device))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if self.ema:
            self.ema.module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v.cpu() if name == "step" else v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.generator.set_state(tensors["rng"].cpu())
        self.step, self.elapsed = meta["step"], meta["elapsed"]

    def log(self, record: dict):
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- the loop ---------------------------------------------------------------------------
    def run(self):
        args = self.args
        if args.resume:
            self.load_state()
        budget = args.minutes * 60 if args.minutes else math.inf
        self.model.train()
        start, running = time.perf_counter() - self.elapsed, None
        bar = tqdm(total=args.steps, initial=self.step, desc=args.kind, dynamic_ncols=True, mininterval=5)
        while self.step < args.steps and self.elapsed < budget:
            x0, y = self.batch()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss, _ = self.loss(x0, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            if args.kind != "diffusion":  # classifiers: cosine decay over the planned steps
                for g in self.opt.param_groups:
                    g["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * self.step / args.steps))
            self.opt.step()
            if self.ema:
                self.ema.update(self.model, step=self.step)
            self.step += 1
            self.elapsed = time.perf_counter() - start
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.update(1)
            if self.step % args.log_every == 0:
                bar.set_postfix(loss=f"{running:.4f}")
                self.log({"step": self.step, "loss": running, "minutes": round(self.elapsed / 60, 2)})
            if self.step % args.save_every == 0 and self.step < args.steps:
                self.finish(final=False)
        bar.close()
        return self.finish(final=True)

    def finish(self, final: bool) -> dict:
        n = len(self.test.images) if final else 2000
        metrics = self.held_out_accuracy(n) if self.args.kind != "diffusion" else {}
        self.export(metrics)
        self.save_state()
        self.log({"step": self.step, "saved": True, "final": final, **metrics})
        if metrics:
            tqdm.write(f"{self.args.kind} step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics


def main(argv=None) -> int:
    args = parse_args(argv)
    configure(args.device, args.threads)
    try:
        data = load_dataset("train", args.data_dir, args.image_folder, args.download)
        test = load_dataset("test", args.data_dir, args.image_folder, args.download)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Trainer(args, data, test).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
