"""The update of one training step: AdamW with the gradient norm clipped to 1, the task's learning
rate schedule (torch's LambdaLR, cosine where the task asks), and an exponential moving average of
the weights where the kind keeps one."""
from __future__ import annotations

import math

import torch
from torch import nn

from .tasks import Task

MAX_GRAD_NORM = 1.0


class Optimizer:
    """AdamW over model's parameters for a run of `steps` planned steps, and the EMA."""

    def __init__(self, task: Task, model: nn.Module, steps: int):
        self.task, self.model, self.steps = task, model, steps
        self.adamw = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=task.weight_decay)
        self.lr_schedule: torch.optim.lr_scheduler.LambdaLR | None = None  # made at the first update
        self.ema = None
        if task.uses_ema:
            from timm.utils import ModelEmaV3  # here, not at the top: importing timm takes seconds

            self.ema = ModelEmaV3(model, decay=task.ema_decay, use_warmup=True)

    @property
    def ema_model(self) -> nn.Module | None:
        return None if self.ema is None else self.ema.module

    @property
    def exported(self) -> nn.Module:
        """The weights a checkpoint gets: the EMA's where kept."""
        return self.model if self.ema is None else self.ema.module

    def cosine(self, step: int) -> float:
        """The factor of task.lr at a step: cosine decay from 1 at step 0 to 0 at the last planned step."""
        return 0.5 * (1 + math.cos(math.pi * step / self.steps))

    def start_schedule(self, step: int) -> None:
        """The cosine schedule, positioned at `step` (a resumed run starts past 0)."""
        for group in self.adamw.param_groups:
            group["initial_lr"] = self.task.lr
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.adamw, self.cosine, last_epoch=step - 1)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Backpropagate loss and update the weights and the EMA; step counts the steps before this one."""
        self.adamw.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        if self.task.cosine_lr and self.lr_schedule is None:  # a constant rate stays as AdamW holds it
            self.start_schedule(step)
        self.adamw.step()
        if self.lr_schedule is not None:
            self.lr_schedule.step()
        if self.ema:
            self.ema.update(self.model, step=step)
