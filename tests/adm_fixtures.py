"""The one recipe for the random weights of the tiny ADM fixtures, shared by the script that ran
the reference (scripts/adm_reference.py) and by tests/test_adm.py, so the weights themselves
need not be committed: both sides fill the same keys, in sorted order, from one seeded generator."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "adm"


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """float32 weights for every key: matrices and kernels ~ N(0, 1 / fan_in), GroupNorm scales
    ~ 1 + N(0, 0.01), other vectors ~ N(0, 0.01). Nothing is zero, so no branch is trivially the identity."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        if len(shape) > 1:
            w = w / math.sqrt(math.prod(shape[1:]))
        else:
            w = 0.1 * w + (1.0 if key.endswith("weight") else 0.0)
        weights[key] = w.float()
    return weights


def checksum(weights: dict[str, torch.Tensor]) -> float:
    """sum_i (i + 1) * sum(weights[key_i]) over the sorted keys: equal numbers, equal weights (in practice)."""
    return sum((i + 1) * float(weights[k].double().sum()) for i, k in enumerate(sorted(weights)))


def shapes_of(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def read_json(name: str) -> dict:
    return json.loads((DATA / name).read_text())
