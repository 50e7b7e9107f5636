"""The PyTorch backend against the NumPy reference, and the user API against autograd.

BL-3.7 gradients, several SGD steps (momentum, Nesterov, weight decay, cosine LR),
batch-norm running statistics and update events must agree with the reference within
the spec's dtype-keyed tolerances; the user API's ``.grad`` must equal an independent
computation: each loss differentiated through the whole network, masked by its reach.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch backend needs PyTorch (pip install 'backlink[torch]')")

from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from backlink.backends.torch_backend import BackLink, TorchBackend  # noqa: E402
from backlink.backends.torch_backend.backend import available_devices  # noqa: E402
from backlink.reference.backend import ReferenceBackend  # noqa: E402
from backlink.reference.primitives import PRIMS  # noqa: E402
from backlink.reference.models import init_params, make_partition, mlp, resnet, small_cnn  # noqa: E402
from backlink.spec import (PRIMITIVES, Batch, LRSchedule, Method, Optimizer, Problem,  # noqa: E402
                           SpecError, tolerance)

OPT = Optimizer(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3,
                schedule=LRSchedule("cosine", warmup=1, total=4))

GRAPHS = {
    "mlp": (lambda: mlp(input_shape=(7,), hidden=(6, 5, 4), num_classes=3), (1, 3)),
    "cnn": (lambda: small_cnn(input_shape=(8, 8, 2), widths=(3, 4, 4), num_classes=3), (1, 2)),
    "resnet_block": (lambda: resnet(depth=8, input_shape=(8, 8, 3), widths=(4, 6, 8), num_classes=5,
                                    granularity="block"), (1, 2, 3)),
    "resnet_layer": (lambda: resnet(depth=8, input_shape=(8, 8, 3), widths=(4, 6, 8), num_classes=5,
                                    granularity="layer"), (3, 5)),
}
METHODS = {  # name -> Method for K modules
    "bp": lambda K: Method("bp"),
    "greedy": lambda K: Method("greedy"),
    "backlink_P1": lambda K: Method("backlink", link_length=1),
    "backlink_P1_weighted": lambda K: Method("backlink", 1, beta=0.5, loss_weights=tuple(0.5 + k for k in range(K))),
}


def _problem(graph_name, method_name, dtype):
    build, cuts = GRAPHS[graph_name]
    graph = build()
    part = make_partition(graph, cuts)
    method = METHODS[method_name](len(cuts) + 1)
    return Problem(graph, part, method, OPT, dtype=dtype), init_params(graph, part, seed=3, dtype=dtype)


def _batches(graph, dtype, n=3, size=6):
    rng = np.random.default_rng(11)
    return [Batch(rng.standard_normal((size,) + graph.input_shape).astype(dtype),
                  rng.integers(0, graph.num_classes, size), 100 + i) for i in range(n)]


def _assert_close(got, want, dtype, what, where):
    rtol, atol = tolerance(dtype, what)
    assert set(got) == set(want), f"{where}: ids differ: {sorted(set(got) ^ set(want))}"
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=f"{where}: {k}")


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("graph_name", sorted(GRAPHS))
def test_steps_match_reference(graph_name, method, dtype, device):
    problem, (params, buffers) = _problem(graph_name, method, dtype)
    ref = ReferenceBackend().prepare(problem, params, buffers)
    ours = TorchBackend(device).prepare(problem, params, buffers)
    for t, batch in enumerate(_batches(problem.graph, dtype)):
        want, got = ref.step(batch), ours.step(batch)
        where = f"{graph_name}/{method}/{dtype}/{device} step {t}"
        _assert_close(got.grads, want.grads, dtype, "grad" if t == 0 else "steps", where + " grads")
        _assert_close(got.params, want.params, dtype, "params" if t == 0 else "steps", where + " params")
        _assert_close(got.buffers, want.buffers, dtype, "params" if t == 0 else "steps", where + " buffers")
        rtol, atol = tolerance(dtype, "steps")
        for k in want.losses:
            assert got.losses[k] == pytest.approx(want.losses[k], rel=rtol, abs=atol), f"{where} loss {k}"
        assert got.events == want.events, where
        assert all(v.dtype == np.dtype(dtype) for v in got.params.values())


@pytest.mark.parametrize("method", [Method("backlink", 2, beta=0.3), Method("backlink", 3, allow_cross_module=True)])
def test_long_and_cross_module_links_match_reference(method):
    graph = resnet(depth=8, input_shape=(6, 6, 2), widths=(3, 4, 5), num_classes=4, granularity="layer")
    part = make_partition(graph, (3, 5))
    problem = Problem(graph, part, method, Optimizer(lr=0.1, momentum=0.5))
    params, buffers = init_params(graph, part, seed=5)
    batch = _batches(graph, "float64", n=1)[0]
    want = ReferenceBackend().prepare(problem, params, buffers).step(batch)
    got = TorchBackend().prepare(problem, params, buffers).step(batch)
    _assert_close(got.grads, want.grads, "float64", "grad", f"P={method.link_length}")
    # the tail really differs from greedy: BackLink adds terms to the previous module
    greedy = ReferenceBackend().prepare(Problem(graph, part, Method("greedy")), params, buffers).step(batch)
    assert not np.allclose(got.grads["s1.b0.conv2.w"], greedy.grads["s1.b0.conv2.w"])


def test_one_value_per_channel_batchnorm_matches_reference():
    graph = small_cnn(input_shape=(1, 1, 2), widths=(3, 3), num_classes=2)
    problem = Problem(graph, make_partition(graph, ()), Method("bp"), Optimizer(lr=0.1))
    params, buffers = init_params(graph, problem.partition, seed=1)
    batch = Batch(np.ones((1, 1, 1, 2)), np.array([1]), 0)
    want = ReferenceBackend().prepare(problem, params, buffers).step(batch)
    got = TorchBackend().prepare(problem, params, buffers).step(batch)
    _assert_close(got.buffers, want.buffers, "float64", "params", "m=1 buffers")
    _assert_close(got.grads, want.grads, "float64", "grad", "m=1 grads")


class SavedBytes:
    """Live bytes of the activations autograd saves (parameters excluded), and the peak."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        return t if (t.is_leaf and t.requires_grad) else _Saved(t.detach(), self)

    def unpack(self, saved):
        return saved if isinstance(saved, torch.Tensor) else saved.t


