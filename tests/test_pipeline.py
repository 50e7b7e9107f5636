"""BL-4.2: the pipelined schedule of the reference, checked against independent routes.

The oracle below does not share the runner's bookkeeping: it keeps every parameter
version, and computes each term with :func:`backlink.reference.backlink.gradients` on
the parameter mix the tick table prescribes (module i at the start of tick b + i - 1 for
batch b). The link term is BackLink's gradient minus greedy's on that same mix.
"""
import dataclasses

import numpy as np
import pytest

from backlink.reference import optim
from backlink.reference.backend import ReferenceBackend, ReferenceRunner
from backlink.reference.backlink import gradients
from backlink.reference.models import init_params, make_partition, mlp, small_cnn
from backlink.reference.pipeline import PipelinedRunner
from backlink.spec import (Batch, LRSchedule, Method, Optimizer, Problem, SpecError, UpdateEvent,
                           tolerance)
from backlink.spec.pipeline import drain_ticks, link_param_ids, module_param_ids, tick_events


def make_problem(method, cuts=(1, 3), opt=None, graph=None, dtype="float64"):
    hidden = (5, 4, 4) if max(cuts, default=0) < 4 else (5, 4, 4, 3, 4)
    graph = graph or mlp(input_shape=(6,), hidden=hidden, num_classes=3)
    partition = make_partition(graph, cuts if method.kind != "bp" else ())
    opt = opt or Optimizer(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                           schedule=LRSchedule("cosine", warmup=2, total=12))
    return Problem(graph, partition, method, opt, schedule="pipelined", dtype=dtype)


def make_batches(problem, n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    shape = problem.graph.input_shape
    return [Batch(rng.normal(size=(size, *shape)), rng.integers(0, problem.graph.num_classes, size), b)
            for b in range(n)]


def run(problem, batches, seed=1, runner_cls=PipelinedRunner):
    params, buffers = init_params(problem.graph, problem.partition, seed)
    runner = runner_cls(problem, params, buffers)
    feed = list(batches) + [None] * drain_ticks(problem)
    return runner, [runner.step(b) for b in feed]


def summary(records):
    return [[(e.module, e.losses, e.batches) for e in r.events] for r in records]


def assert_close(actual, expected, what, dtype="float64"):
    rtol, atol = tolerance(dtype, what)
    assert set(actual) == set(expected)
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol, err_msg=k)


def test_backlink_tick_table_by_hand():
    """K=3, P=1, four batches: BL-4.2.4 written out tick by tick."""
    problem = make_problem(Method("backlink", 1))
    _, records = run(problem, make_batches(problem, 4))
    assert summary(records) == [
        [(1, (1,), (0,))],
        [(1, (1,), (1,)), (2, (2,), (0,))],
        [(1, (1, 2), (2, 0)), (2, (2,), (1,)), (3, (3,), (0,))],
        [(1, (1, 2), (3, 1)), (2, (2, 3), (2, 0)), (3, (3,), (1,))],
        [(1, (2,), (2,)), (2, (2, 3), (3, 1)), (3, (3,), (2,))],
        [(1, (2,), (3,)), (2, (3,), (2,)), (3, (3,), (3,))],
        [(2, (3,), (3,))],
    ]
    assert [len(r.events) and r.events[0].time for r in records] == [0, 1, 2, 3, 4, 5, 6]
    # a link-only update (drain) names only the tail's parameters
    assert records[4].events[0].params == link_param_ids(problem)[0] == ("layer1.fc.w", "layer1.fc.b")
    assert records[3].events[0].params == module_param_ids(problem)[0]


@pytest.mark.parametrize("method", [Method("backlink", 1), Method("backlink", 2), Method("greedy"),
                                    Method("bp")])
def test_events_follow_tick_table_with_bubbles(method):
    problem = make_problem(method, cuts=(2, 4))
    batches = make_batches(problem, 4)
    feed = [batches[0], None, batches[1], batches[2], None, batches[3]] + [None] * drain_ticks(problem)
    params, buffers = init_params(problem.graph, problem.partition, 1)
    runner = PipelinedRunner(problem, params, buffers)
    records = [runner.step(b) for b in feed]
    expected = tick_events(problem, [None if b is None else b.id for b in feed])
    assert [r.events for r in records] == expected
    assert not runner.pending()
    assert runner.step(None).events == []


def test_link_length_zero_equals_greedy():
    batches = make_batches(make_problem(Method("greedy")), 5)
    _, rec_p0 = run(make_problem(Method("backlink", 0)), batches)
    _, rec_greedy = run(make_problem(Method("greedy")), batches)
    assert [r.events for r in rec_p0] == [r.events for r in rec_greedy]
    for a, b in zip(rec_p0, rec_greedy):
        assert a.losses == b.losses
        for k in b.params:
            np.testing.assert_array_equal(a.params[k], b.params[k])


