"""BL-4.2 on torch: TorchStage in one process, and one process per module over gloo,
against the reference's PipelinedRunner (events exactly, values within tolerance)."""
import re
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from backlink.backends.torch_backend.distributed import TorchPipelinedRunner, run_torch_distributed  # noqa: E402
from backlink.reference.models import init_params, make_partition, resnet  # noqa: E402
from backlink.spec import Method, Optimizer, Problem  # noqa: E402
from backlink.spec.pipeline import drain_ticks  # noqa: E402

from test_pipeline import assert_close, make_batches, make_problem, run  # noqa: E402

OPT = Optimizer(0.1, momentum=0.9, nesterov=True, weight_decay=0.05)


def resnet_problem(cuts, method, head="linear", dtype="float64"):
    graph = resnet(depth=8, input_shape=(8, 8, 2), widths=(3, 4, 4), num_classes=3, granularity="layer")
    partition = make_partition(graph, cuts, head, hidden=3 if head == "conv" else None)
    return Problem(graph, partition, method, OPT, "pipelined", dtype)


PROBLEMS = {
    "mlp-backlink-P1": lambda: make_problem(Method("backlink", 1)),
    "mlp-backlink-P2": lambda: make_problem(Method("backlink", 2), cuts=(2, 4)),
    "mlp-greedy": lambda: make_problem(Method("greedy")),
    "mlp-bp": lambda: make_problem(Method("bp")),
    "resnet-bn-tail-in-block": lambda: resnet_problem((3, 5), Method("backlink", 2, beta=0.5,
                                                                     loss_weights=(0.5, 2.0, 1.5))),
    "resnet-tail-is-whole-module": lambda: resnet_problem((3,), Method("backlink", 3)),
    "resnet-conv-head-float32": lambda: resnet_problem((3, 5), Method("backlink", 1), "conv", "float32"),
}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_torch_stages_match_reference(name):
    problem = PROBLEMS[name]()
    batches = make_batches(problem, 5)
    _, expected = run(problem, batches)
    runner = TorchPipelinedRunner(problem, *init_params(problem.graph, problem.partition, 1))
    got = [runner.step(b) for b in list(batches) + [None] * drain_ticks(problem)]
    assert [r.events for r in got] == [r.events for r in expected]
    for g, e in zip(got, expected):
        assert g.losses.keys() == e.losses.keys()
        np.testing.assert_allclose(list(g.losses.values()), list(e.losses.values()), rtol=1e-4)
    assert_close(got[-1].params, expected[-1].params, "steps", problem.dtype)
    assert_close(got[-1].buffers, expected[-1].buffers, "steps", problem.dtype)


def test_gloo_processes_match_reference():
    problem = make_problem(Method("backlink", 1))
    batches = make_batches(problem, 5)
    _, expected = run(problem, batches)
    result = run_torch_distributed(problem, batches, *init_params(problem.graph, problem.partition, 1))
    assert result["events"] == [e for r in expected for e in r.events]
    assert_close(result["params"], expected[-1].params, "steps")


@pytest.mark.parametrize("fault", [(1, 2), (2, 3, "hang")])
def test_gloo_failing_rank_stops_every_rank(fault, capfd):
    """Each rank's wait is bounded by timeout_s (4 s here, against gloo's default of 30 min),
    timed inside the ranks from their first tick; and the whole run, spawning and stopping
    the ranks included (the hanging rank sleeps an hour), ends within 60 s."""
    problem = make_problem(Method("backlink", 1))
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        run_torch_distributed(problem, make_batches(problem, 6), timeout_s=4, fail_at=fault)
    assert time.monotonic() - start < 60
    assert type(info.value).__name__ == "ProcessRaisedException"
    err = capfd.readouterr().err
    if len(fault) == 2:
        assert f"rank {fault[0]} (module {fault[0] + 1}) failed at tick {fault[1]}, " in err
        assert "injected fault" in err
    # the first rank to fail: the faulty one, or a neighbour of the hanging one after its timeout
    seconds = float(re.search(r"failed at tick \d+, ([\d.]+) s into its ticks", err).group(1))
    assert seconds < 30