class _Saved:
    def __init__(self, t, meter):
        self.t, self.meter, self.n = t, meter, t.numel() * t.element_size()
        meter.live += self.n
        meter.peak = max(meter.peak, meter.live)

    def __del__(self):
        self.meter.live -= self.n


def test_saved_activations_follow_the_method():
    """Greedy frees each module's graph after its loss; BackLink keeps only the linked tail
    until the next loss; BP holds the whole network. Nothing survives the step."""
    graph = resnet(depth=14, input_shape=(8, 8, 3), widths=(4, 6, 8), num_classes=5)
    part = make_partition(graph, (2, 4, 6))
    params, buffers = init_params(graph, part, seed=0)
    batch = _batches(graph, "float64", n=1, size=8)[0]
    peaks = {}
    for name, method in {"bp": Method("bp"), "greedy": Method("greedy"), "P1": Method("backlink", 1),
                         "P2": Method("backlink", 2)}.items():
        runner, meter = TorchBackend("cpu").prepare(Problem(graph, part, method), params, buffers), SavedBytes()
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            runner.step(batch)
        assert meter.live == 0, f"{name}: {meter.live} bytes of saved activations outlive the step"
        peaks[name] = meter.peak
    assert peaks["greedy"] < peaks["P1"] < peaks["P2"] < peaks["bp"], peaks


