"""BL-6: the backend protocol -- members, the step record, inputs, runners, devices."""
import copy

import numpy as np
import pytest

from backlink.spec import DTYPES, METHODS, SCHEDULES, Batch, Capabilities, SpecError, UpdateEvent

from backlink_conformance.compare import assert_close, fail
from backlink_conformance.oracle import all_param_ids, run_backend
from backlink_conformance.strategies import smoke_case

pytestmark = pytest.mark.conformance_smoke


def test_bl6_1_backend_members(conformance_backend):
    for member in ("name", "version"):
        value = getattr(conformance_backend, member)
        if not isinstance(value, str) or not value:
            fail("BL-6.1", f"backend.{member} is {value!r}; it must be a non-empty string")
    caps = conformance_backend.capabilities
    if not isinstance(caps, Capabilities):
        fail("BL-6.2", f"backend.capabilities is {type(caps).__name__}, not backlink.spec.Capabilities")
    for field, allowed in (("dtypes", DTYPES), ("methods", METHODS), ("schedules", SCHEDULES)):
        extra = set(getattr(caps, field)) - set(allowed)
        if extra:
            fail("BL-6.2", f"capabilities.{field} lists {sorted(extra)}; allowed: {allowed}")
    if not callable(getattr(conformance_backend, "prepare", None)):
        fail("BL-6.1", "backend.prepare is not callable")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bl6_3_step_record_fields(conformance_backend, dtype):
    case = smoke_case("backlink", dtype)
    rec = run_backend(conformance_backend, case)[0]
    problem = case.problem
    specs = {a.id: a for u in problem.graph.units + problem.partition.heads for a in u.params + u.buffers}
    for field in ("grads", "params", "buffers"):
        for key, a in getattr(rec, field).items():
            if type(a) is not np.ndarray:
                fail("BL-6.3", f"record.{field}[{key!r}] is a {type(a).__module__}.{type(a).__name__}; "
                               f"arrays crossing the protocol must be host numpy.ndarray", case)
            if a.dtype != np.dtype(dtype):
                fail("BL-2.6", f"record.{field}[{key!r}] has dtype {a.dtype}, the problem's dtype is {dtype}",
                     case)
            if key in specs and a.shape != tuple(specs[key].shape):
                fail("BL-2.6", f"record.{field}[{key!r}] has shape {a.shape}, declared {specs[key].shape}",
                     case)
    if not all(isinstance(k, int) and isinstance(v, float) for k, v in rec.losses.items()):
        fail("BL-6.3", f"record.losses must map int loss ids to float values, got {rec.losses!r}", case)
    if not (isinstance(rec.events, list) and all(isinstance(e, UpdateEvent) for e in rec.events)):
        fail("BL-6.3", f"record.events must be a list of UpdateEvent, got {rec.events!r}", case)


def test_bl6_1_inputs_are_not_mutated(conformance_backend):
    case = smoke_case("backlink", "float64", steps=2)
    params, buffers = copy.deepcopy(dict(case.params)), copy.deepcopy(dict(case.buffers))
    batches = [copy.deepcopy(b) for b in case.batches]
    runner = conformance_backend.prepare(case.problem, params, buffers)
    for b in batches:
        runner.step(b)
    for name, given, original in (("params", params, case.params), ("buffers", buffers, case.buffers)):
        for k in original:
            if not np.array_equal(given[k], original[k]):
                fail("BL-6.1.2", f"the {name} array {k!r} given to prepare was modified in place; a backend "
                               f"must copy its inputs", case)
    for b, original in zip(batches, case.batches):
        if not (np.array_equal(b.x, original.x) and np.array_equal(b.y, original.y)):
            fail("BL-6.1.2", f"batch {b.id} was modified in place by step", case)


