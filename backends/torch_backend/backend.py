"""The PyTorch conformance backend (BL-6): spec graphs on torch functional ops + autograd."""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import numpy as np
import torch

from backlink.spec import PRIMITIVES, Capabilities, Problem, SpecError, check_values

from .ops import OPS, to_internal, to_spec
from .runner import TorchRunner, host

__all__ = ["TorchBackend", "available_devices"]


def available_devices() -> tuple[str, ...]:
    """'cpu', and 'cuda' only where torch sees a CUDA device."""
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


class TorchBackend:
    """Runs conformance problems on PyTorch (float64/float32; CPU, or CUDA if available).

    ``device``: 'cpu', 'cuda', or None (default): 'cuda' where torch sees a GPU, else
    'cpu'. An instance's ``capabilities.devices`` is the one device it computes on (the
    class attribute lists every device available). The pipelined schedule (BL-4.2) runs
    on CPU through :class:`~backlink.backends.torch_backend.distributed.TorchPipelinedRunner`.
    """

    name = "torch"
    version = f"0.1.0+torch{torch.__version__}"
    capabilities = Capabilities(devices=available_devices(), schedules=("synchronous",),
                                primitives=True)
    array_module = torch  # what runners compute with (the suite's BL-6.4 device check)
    runner = TorchRunner  # the synchronous runner class (tests/meta/mutants_torch.py swaps it)

    def __init__(self, device: str | None = None):
        if device is None:
            device = available_devices()[-1]
        if device not in ("cpu", "cuda"):
            raise ValueError(f"field 'device' is {device!r}; allowed: 'cpu', 'cuda', or None (auto)")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("field 'device' is 'cuda' but torch sees no CUDA device "
                               f"(torch {torch.__version__}); use device='cpu'")
        self.device = device
        schedules = ("synchronous", "pipelined") if device == "cpu" else ("synchronous",)
        self.capabilities = replace(type(self).capabilities, devices=(device,), schedules=schedules)

    def prepare(self, problem: Problem, params: Mapping[str, np.ndarray],
                buffers: Mapping[str, np.ndarray]) -> TorchRunner:
        problem.validate()
        check_values(problem, params, buffers)
        if problem.schedule not in self.capabilities.schedules:
            raise NotImplementedError(f"field 'schedule' is {problem.schedule!r}; the torch backend on "
                                      f"{self.device} implements: {', '.join(self.capabilities.schedules)}")
        if problem.schedule == "pipelined":
            from .distributed import TorchPipelinedRunner

            return TorchPipelinedRunner(problem, params, buffers)
        return self.runner(problem, params, buffers, device=self.device)

    def primitive(self, name: str, args, attrs, cotangent):
        """BL-2.2 check hook: (output, cotangents of the inputs and parameters) of one primitive."""
        if name not in PRIMITIVES:
            raise SpecError(f"field 'name' is {name!r}; allowed: {', '.join(sorted(PRIMITIVES))}")
        n_in, n_par, _ = PRIMITIVES[name]
        ts = [torch.tensor(np.asarray(a), device=self.device) for a in args]
        diff = ts[:n_in + n_par]
        for t in diff:
            t.requires_grad_(True)
        inputs = [to_internal(t) for t in ts[:n_in]]
        out = to_spec(OPS[name](*inputs, *ts[n_in:], **dict(attrs)))
        seed = torch.tensor(np.asarray(cotangent), dtype=out.dtype, device=self.device)
        cots = torch.autograd.grad(out, diff, seed, allow_unused=True)
        cots = [torch.zeros_like(t) if c is None else c for t, c in zip(diff, cots)]
        return host(out), [host(c) for c in cots]
