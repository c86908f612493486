"""Data-parallel training on PyTorch's own engine: under `torchrun`, every process joins the group
that torchrun describes in its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
without it, one process is a group of one and nothing here communicates.

    torchrun --standalone --nproc_per_node 8 -m guidescope.train unet --out DIR ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m guidescope.train ...
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    """This process's place in the group."""
    rank: int                       # 0 .. world_size - 1; rank 0 alone writes files and shows progress
    world_size: int
    device: torch.device            # on CUDA, the GPU LOCAL_RANK of this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch, rows rank, rank + world_size, ... (DistributedSampler's
        interleaving). Every rank gets the same count when the batch divides evenly."""
        return tensor[self.rank::self.world_size]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a tensor over the ranks (itself in a single process)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag on every rank, so all ranks stop on the same step."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def data_parallel(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(model, net): the model to optimize and save, and what the loss calls, the model inside
        DistributedDataParallel (whose construction copies rank 0's weights to every rank). In a
        single process, (model, model)."""
        if not self.distributed:
            return model, model
        if self.device.type == "cuda":  # batch statistics over the global batch (the evaluator's ResNet)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        gpus = [self.device] if self.device.type == "cuda" else None
        return model, DistributedDataParallel(model, device_ids=gpus)


def setup(device: str | torch.device) -> Context:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU), or a group of one."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Context(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
