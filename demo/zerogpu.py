"""Hugging Face ZeroGPU: a Space with ZeroGPU hardware lends a GPU only to functions decorated
with `spaces.GPU`. Elsewhere the package is absent (or its decorator leaves functions alone)."""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def on_gpu(fn: F) -> F:
    """fn under spaces.GPU when the `spaces` package is installed (Hugging Face ZeroGPU), else fn."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)
