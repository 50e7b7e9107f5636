"""BL-7.2 on PyTorch: the peak CUDA memory of one training step, from PyTorch's allocator.

:func:`cuda_step_memory` runs one synchronous step of a spec problem on the torch
backend and reads ``torch.cuda.max_memory_allocated`` around it. The figure is the
allocator's, not the reference model's: autograd keeps its own residuals (cuDNN's
batch-norm saves the input, not x-hat, for example), frees them as the backward goes,
and the step also allocates gradients and optimizer state. It is comparable across
methods on the same problem, which is what the paper's memory claims compare.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from backlink.reference.memory import state_bytes
from backlink.spec import Batch, Problem

__all__ = ["CudaStepMemory", "cuda_step_memory"]


@dataclass(frozen=True)
class CudaStepMemory:
    """Bytes above what was allocated before the step (parameters and buffers).

    ``peak``: the allocator's high-water mark during the step (the step's copy of the
    batch included). ``persistent``: still allocated after it (optimizer state).
    ``state``: gradients + optimizer state (SGD momentum or AdamW's moments) as BL-7.4
    counts them. ``activations``: ``peak - state``, the part that the step's
    activations, cotangents and workspaces took at the peak (an estimate: the
    gradients need not all be live at the peak). All None, with ``reason``, when no
    CUDA device can be used.
    """

    peak: int | None
    persistent: int | None
    state: int | None
    activations: int | None
    reason: str | None = None


def _unavailable(reason: str) -> CudaStepMemory:
    return CudaStepMemory(None, None, None, None, reason)


def cuda_step_memory(problem: Problem, params: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray],
                     x: np.ndarray, y: np.ndarray) -> CudaStepMemory:
    """Run one step of ``problem`` on CUDA and report the allocator's figures (see the class)."""
    try:
        import torch
    except ImportError:
        return _unavailable("PyTorch is not installed: pip install 'backlink[torch]'")
    if not torch.cuda.is_available():
        return _unavailable(f"torch {torch.__version__} sees no CUDA device")
    from .runner import TorchRunner

    runner = TorchRunner(problem, params, buffers, device="cuda")
    batch = Batch(np.asarray(x), np.asarray(y), 0)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    runner.step(batch)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    persistent = torch.cuda.memory_allocated() - before
    s = state_bytes(problem.graph, problem.partition, problem.method, problem.dtype, problem.optimizer)
    state = s["grads"] + s["optimizer"]
    return CudaStepMemory(peak, persistent, state, max(peak - state, 0))
