"""BL-2.2: every primitive's forward and VJP against the reference, through ``backend.primitive``.

A backend that declares ``Capabilities.primitives`` exposes
``primitive(name, args, attrs, cotangent) -> (output, cotangents)``: ``args`` are host
arrays (inputs, parameters, buffers, in the order of ``backlink.spec.PRIMITIVES``),
``cotangents`` one per input and parameter. Expected values come from the reference
primitives in float64 on the same arrays. Fix failures here first: every other check
builds on the primitives.
"""
import numpy as np
import pytest

from backlink.reference.primitives import PRIMS
from backlink.spec import DTYPES, PRIMITIVES

from backlink_conformance.compare import assert_close, fail
from backlink_conformance.primitive_cases import prim_calls
from backlink_conformance.strategies import sweep

pytestmark = [pytest.mark.conformance_smoke, pytest.mark.conformance_requires(primitives=True)]

NAMES = sorted(PRIMITIVES)


def run(conformance_backend, call, dtype):
    """(backend's (output, cotangents), reference's) for one call and a drawn cotangent."""
    args = [np.asarray(a, dtype=np.float64) for a in call.args]
    out, saved = PRIMS[call.name].fwd(*args, **call.attrs)
    cot = call.cotangent(out.shape, dtype)
    want = PRIMS[call.name].vjp(saved, np.asarray(cot, dtype=np.float64))
    got = conformance_backend.primitive(call.name, [a.copy() for a in call.args], dict(call.attrs), cot.copy())
    if not (isinstance(got, (tuple, list)) and len(got) == 2):
        fail("BL-2.2", f"backend.primitive({call.name!r}, ...) must return (output, cotangents), got {got!r}")
    return got, (out, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_bl2_2_primitive_forward(conformance_backend, name, dtype):
    @sweep(call=prim_calls(name, dtype))
    def check(call):
        (out, _), (want, _) = run(conformance_backend, call, dtype)
        assert_close(out, want, clause="BL-2.2", dtype=dtype, name=f"{name} forward output",
                     note=f"\n  call: {call!r}")
    check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_bl2_2_primitive_vjp(conformance_backend, name, dtype):
    n_grads = PRIMITIVES[name][0] + PRIMITIVES[name][1]
    what = ["input"] * PRIMITIVES[name][0] + ["parameter"] * PRIMITIVES[name][1]

    @sweep(call=prim_calls(name, dtype))
    def check(call):
        (_, cots), (_, want) = run(conformance_backend, call, dtype)
        if len(cots) < n_grads:
            fail("BL-2.2", f"{name} VJP returned {len(cots)} cotangents, needs {n_grads} "
                           f"(one per input and parameter)\n  call: {call!r}")
        for i in range(n_grads):
            assert_close(cots[i], want[i], clause="BL-2.2", dtype=dtype,
                         name=f"{name} VJP cotangent of argument {i} ({what[i]})", note=f"\n  call: {call!r}")
    check()