def test_link_takes_each_weight_vjp_once_and_no_vjp_into_the_tail_entry():
    """BL-3.4 / BL-7.2 in the torch backend: a linked tail's conv weight gradient is taken
    once (own + beta x link cotangent), and no input cotangent is taken into the first
    conv (its input is the network input, or, for the tail, a value the pass discards)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Masks(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.masks = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution_backward.default:
                self.masks.append(tuple(args[-1][:2]))
            return func(*args, **(kwargs or {}))

    graph = resnet(depth=14, input_shape=(8, 8, 3), widths=(4, 6, 8), num_classes=5)
    part = make_partition(graph, (2, 4, 6))
    params, buffers = init_params(graph, part, seed=0)
    batch = _batches(graph, "float64", n=1, size=8)[0]
    convs = sum(op.prim == "conv2d" for u in graph.units for op in u.ops)
    runner = TorchBackend("cpu").prepare(Problem(graph, part, Method("backlink", 1)), params, buffers)
    with Masks() as log:
        runner.step(batch)
    assert sum(w for _, w in log.masks) == convs, log.masks  # each weight VJP once
    # weight-only VJPs: the stem conv (network input) and, per link (3), at least one conv
    # reading the tail's entry value, whose cotangent the link pass discards (BL-3.4)
    assert sum(w and not x for x, w in log.masks) >= 1 + 3, log.masks


def test_invalid_problems_raise_spec_error():
    problem, (params, buffers) = _problem("cnn", "greedy", "float64")
    with pytest.raises(SpecError, match="lacks ids"):
        TorchBackend().prepare(problem, {k: v for k, v in params.items() if k != "fc.w"}, buffers)
    bad = dict(params, **{"fc.w": params["fc.w"][:-1]})
    with pytest.raises(SpecError, match=r"params\['fc.w'\]"):
        TorchBackend().prepare(problem, bad, buffers)
    broken = copy.copy(problem)
    object.__setattr__(broken, "method", Method("backlink", link_length=5))  # bypass __post_init__
    with pytest.raises(SpecError, match="link_length"):
        TorchBackend().prepare(broken, params, buffers)
    runner = TorchBackend().prepare(problem, params, buffers)
    with pytest.raises(SpecError, match="field 'x'"):
        runner.step(Batch(np.zeros((2, 3, 3, 2)), np.zeros(2, int), 0))


PRIM_CASES = {
    "conv2d": ("conv2d", [(2, 5, 5, 3), (3, 3, 3, 4)], dict(kernel=3, out=4, stride=2, padding=1)),
    "batchnorm": ("batchnorm", [(3, 4, 4, 2), (2,), (2,), (2,), (2,)], dict(momentum=0.1, eps=1e-5)),
    "batchnorm_flat": ("batchnorm", [(5, 3), (3,), (3,), (3,), (3,)], {}),
    "batchnorm_eval": ("batchnorm", [(3, 4, 4, 2), (2,), (2,), (2,), (2,)], dict(training=False)),
    "relu": ("relu", [(2, 3, 3, 2)], {}),
    "add": ("add", [(2, 3, 3, 2), (2, 3, 3, 2)], {}),
    "avgpool": ("avgpool", [(2, 5, 5, 3)], dict(size=2)),
    "maxpool": ("maxpool", [(2, 5, 5, 3)], dict(size=2)),
    "global_avgpool": ("global_avgpool", [(2, 3, 4, 5)], {}),
    "linear": ("linear", [(3, 4), (4, 2), (2,)], dict(out=2)),
    "flatten": ("flatten", [(2, 3, 4, 5)], {}),
    "reshape": ("reshape", [(2, 3, 4, 5)], dict(shape=(5, 12))),
    "reshape_to_image": ("reshape", [(2, 12)], dict(shape=(2, 3, 2))),
    # BL-2.7 token primitives: tokens (n, T, D), attention heads (n, h, T, d)
    "patch_embed": ("patch_embed", [(2, 4, 6, 3), (2, 2, 3, 5), (5,)], dict(patch=2, out=5)),
    "pos_embed": ("pos_embed", [(2, 4, 5), (4, 5)], {}),
    "layernorm": ("layernorm", [(2, 4, 5), (5,), (5,)], dict(eps=1e-5)),
    "layernorm_heads": ("layernorm", [(2, 3, 4, 5), (5,), (5,)], dict(eps=1e-2)),
    "token_linear": ("token_linear", [(2, 4, 5), (5, 3), (3,)], dict(out=3)),
    "matmul": ("matmul", [(2, 3, 4, 5), (2, 3, 5, 2)], {}),
    "transpose": ("transpose", [(2, 3, 4, 5)], dict(perm=(1, 0, 2))),
    "scale": ("scale", [(2, 4, 5)], dict(factor=0.125)),
    "gelu": ("gelu", [(2, 4, 5)], {}),
    "softmax": ("softmax", [(2, 3, 4, 5)], {}),
    "token_mean": ("token_mean", [(2, 4, 5)], {}),
}


def test_every_primitive_has_a_hook_case():
    assert {case[0] for case in PRIM_CASES.values()} == set(PRIMITIVES)


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("case", sorted(PRIM_CASES))
def test_primitive_hook_matches_reference(case, device):
    rng = np.random.default_rng(7)
    name, shapes, attrs = PRIM_CASES[case]
    args = [rng.standard_normal(s) for s in shapes]
    if name == "maxpool":  # ties, as after a ReLU: the first maximum takes the gradient
        args[0] = np.maximum(np.round(args[0]), 0)
    if name == "batchnorm":
        args[4] = np.abs(args[4]) + 0.5
    out_shape = PRIMS[name].fwd(*args, **attrs)[0].shape
    cot = rng.standard_normal(out_shape)
    want_out = ReferenceBackend().primitive(name, args, attrs, cot)
    got_out = TorchBackend(device).primitive(name, args, attrs, cot)
    np.testing.assert_allclose(got_out[0], want_out[0], rtol=1e-12, atol=1e-12, err_msg=f"{name} output")
    assert len(got_out[1]) == len(want_out[1]) == sum(PRIMITIVES[name][:2])
    for i, (g, w) in enumerate(zip(got_out[1], want_out[1])):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=f"{name} cotangent {i}")


def test_importing_backlink_does_not_import_torch():
    code = ("import sys, backlink, backlink.spec, backlink.reference.backend, "
            "backlink.backends.torch_backend as tb; assert 'torch' not in sys.modules, 'torch imported'; "
            "tb.TorchBackend; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_device_choice_and_capabilities():
    backend = TorchBackend()
    assert backend.device == available_devices()[-1]
    assert TorchBackend("cpu").capabilities.devices == ("cpu",)
    assert set(TorchBackend.capabilities.devices) == set(available_devices())
    with pytest.raises(ValueError, match="device"):
        TorchBackend("tpu")
    if "cuda" not in available_devices():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            TorchBackend("cuda")


def test_entry_point_loads_the_backend():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="backlink.backends") if e.name == "torch"]
    assert ep.load() is TorchBackend


# ---------------------------------------------------------------- the user API


def _units(seed=0):
    torch.manual_seed(seed)
    block = lambda cin, cout, stride=1: nn.Sequential(  # noqa: E731
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
    return nn.Sequential(block(3, 4), block(4, 4), block(4, 6, 2), block(6, 6), block(6, 6),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))).double()


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)


def _masked_autograd(net: BackLink, x, y) -> list[torch.Tensor]:
    """Independent BL-3.7: each loss through the whole network (no detach), masked by reach."""
    total = [torch.zeros_like(p) for p in net.parameters()]
    P = net.link_length if net.method == "backlink" else 0
    for k, (a, b) in enumerate(net.bounds):
        clone = copy.deepcopy(net)  # fresh batch-norm statistics for every loss
        h = x
        for u in clone.trunk[:b]:
            h = u(h)
        logits = clone.heads[k](h) if k < clone.K - 1 else h
        params = list(clone.parameters())
        grads = torch.autograd.grad(F.cross_entropy(logits, y) * net.loss_weights[k], params, allow_unused=True)
        own = {id(p) for u in clone.trunk[a:b] for p in u.parameters()}
        own |= {id(p) for p in clone.heads[k].parameters()} if k < clone.K - 1 else set()
        tail = {id(p) for u in clone.trunk[max(0, a - P):a] for p in u.parameters()}
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is not None and (id(p) in own or id(p) in tail):
                total[i] += g * (net.beta if id(p) in tail else 1.0)
    return total


@pytest.mark.parametrize("kw", [dict(method="greedy", K=3), dict(method="backlink", K=3, link_length=1),
                                dict(method="backlink", cuts=(2, 4), link_length=2, beta=0.4,
                                     loss_weights=(1.0, 0.5, 2.0)),
                                dict(method="bp", K=3)], ids=["greedy", "P1", "P2", "bp"])
def test_api_grads_match_masked_autograd(kw):
    x, y = _data()
    net = BackLink(_units(), example_input=x, **kw)
    want = _masked_autograd(net, x, y)
    losses = net.backward_step(x, y)
    assert sorted(losses) == list(range(1, net.K + 1))
    for i, (p, w) in enumerate(zip(net.parameters(), want)):
        assert p.grad is not None, f"parameter {i} got no gradient"
        torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-12, msg=f"{kw}: parameter {i}")


def test_api_link_length_zero_is_greedy_and_backlink_differs():
    x, y = _data()
    grads = {}
    for name, kw in {"greedy": dict(method="greedy"), "P0": dict(link_length=0),
                     "P1": dict(link_length=1)}.items():
        net = BackLink(_units(), K=3, example_input=x, **kw)
        net.backward_step(x, y)
        grads[name] = [p.grad for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads["greedy"], grads["P0"]))
    assert not all(torch.equal(a, b) for a, b in zip(grads["greedy"], grads["P1"]))


def test_api_bp_equals_plain_autograd_and_trains_with_torch_optim():
    x, y = _data()
    plain = _units()
    F.cross_entropy(plain(x), y).backward()
    net = BackLink(_units(), method="bp")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in net.parameters()]
    net.backward_step(x, y)
    for p, q in zip(net.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert net(x).shape == (8, 5)


def test_api_heads_built_on_first_batch_and_parameters_guarded():
    x, y = _data()
    net = BackLink(_units(), K=3)
    with pytest.raises(RuntimeError, match="example_input"):
        net.parameters()
    net.backward_step(x, y)
    assert len(net.heads) == 2 and all(p.grad is not None for p in net.heads.parameters())
    assert all(h.training for h in net.heads)


@pytest.mark.parametrize("kw, field", [
    (dict(cuts=(3, 2)), "cuts"), (dict(cuts=(0, 2)), "cuts\\[0\\]"), (dict(cuts=(2, 6)), "cuts\\[1\\]"),
    (dict(K=7), "K"), (dict(K=3, cuts=(2,)), "K"), (dict(K=3, link_length=3), "link_length"),
    (dict(K=3, link_length=-1), "link_length"), (dict(K=3, loss_weights=(1, 1)), "loss_weights"),
    (dict(K=3, method="dgl"), "method"), (dict(), "cuts"), (dict(K=3, head_factory="mlp"), "head_factory"),
    (dict(K=3, head_factory=lambda k, h: nn.Flatten()), "head_factory"),
    (dict(K=3, head_factory=lambda k, h: nn.Conv2d(h.shape[1], 5, 1)), "head_factory"),
])
def test_api_errors_name_the_field(kw, field):
    x, _ = _data()
    with pytest.raises(ValueError, match=field):
        BackLink(_units(), example_input=x, **kw)


def test_api_rejects_a_trunk_without_2d_logits():
    x, _ = _data()
    with pytest.raises(ValueError, match="2-D logits"):
        BackLink(list(_units())[:-1], K=2, example_input=x)


def _inplace_units(seed=0):
    """Every unit after the first starts with an in-place ReLU, as torchvision blocks do."""
    torch.manual_seed(seed)
    conv = lambda cin, cout, stride=1: nn.Sequential(  # noqa: E731
        nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.BatchNorm2d(4)), conv(4, 4), conv(4, 6, 2),
                         conv(6, 6), conv(6, 6),
                         nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                       nn.Linear(6, 5))).double()


@pytest.mark.parametrize("kw", [dict(method="backlink", K=3, link_length=1),
                                dict(method="backlink", cuts=(2, 4), link_length=2, beta=0.4)], ids=["P1", "P2"])
def test_api_inplace_relu_at_module_and_tail_boundaries_matches_plain_autograd(kw):
    x, y = _data()
    net = BackLink(_inplace_units(), example_input=x, **kw)
    assert net._inplace_input == {1, 2, 3, 4, 5}
    want = _masked_autograd(net, x, y)
    net.backward_step(x, y)
    for i, (p, w) in enumerate(zip(net.parameters(), want)):
        torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-12, msg=f"{kw}: parameter {i}")


def test_api_allow_cross_module_tail_spans_earlier_modules():
    """BL-3.5: P = 3 over modules of 2 units: loss 3's tail reaches into module 1."""
    x, y = _data()
    kw = dict(cuts=(2, 4), link_length=3)
    with pytest.raises(ValueError, match="allow_cross_module"):
        BackLink(_units(), example_input=x, **kw)
    net = BackLink(_units(), example_input=x, allow_cross_module=True, **kw)
    want = _masked_autograd(net, x, y)
    net.backward_step(x, y)
    for i, (p, w) in enumerate(zip(net.parameters(), want)):
        torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-12, msg=f"parameter {i}")


def test_api_beta_zero_runs_no_tail_pass_and_equals_greedy():
    x, y = _data()
    zero = BackLink(_units(), K=3, link_length=1, beta=0.0, example_input=x)
    greedy = BackLink(_units(), K=3, method="greedy", example_input=x)
    assert zero.plan.walks == greedy.plan.walks  # no tail segment in any loss's backward walk
    zero.backward_step(x, y)
    greedy.backward_step(x, y)
    for p, q in zip(zero.parameters(), greedy.parameters()):
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("kw, field", [(dict(method="bp", loss_weights=(1.0, 2.0)), "loss_weights"),
                                       (dict(method="greedy", K=3, link_length=2), "link_length"),
                                       (dict(method="greedy", K=3, beta=0.5), "beta")])
def test_api_arguments_the_method_ignores_warn(kw, field):
    x, _ = _data()
    with pytest.warns(UserWarning, match=f"field '{field}' .* is ignored by method"):
        BackLink(_units(), example_input=x, **kw)
