"""The training loop every network shares: AdamW with gradient clipping, an EMA where the kind
wants one, periodic saves with held-out metrics, resume, tqdm and a JSON-lines log, a wall-time
budget, and data parallelism across the processes of a `torchrun` group.

Each step draws one global batch of `batch_size` images (indices and every random number, from
one generator seeded alike on every rank); rank r trains on rows r, r + W, ... of it and
DistributedDataParallel averages the gradients, so W processes take the same steps as one
process would, up to the order of float additions. Rank 0 alone writes files.

Files under OUT (KIND is unet, classifier, evaluator, autoencoder or guide_classifier):
    KIND.safetensors + KIND.json   the model (EMA weights where kept) and its config
    train-KIND/                    the resumable state (guidescope.training.state)
    train-KIND.log                 one JSON record per log interval and per save

The pieces: the network and its data-parallel wrapper (build_network, Context.data_parallel), the
update (guidescope.training.optimizer), the resumable state (guidescope.training.state) and the loop (Trainer).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from .. import checkpoints
from .data import Dataset
from .distributed import Context
from .optimizer import Optimizer
from .state import Progress, TrainState
from .tasks import Task

INTERIM_TEST_IMAGES = 2000  # held-out images scored at interim saves (all of them at the end)


@dataclass(frozen=True)
class LoopConfig:
    out: str                        # checkpoint folder
    steps: int = 100_000            # optimizer steps (the time budget may stop sooner)
    minutes: float | None = None    # wall-time budget; stop and save when spent
    batch_size: int = 64            # global batch, split evenly over the ranks
    seed: int = 0                   # initial weights, batches and every random draw
    save_every: int = 1000          # steps between interim saves (held-out metrics, model, state)
    log_every: int = 100            # steps between log records of the running loss
    resume: bool = False            # continue from OUT/train-KIND/
    amp: bool = False               # bf16 autocast (fast on GPUs, slow on CPUs)
    channels_last: bool = False     # NHWC weights and batches (faster convolutions on recent GPUs)
    compile: bool = False           # torch.compile the network
    command: str = ""               # recorded in the checkpoint
    init: str | None = None         # fine-tune: start from the weights of INIT/KIND.safetensors
    train_only: str | None = None   # with init: train this part of the network (e.g. "head"), keep the rest

    def __post_init__(self):
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.minutes is not None and self.minutes < 0:
            raise ValueError(f"minutes must not be negative, got {self.minutes}")
        if self.train_only and not self.init:
            raise ValueError("training only a part of a network needs the rest from --init")


class Network(NamedTuple):
    model: nn.Module                # the task's network
    net: nn.Module                  # what the loss calls: the model, data-parallel and maybe compiled
    origin: dict                    # with loop.init: what the training record says of the start


def build_network(task: Task, loop: LoopConfig, train: Dataset, context: Context) -> Network:
    """The task's network for train's images (N, C, H, W), seeded alike on every rank (or loaded
    from loop.init, only loop.train_only of it trained), in loop's memory format."""
    torch.manual_seed(loop.seed)  # the same initial weights on every rank
    _, channels, size, _ = train.images.shape
    model = task.build(len(train.class_names), size, channels).to(context.device)
    origin = init_from(model, loop.init, task.name) if loop.init else {}
    if loop.train_only:
        train_only(model, loop.train_only)
    model, net = context.data_parallel(model.to(memory_format=memory_format(loop)))
    return Network(model, torch.compile(net) if loop.compile else net, origin)


def init_from(model: nn.Module, folder: str, kind: str) -> dict:
    """Load folder/KIND's weights into model by tensor name. Returns the training record's account
    of the start: the folder with that network's own training record (so a chain of fine-tunes
    keeps every stage), and the names model has and that network lacks, which keep their initial
    values (a new head, say). Tensors only that network has are left out; a shared name of another
    shape, or no shared name, raises ValueError."""
    init, record = checkpoints.load(folder, kind)
    source, target = init.state_dict(), model.state_dict()
    shared = source.keys() & target.keys()
    reshaped = sorted(n for n in shared if source[n].shape != target[n].shape)
    if reshaped or not shared:
        raise ValueError(f"{folder}'s {kind} is another network: "
                         + (f"{', '.join(reshaped[:3])} differ in shape" if reshaped else "no tensor in common"))
    model.load_state_dict({n: source[n] for n in shared}, strict=False)
    new, left_out = tuple(n for n in target if n not in source), sorted(source.keys() - shared)
    for names, what in ((new, "start from their initial values"), (left_out, "are left out")):
        if names:
            tqdm.write(f"{kind}: {len(names)} tensors {what} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")
    origin = {"init": {"folder": str(folder), "training": record.get("training")}}
    return {**origin, "new_tensors": list(new)} if new else origin


def train_only(model: nn.Module, part: str) -> None:
    """Freeze every parameter outside the submodule named part (its own parameters stay trainable);
    raises ValueError when part names none."""
    inside = {n for n, _ in model.named_parameters() if n == part or n.startswith(part + ".")}
    if not inside:
        parts = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ValueError(f"{part!r} names no part of the network; its parts: {', '.join(parts)}")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in inside)


