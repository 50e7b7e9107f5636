"""BL-7.2 on PyTorch's CUDA allocator: the figures exist where CUDA does, and order the methods."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backlink.backends.torch_backend.memory import cuda_step_memory  # noqa: E402
from backlink.reference.models import build_model, even_cuts, init_params, make_partition  # noqa: E402
from backlink.spec import Method, Optimizer, Problem  # noqa: E402


def _problem(kind, P=0):
    graph = build_model("resnet8", input_shape=(16, 16, 3))
    part = make_partition(graph, even_cuts(graph, 3))
    return Problem(graph, part, Method(kind, link_length=P), Optimizer(lr=0.1, momentum=0.9), dtype="float32")


def _batch(graph, n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, *graph.input_shape)).astype("float32"), rng.integers(0, 10, n)


def test_without_cuda_the_reason_is_given():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the measured case runs instead")
    problem = _problem("greedy")
    params, buffers = init_params(problem.graph, problem.partition, 0, "float32")
    got = cuda_step_memory(problem, params, buffers, *_batch(problem.graph))
    assert got.peak is None and got.activations is None
    assert "CUDA" in got.reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peaks_order_the_methods():
    peaks = {}
    for name, kind, P in (("bp", "bp", 0), ("greedy", "greedy", 0), ("backlink", "backlink", 1)):
        problem = _problem(kind, P)
        params, buffers = init_params(problem.graph, problem.partition, 0, "float32")
        got = cuda_step_memory(problem, params, buffers, *_batch(problem.graph))
        assert got.reason is None and got.peak > 0 and got.persistent >= 0
        peaks[name] = got.activations
    assert peaks["greedy"] <= peaks["backlink"] < peaks["bp"], peaks