def test_bl6_1_runners_are_independent(conformance_backend):
    case = smoke_case("backlink", "float64", steps=2)
    first = run_backend(conformance_backend, case)
    runner = conformance_backend.prepare(case.problem, copy.deepcopy(dict(case.params)), copy.deepcopy(dict(case.buffers)))
    runner.step(copy.deepcopy(case.batches[0]))  # a second runner advancing must not disturb a new one
    again = run_backend(conformance_backend, case)
    for t, (a, b) in enumerate(zip(first, again)):
        for k in a.params:
            assert_close(b.params[k], a.params[k], clause="BL-6.1.3", dtype="float64", what="params",
                         name=f"step {t} params[{k!r}] of a fresh runner (vs the first runner)", case=case)


def test_bl2_9_wrong_batch_shape_raises(conformance_backend):
    case = smoke_case("greedy", "float64")
    runner = conformance_backend.prepare(case.problem, copy.deepcopy(dict(case.params)), copy.deepcopy(dict(case.buffers)))
    b = case.batches[0]
    bad = Batch(b.x[:, :-1], b.y, b.id)
    try:
        runner.step(bad)
    except SpecError:
        return
    except Exception as e:  # noqa: BLE001 - anything else is the wrong error
        fail("BL-2.9.2", f"step on a batch of per-sample shape {bad.x.shape[1:]} (graph needs "
                       f"{case.problem.graph.input_shape}) raised {type(e).__name__}: {e}; expected SpecError "
                       f"naming field 'x'", case)
    fail("BL-2.9.2", f"step on a batch of per-sample shape {bad.x.shape[1:]} (graph needs "
                   f"{case.problem.graph.input_shape}) did not raise SpecError", case)


# ---------------------------------------------------------------- device namespace (BL-6.2 devices)

_HOST_KERNELS = ("matmul", "dot", "einsum", "tensordot", "convolve")


def _arrays_in(obj, path="runner", depth=0, seen=None):
    """(path, array) pairs reachable from ``obj`` through attributes, dicts and sequences."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 5:
        return
    seen.add(id(obj))
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _arrays_in(v, f"{path}[{k!r}]", depth + 1, seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _arrays_in(v, f"{path}[{i}]", depth + 1, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        for k, v in vars(obj).items():
            yield from _arrays_in(v, f"{path}.{k}", depth + 1, seen)


@pytest.mark.conformance_requires(device="cuda")
def test_bl6_4_runner_computes_on_device(conformance_backend, monkeypatch):
    xp = getattr(conformance_backend, "array_module", None)
    if xp is None:
        pytest.skip(f"backend {conformance_backend.name!r} declares device 'cuda' but has no `array_module` attribute "
                    f"(the module its runner computes with) for the namespace check")
    case = smoke_case("backlink", conformance_backend.capabilities.dtypes[0])
    if xp is np:
        fail("BL-6.2", f"backend {conformance_backend.name!r} declares device 'cuda' but its `array_module` is "
                       f"numpy: the runner computes and keeps state on the host; set `array_module` to the "
                       f"device array module it computes with (e.g. cupy)", case)
    runner = conformance_backend.prepare(case.problem, copy.deepcopy(dict(case.params)), copy.deepcopy(dict(case.buffers)))

    def trap(name):
        def on_host(*args, **kwargs):
            fail("BL-6.2", f"the runner called numpy.{name} during step: a 'cuda' backend must compute "
                           f"with {xp.__name__}, not on the host", case)
        return on_host
    with monkeypatch.context() as m:
        for name in _HOST_KERNELS:
            m.setattr(np, name, trap(name))
        runner.step(copy.deepcopy(case.batches[0]))
    wanted = all_param_ids(case.problem)
    on_host = [p for p, a in _arrays_in(runner) if isinstance(a, np.ndarray) and a.size > 1]
    on_cpu = [p for p, a in _arrays_in(runner) if getattr(a, "is_cuda", True) is False and a.numel() > 1]
    if on_host or on_cpu:
        fail("BL-6.2", f"the runner keeps state on the host after a step: {(on_host + on_cpu)[:5]} "
                       f"(of {len(wanted)} parameters); a 'cuda' backend must hold it in {xp.__name__} "
                       f"device arrays", case)
