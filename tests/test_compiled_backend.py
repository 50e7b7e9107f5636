"""The torch-compiled demonstration backend: eager gradients, one compilation per unit structure.

Compiles 3 unit structures (a few seconds each on an idle machine, a minute or more under
load; the inductor cache in ``TORCHINDUCTOR_CACHE_DIR`` makes reruns fast).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch-compiled backend needs PyTorch (pip install 'backlink[torch]')")

from backlink.backends.torch_backend import TorchBackend, compiled  # noqa: E402
from backlink.reference.models import make_partition, small_cnn  # noqa: E402
from backlink.spec import Method, Optimizer, Problem  # noqa: E402
from backlink_conformance.oracle import make_case  # noqa: E402

if not torch._dynamo.is_dynamo_supported():
    pytest.skip(f"torch.compile is not supported on this Python/platform (torch {torch.__version__})",
                allow_module_level=True)
if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
    pytest.skip("torch.compile's inductor needs a C++ compiler on CPU (g++ or clang++)", allow_module_level=True)

GRAPH = small_cnn(input_shape=(4, 4, 1), widths=(2, 2), num_classes=2)  # 3 units, BN in two
OPT = Optimizer(lr=0.1, momentum=0.9, weight_decay=1e-3)


def _run(backend, case):
    runner = backend.prepare(case.problem, case.params, case.buffers)
    return [runner.step(b) for b in case.batches]


def _case(cuts, method):
    return make_case(Problem(GRAPH, make_partition(GRAPH, cuts), method, OPT), seed=4, batch_size=4, steps=2,
                     first_id=10)


def test_compiled_matches_eager_and_compiles_once_per_unit_structure():
    first = _case((1,), Method("backlink", link_length=1, beta=0.5, loss_weights=(0.5, 2.0)))
    before = compiled.COMPILATIONS
    got = _run(compiled.CompiledTorchBackend("cpu"), first)
    assert compiled.COMPILATIONS - before <= len(GRAPH.units)
    want = _run(TorchBackend("cpu"), first)
    for g, w in zip(got, want):
        assert g.losses == pytest.approx(w.losses, rel=1e-12)
        for field in ("grads", "params", "buffers"):  # buffers: BN statistics updated in the compiled unit
            a, b = getattr(g, field), getattr(w, field)
            assert a.keys() == b.keys(), field
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-10, atol=1e-12, err_msg=f"{field}[{k!r}]")

    # another partition and method of the same graph (and batch size): no new compilation
    n = compiled.COMPILATIONS
    second = _case((2,), Method("greedy"))
    _run(compiled.CompiledTorchBackend("cpu"), second)
    assert compiled.COMPILATIONS == n


def test_declares_only_the_synchronous_schedule():
    backend = compiled.CompiledTorchBackend("cpu")
    assert backend.name == "torch-compiled"
    assert backend.capabilities.schedules == ("synchronous",)