def memory_format(loop: LoopConfig) -> torch.memory_format:
    return torch.channels_last if loop.channels_last else torch.contiguous_format


class Batches:
    """The global batches of a run, drawn from one generator seeded alike on every rank."""

    def __init__(self, task: Task, train: Dataset, loop: LoopConfig, context: Context):
        self.task, self.loop, self.ctx = task, loop, context
        self.images, self.labels = train.images.to(context.device), train.labels.to(context.device)
        self.generator = torch.Generator(context.device).manual_seed(loop.seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """This rank's share of the next global batch: images, labels and the task's random numbers."""
        n = self.loop.batch_size
        index = torch.randint(len(self.images), (n,), device=self.ctx.device, generator=self.generator)
        draws = self.task.draw(n, (n, *self.images.shape[1:]), self.generator)
        x0 = self.ctx.share(self.images[index]).contiguous(memory_format=memory_format(self.loop))
        return x0, self.ctx.share(self.labels[index]), tuple(self.ctx.share(d) for d in draws)


class Outputs:
    """The files of one kind under OUT: the exported model, the resumable state and the log. Rank 0
    alone writes them."""

    def __init__(self, task: Task, loop: LoopConfig, train: Dataset, context: Context, origin: dict):
        self.task, self.loop, self.train, self.ctx, self.origin = task, loop, train, context, origin
        self.state_dir = Path(loop.out) / f"train-{task.name}"
        self.log_path = Path(loop.out) / f"train-{task.name}.log"
        if context.is_main:
            Path(loop.out).mkdir(parents=True, exist_ok=True)

    def save(self, model: nn.Module, state: TrainState, progress: Progress, metrics: dict, final: bool) -> None:
        """The exported model, the resumable state and a log record of progress and metrics."""
        self.export(model, progress, metrics)
        state.save(self.state_dir, progress)
        self.log({"step": progress.step, "saved": True, "final": final, **metrics})
        if metrics:
            tqdm.write(f"{self.task.name} step {progress.step}: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def export(self, model: nn.Module, progress: Progress, metrics: dict) -> None:
        """KIND.safetensors and KIND.json: model (the EMA weights where kept) with its config, the
        class names, the data record and the training record."""
        loop, task, train = self.loop, self.task, self.train
        training = {"command": loop.command, "steps": progress.step,
                    "wall_time_minutes": round(progress.elapsed / 60, 1), "device": str(self.ctx.device),
                    "processes": self.ctx.world_size, "batch_size": loop.batch_size, "seed": loop.seed,
                    "loss": task.loss_name, **task.hyperparameters(), **metrics}
        if loop.train_only:
            training["trained_only"] = loop.train_only
        training.update(self.origin)
        data = {"data": train.record.to_json()} if train.record else {}
        if train.latent:
            data["latent"] = train.latent
        checkpoints.save(model, loop.out, task.name, class_names=list(train.class_names), training=training, **data,
                         **task.checkpoint_extras())

    def log(self, record: dict) -> None:
        if self.ctx.is_main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Trainer:
    """Trains task's network on train, scoring it on test at each save."""

    def __init__(self, task: Task, loop: LoopConfig, train: Dataset, test: Dataset, context: Context):
        if loop.batch_size % context.world_size:
            raise ValueError(f"the batch size {loop.batch_size} must divide evenly over {context.world_size} processes")
        self.task, self.loop, self.ctx, self.test = task, loop, context, test
        self.num_classes = len(train.class_names)  # also the UNet's null label
        self.model, self.net, origin = build_network(task, loop, train, context)
        self.optimizer = Optimizer(task, self.model, loop.steps)  # after DDP: the EMA starts equal on every rank
        self.batches = Batches(task, train, loop, context)
        self.state = TrainState(self.model, self.optimizer.ema_model, self.optimizer.adamw, self.batches.generator)
        self.files = Outputs(task, loop, train, context, origin)
        self.step, self.elapsed = 0, 0.0

    # -- one step -----------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        x0, y, draws = self.batches.next()
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.loop.amp):
            loss = self.task.loss(self.net, x0, y, draws, self.num_classes)
        self.optimizer.update(loss, self.step)
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
            self.step, self.elapsed = self.state.load(self.files.state_dir, self.ctx.device)
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
            self.after_step(running, bar)
        bar.close()
        if running is not None:
            self.finite(running)
        return self.finish(final=True)

    def after_step(self, running: torch.Tensor, bar: tqdm) -> None:
        """A log record every loop.log_every steps, an interim save every loop.save_every."""
        if self.step % self.loop.log_every == 0:
            value = self.finite(running)
            bar.set_postfix(loss=f"{value:.4f}")
            self.files.log({"step": self.step, "loss": value, "minutes": round(self.elapsed / 60, 2)})
        if self.step % self.loop.save_every == 0 and self.step < self.loop.steps:
            self.finite(running)  # never save weights that a non-finite loss has reached
            self.finish(final=False)
            self.reseed_dropout()

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
        model = self.optimizer.exported.eval()
        metrics = self.task.held_out(model, self.test, len(self.test.images) if final else INTERIM_TEST_IMAGES)
        self.model.train()
        self.files.save(model, self.state, Progress(self.step, self.elapsed), metrics, final)
        return metrics
