"""The training loop every network shares: AdamW with gradient clipping, an EMA where the kind
wants one, periodic saves with held-out metrics, resume, tqdm and a JSON-lines log, a wall-time
budget, and data parallelism across the processes of a `torchrun` group.

Each step draws one global batch of `batch_size` images (indices and every random number, from
one generator seeded alike on every rank); rank r trains on rows r, r + W, ... of it and
DistributedDataParallel averages the gradients, so W processes take the same steps as one
process would, up to the order of float additions. Rank 0 alone writes files.

Files under OUT (KIND is unet, classifier or evaluator):
    KIND.safetensors + KIND.json   the model (EMA weights where kept) and its config
    train-KIND/state.safetensors   weights, EMA, optimizer moments and generator state;
    train-KIND/state.json          step, elapsed time and optimizer settings (--resume reads both)
    train-KIND.log                 one JSON record per log interval and per save
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import checkpoints
from .data import Dataset
from .distributed import Context
from .tasks import Task

INTERIM_TEST_IMAGES = 2000  # held-out images scored at interim saves (all of them at the end)


@dataclass(frozen=True)
class LoopConfig:
    out: str                        # checkpoint folder
    steps: int = 100_000            # optimizer steps (the time budget may stop sooner)
    minutes: float | None = None    # wall-time budget; stop and save when spent
    batch_size: int = 64            # global batch, split evenly over the ranks
    seed: int = 0
    save_every: int = 1000
    log_every: int = 100
    resume: bool = False            # continue from OUT/train-KIND/
    amp: bool = False               # bf16 autocast (fast on GPUs, slow on CPUs)
    channels_last: bool = False     # NHWC weights and batches (faster convolutions on recent GPUs)
    compile: bool = False           # torch.compile the network
    command: str = ""               # recorded in the checkpoint
    init: str | None = None         # fine-tune: start from the weights of INIT/KIND.safetensors

    def __post_init__(self):
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.minutes is not None and self.minutes < 0:
            raise ValueError(f"minutes must not be negative, got {self.minutes}")


class Trainer:
    """Trains task's network on train, scoring it on test at each save."""

    def __init__(self, task: Task, loop: LoopConfig, train: Dataset, test: Dataset, context: Context):
        if loop.batch_size % context.world_size:
            raise ValueError(f"the batch size {loop.batch_size} must divide evenly over {context.world_size} processes")
        self.task, self.loop, self.ctx, self.test = task, loop, context, test
        self.device = context.device
        self.train = train._replace(images=train.images.to(self.device), labels=train.labels.to(self.device))
        self.num_classes = len(train.class_names)
        torch.manual_seed(loop.seed)  # the same initial weights on every rank
        _, channels, size, _ = train.images.shape
        self.model = task.build(self.num_classes, size, channels).to(self.device)
        if loop.init:
            self.model.load_state_dict(checkpoints.load(loop.init, task.name)[0].state_dict())
        memory_format = torch.channels_last if loop.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=memory_format)
        self.memory_format = memory_format
        self.net = self.model  # what the loss calls: wrapped for data parallelism and compilation
        if context.distributed:
            if self.device.type == "cuda":  # batch statistics over the global batch (the evaluator's ResNet)
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            gpus = [self.device] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=gpus)
        if loop.compile:
            self.net = torch.compile(self.net)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
        # After DDP's construction, which copies rank 0's weights to every rank: the EMA starts equal everywhere.
        self.ema = None
        if task.uses_ema:
            from timm.utils import ModelEmaV3  # here, not at the top: importing timm takes seconds

            self.ema = ModelEmaV3(self.model, decay=task.ema_decay, use_warmup=True)
        self.generator = torch.Generator(self.device).manual_seed(loop.seed)
        self.step, self.elapsed = 0, 0.0
        self.state_dir = Path(loop.out) / f"train-{task.name}"
        self.log_path = Path(loop.out) / f"train-{task.name}.log"
        if context.is_main:
            Path(loop.out).mkdir(parents=True, exist_ok=True)

    # -- one step -----------------------------------------------------------------------------
    def batch(self) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """This rank's share of the next global batch: images, labels and the task's random numbers."""
        n = self.loop.batch_size
        index = torch.randint(len(self.train.images), (n,), device=self.device, generator=self.generator)
        draws = self.task.draw(n, (n, *self.train.images.shape[1:]), self.generator)
        x0 = self.ctx.share(self.train.images[index]).contiguous(memory_format=self.memory_format)
        return x0, self.ctx.share(self.train.labels[index]), tuple(self.ctx.share(d) for d in draws)

    def train_step(self) -> torch.Tensor:
        x0, y, draws = self.batch()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.loop.amp):
            loss = self.task.loss(self.net, x0, y, draws, self.num_classes)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.task.cosine_lr:
            for group in self.opt.param_groups:
                group["lr"] = self.task.lr * 0.5 * (1 + math.cos(math.pi * self.step / self.loop.steps))
        self.opt.step()
        if self.ema:
            self.ema.update(self.model, step=self.step)
        self.step += 1
        return loss.detach()

    def reseed_dropout(self):
        """Dropout draws from torch's global generator, which the state file does not hold: restart it
        from (seed, step, rank) at the start and at every save, so a resumed run draws the same masks
        as an unbroken one and the ranks draw different ones."""
        torch.manual_seed((self.loop.seed * 1_000_003 + self.step) * 1_009 + self.ctx.rank)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until loop.steps or the time budget; returns the final held-out metrics (rank 0; {} elsewhere)."""
        loop = self.loop
        if loop.resume:
            self.load_state()
        self.reseed_dropout()
        budget = loop.minutes * 60 if loop.minutes is not None else math.inf
        self.model.train()
        start, running = time.perf_counter() - self.elapsed, None
        bar = tqdm(total=loop.steps, initial=self.step, desc=self.task.name, dynamic_ncols=True, mininterval=5,
                   disable=not self.ctx.is_main)
        # The loss stays on the device between log lines: reading it every step would wait for the GPU.
        while self.step < loop.steps and not (budget < math.inf and self.ctx.agree(self.elapsed >= budget)):
            loss = self.train_step()
            running = loss if running is None else 0.98 * running + 0.02 * loss
            self.elapsed = time.perf_counter() - start
            bar.update(1)
            if self.step % loop.log_every == 0:
                value = self.finite(running)
                bar.set_postfix(loss=f"{value:.4f}")
                self.log({"step": self.step, "loss": value, "minutes": round(self.elapsed / 60, 2)})
            if self.step % loop.save_every == 0 and self.step < loop.steps:
                self.finite(running)  # never save weights that a non-finite loss has reached
                self.finish(final=False)
                self.reseed_dropout()
        bar.close()
        if running is not None:
            self.finite(running)
        return self.finish(final=True)

    def finite(self, running: torch.Tensor) -> float:
        """The running loss averaged over the ranks; raises FloatingPointError once it is not finite."""
        value = self.ctx.mean(running).item()
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.task.name}: the loss is {value} by step {self.step}")
        return value

    def finish(self, final: bool) -> dict:
        """Rank 0: held-out metrics, the exported model, the resumable state and a log record."""
        if not self.ctx.is_main:
            return {}
        model = (self.ema.module if self.ema else self.model).eval()
        metrics = self.task.held_out(model, self.test, len(self.test.images) if final else INTERIM_TEST_IMAGES)
        self.model.train()
        self.export(metrics)
        self.save_state()
        self.log({"step": self.step, "saved": True, "final": final, **metrics})
        if metrics:
            tqdm.write(f"{self.task.name} step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    # -- files (rank 0 writes; every rank reads on resume) --------------------------------------
    def export(self, metrics: dict):
        """KIND.safetensors and KIND.json: the EMA weights where kept, config, classes, data and training record."""
        training = {"command": self.loop.command, "steps": self.step, "wall_time_minutes": round(self.elapsed / 60, 1),
                    "device": str(self.device), "processes": self.ctx.world_size, "batch_size": self.loop.batch_size,
                    "seed": self.loop.seed, "loss": self.task.loss_name, **self.task.hyperparameters(), **metrics}
        data = {"data": self.train.record.to_json()} if self.train.record else {}
        if self.train.latent:
            data["latent"] = self.train.latent
        checkpoints.save(self.ema.module if self.ema else self.model, self.loop.out, self.task.name,
                         class_names=list(self.train.class_names), training=training, **data,
                         **self.task.checkpoint_extras())

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
        """Every rank reads the same files (on several nodes, OUT must be a shared folder)."""
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
        if self.ctx.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