def versioned_oracle(problem, batches, seed=1):
    """Final parameters from keeping every version and recomputing each term (see module doc)."""
    params0, buffers0 = init_params(problem.graph, problem.partition, seed)
    mods, links = module_param_ids(problem), link_param_ids(problem)
    K, n = len(mods), len(batches)
    greedy = dataclasses.replace(problem.method, kind="greedy")
    decay = frozenset(p.id for u in (*problem.graph.units, *problem.partition.heads) for p in u.params if p.decay)
    cur = [{p: params0[p] for p in ids} for ids in mods]
    state, count, history = [optim.init_state(c) for c in cur], [0] * K, []

    def grads_on_mix(method, b, upto):
        mix = {}
        for i in range(K):  # module i+1 as it was when it forwarded batch b (later ones: any)
            mix.update(history[b + i][i] if i < upto else cur[i])
        g, _ = gradients(problem.graph, problem.partition, method, mix, dict(buffers0),
                         batches[b].x, batches[b].y)
        return g

    for t in range(n + drain_ticks(problem)):
        history.append([dict(c) for c in cur])
        new = []
        for j in range(K):  # module j+1
            g = {}
            if 0 <= t - j < n:
                own = grads_on_mix(greedy, t - j, j + 1)
                g = {p: own[p] for p in mods[j]}
            if links[j] and 0 <= t - j - 2 < n:
                both, own = grads_on_mix(problem.method, t - j - 2, j + 2), grads_on_mix(greedy, t - j - 2, j + 2)
                for p in links[j]:
                    g[p] = g[p] + (both[p] - own[p]) if p in g else both[p] - own[p]
            new.append(g)
        for j, g in enumerate(new):
            if g:
                cur[j], state[j] = optim.sgd(cur[j], g, state[j], problem.optimizer, count[j], decay)
                count[j] += 1
    return {p: v for c in cur for p, v in c.items()}


@pytest.mark.parametrize("method,cuts", [(Method("backlink", 1, beta=0.7, loss_weights=(1.0, 0.5, 2.0)), (1, 3)),
                                         (Method("backlink", 2), (2, 4)),
                                         (Method("greedy"), (1, 3))])
def test_params_match_versioned_oracle(method, cuts):
    problem = make_problem(method, cuts=cuts)
    batches = make_batches(problem, 6)
    _, records = run(problem, batches)
    assert_close(records[-1].params, versioned_oracle(problem, batches), "steps")


@pytest.mark.parametrize("method", [Method("greedy"), Method("backlink", 1)])
def test_one_batch_plain_sgd_equals_one_synchronous_step(method):
    """With one batch and plain SGD the pipeline's updates add up to the synchronous one,
    batch-norm running statistics included (updated once per forward, never by a link)."""
    graph = small_cnn(input_shape=(8, 8, 2), widths=(3, 4, 4), num_classes=3)
    problem = make_problem(method, cuts=(1, 2), opt=Optimizer(0.05), graph=graph)
    batch = make_batches(problem, 1)[0]
    _, records = run(problem, [batch])
    params, buffers = init_params(graph, problem.partition, 1)
    sync = ReferenceRunner(dataclasses.replace(problem, schedule="synchronous"), params, buffers).step(batch)
    assert_close(records[-1].params, sync.params, "params")
    assert_close(records[-1].buffers, sync.buffers, "params")


def test_bp_pipelined_is_synchronous():
    """BL-4.2.5: BP is locked; the pipelined schedule degenerates to tick = step."""
    problem = make_problem(Method("bp"))
    batches = make_batches(problem, 3)
    _, records = run(problem, batches)
    assert drain_ticks(problem) == 0
    params, buffers = init_params(problem.graph, problem.partition, 1)
    sync = ReferenceRunner(dataclasses.replace(problem, schedule="synchronous"), params, buffers)
    for b, rec in zip(batches, records):
        expected = sync.step(b)
        assert rec.events == expected.events
        assert_close(rec.params, expected.params, "params")
        assert_close(rec.grads, expected.grads, "grad")


def test_record_grads_are_the_summed_terms():
    problem = make_problem(Method("backlink", 1), opt=Optimizer(0.1))
    runner, records = run(problem, make_batches(problem, 4))
    before = records[2].params
    after = records[3].params
    for k, g in records[3].grads.items():  # plain SGD: theta' = theta - lr * g
        np.testing.assert_allclose(after[k], before[k] - 0.1 * g, rtol=1e-12, atol=1e-14)
    assert set(records[3].grads) == {p for e in records[3].events for p in e.params}
    assert set(records[3].losses) == {1, 2, 3}


def test_reference_backend_prepares_pipelined_runner():
    backend = ReferenceBackend()
    assert "pipelined" in backend.capabilities.schedules
    problem = make_problem(Method("backlink", 1))
    params, buffers = init_params(problem.graph, problem.partition, 1)
    assert isinstance(backend.prepare(problem, params, buffers), PipelinedRunner)


def test_cross_module_tail_is_rejected():
    problem = make_problem(Method("backlink", 2, allow_cross_module=True), cuts=(1, 2))
    params, buffers = init_params(problem.graph, problem.partition, 1)
    with pytest.raises(SpecError, match="link_length"):
        PipelinedRunner(problem, params, buffers)


def test_missing_params_named():
    problem = make_problem(Method("greedy"))
    params, buffers = init_params(problem.graph, problem.partition, 1)
    del params["layer2.fc.w"]
    with pytest.raises(SpecError, match="layer2.fc.w"):
        PipelinedRunner(problem, params, buffers)


def test_event_type():
    problem = make_problem(Method("greedy"))
    _, records = run(problem, make_batches(problem, 1))
    assert records[0].events == [UpdateEvent(0, 1, module_param_ids(problem)[0], (1,), (0,))]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact (tmp file + os.replace)."""
    from backlink.reference import checkpoint

    path = tmp_path / "checkpoint-rank0.npz"
    checkpoint.save_atomic(path, {"a": np.arange(3)})

    def crash(f, **arrays):
        f.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(OSError):
        checkpoint.save_atomic(path, {"a": np.arange(5)})
    with np.load(path) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))
