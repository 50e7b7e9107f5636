"""The CuPy backend: same code path as NumPy, results within tolerance, state on the device.

Without CuPy and a CUDA GPU (CI) every test here skips with the reason; run them on a
GPU machine with ``bash .ci/gpu``.
"""
import dataclasses

import numpy as np
import pytest

from backlink.backends.cupy_backend import CupyBackend, require_gpu
from backlink.reference.backend import ReferenceBackend
from backlink.reference.models import init_params, make_partition, resnet
from backlink.spec import Batch, Method, Optimizer, Problem, tolerance


def _gpu_or_reason():
    try:
        require_gpu()
        return None
    except RuntimeError as e:
        return str(e)


REASON = _gpu_or_reason()
gpu = pytest.mark.skipif(REASON is not None, reason=f"needs CuPy and a CUDA GPU ({REASON}); run bash .ci/gpu")


def test_import_never_needs_cupy():
    import backlink.backends.cupy_backend  # noqa: F401  (the import above already proved it)

    if REASON is not None:
        with pytest.raises(RuntimeError, match="cupy"):
            CupyBackend()


def problem(dtype, kind="backlink"):
    g = resnet(depth=8, input_shape=(8, 8, 3), num_classes=4, granularity="layer", widths=(4, 6, 8))
    part = make_partition(g, (3, 5), head="conv")
    return Problem(g, part, Method(kind, 2 if kind == "backlink" else 0, 0.5),
                   Optimizer(0.05, 0.9, True, 1e-3), dtype=dtype)


@gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["bp", "greedy", "backlink"])
def test_cupy_matches_numpy_over_steps(dtype, kind):
    p = problem(dtype, kind)
    params, buffers = init_params(p.graph, p.partition, seed=0, dtype=dtype)
    cpu = ReferenceBackend().prepare(p, params, buffers)
    gpu_runner = CupyBackend().prepare(p, params, buffers)
    rng = np.random.default_rng(0)
    rtol, atol = tolerance(dtype, "steps")
    for t in range(3):
        b = Batch(rng.standard_normal((6, 8, 8, 3)).astype(dtype), rng.integers(0, 4, 6), t)
        a, c = cpu.step(b), gpu_runner.step(b)
        assert a.events == c.events
        for k in a.params:
            np.testing.assert_allclose(c.params[k], a.params[k], rtol=rtol, atol=atol, err_msg=k)
        for k in a.buffers:
            np.testing.assert_allclose(c.buffers[k], a.buffers[k], rtol=rtol, atol=atol, err_msg=k)


@gpu
def test_state_stays_on_the_device():
    cupy = require_gpu()
    p = problem("float32")
    params, buffers = init_params(p.graph, p.partition, seed=0, dtype="float32")
    runner = CupyBackend().prepare(p, params, buffers)
    runner.step(Batch(np.zeros((4, 8, 8, 3), np.float32), np.arange(4) % 4, 0))
    assert all(isinstance(v, cupy.ndarray) for v in runner.params.values())
    assert all(isinstance(v, cupy.ndarray) for v in runner.state.values())


@pytest.mark.skipif(REASON is None, reason="this machine has a GPU: the no-GPU error path is not reachable")
def test_cli_backend_cupy_without_gpu_is_a_clear_error(capsys):
    from backlink.experiments.cli import main

    assert main(["train", "--backend", "cupy", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--backend cupy" in err and "--backend numpy" in err


def test_cli_backend_names_map_to_backends(capsys):
    from backlink.experiments.backends import make_backend
    from backlink.experiments.cli import build_parser, main
    from backlink.reference.backend import ReferenceBackend

    parse = build_parser().parse_args
    assert parse(["train"]).backend == "numpy" and parse(["train"]).device is None
    assert parse(["train", "--backend", "cupy"]).backend == "cupy"
    numpy_backend = make_backend("numpy")
    assert type(numpy_backend) is ReferenceBackend and numpy_backend.xp is np
    assert main(["train", "--backend", "jax", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'jax'" in err and "numpy, cupy, torch" in err


@gpu
def test_train_on_cupy_gives_the_cpu_results():
    """``backlink train --backend cupy``: same history as on the CPU (float64, so within 1e-9)."""
    from backlink.experiments.train import RunConfig, train

    cfg = RunConfig(model="cnn", dataset="digits", n_train=256, n_test=128, epochs=2, batch=64, K=2,
                    method="backlink", dtype="float64", progress=False)
    cpu, gpu_run = train(cfg), train(dataclasses.replace(cfg, backend="cupy"))
    assert gpu_run["peak_activation_bytes"] == cpu["peak_activation_bytes"]
    for a, b in zip(cpu["history"], gpu_run["history"]):
        assert a["test_acc"] == b["test_acc"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-9
