"""The torch ``BackLink`` API on a Vision Transformer built from plain ``nn`` modules.

The ViT below is written with nn.Conv2d, nn.Linear, nn.LayerNorm and nn.GELU only (no
spec graph); its ``.grad`` after ``backward_step`` must equal the reference's BL-3.7
gradient of the same network built by ``backlink.reference.models.vit`` (BL-2.8), with
the weights copied across layouts, for BP, greedy and BackLink at half-block grain.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from backlink.backends.torch_backend.api import BackLink  # noqa: E402
from backlink.reference.backlink import gradients  # noqa: E402
from backlink.reference.models import init_params, make_partition, vit  # noqa: E402
from backlink.spec import Method, Partition  # noqa: E402

SIDE, CH, PATCH, WIDTH, HEADS, RATIO, CLASSES, DEPTH = 8, 2, 4, 4, 2, 2, 3, 2


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(CH, WIDTH, PATCH, stride=PATCH)
        self.pos = nn.Parameter(torch.zeros((SIDE // PATCH) ** 2, WIDTH))

    def forward(self, x):  # NCHW image -> (n, T, D), patches row-major
        return self.patches(x).flatten(2).transpose(1, 2) + self.pos


class AttentionHalf(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(WIDTH)
        self.q, self.k, self.v, self.proj = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

    def forward(self, x):
        n, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (f(h).reshape(n, t, HEADS, d // HEADS).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // HEADS) ** 0.5, dim=-1)
        return x + self.proj((a @ v).transpose(1, 2).reshape(n, t, d))


class MlpHalf(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln2 = nn.LayerNorm(WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, RATIO * WIDTH), nn.Linear(RATIO * WIDTH, WIDTH)
        self.gelu = nn.GELU(approximate="tanh")

    def forward(self, x):
        return x + self.fc2(self.gelu(self.fc1(self.ln2(x))))


class TokenHead(nn.Module):
    """Layer norm + mean over tokens + linear (BL-2.8.4)."""

    def __init__(self, classes=CLASSES):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, classes)

    def forward(self, x):
        return self.fc(self.norm(x).mean(dim=1))


def nn_units():
    return [Embed()] + [m for _ in range(DEPTH) for m in (AttentionHalf(), MlpHalf())] + [TokenHead()]


def load_spec_params(units, heads, params, head_ids):
    """Copy spec arrays (HWIO / (in, out)) into the nn modules (OIHW / (out, in))."""
    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    names = {}  # nn parameter -> spec id, for reading the gradients back

    def put(p, pid, layout=None):
        with torch.no_grad():
            a = t(params[pid])
            p.copy_(a.permute(3, 2, 0, 1) if layout == "conv" else a.T if layout == "lin" else a)
        names[p] = (pid, layout)

    def lin(m, prefix):
        put(m.weight, f"{prefix}.w", "lin")
        put(m.bias, f"{prefix}.b")

    def ln(m, prefix):
        put(m.weight, f"{prefix}.gamma")
        put(m.bias, f"{prefix}.beta")
    put(units[0].patches.weight, "embed.patches.w", "conv")
    put(units[0].patches.bias, "embed.patches.b")
    put(units[0].pos, "embed.pos")
    for i in range(DEPTH):
        att, mlp = units[1 + 2 * i], units[2 + 2 * i]
        ln(att.ln1, f"block{i + 1}.ln1")
        for name in ("q", "k", "v", "proj"):
            lin(getattr(att, name), f"block{i + 1}.{name}")
        ln(mlp.ln2, f"block{i + 1}.ln2")
        lin(mlp.fc1, f"block{i + 1}.fc1")
        lin(mlp.fc2, f"block{i + 1}.fc2")
    ln(units[-1].norm, "norm")  # the classifier unit has no id prefix (fc.w, norm.gamma)
    lin(units[-1].fc, "fc")
    for head, hid in zip(heads, head_ids):
        ln(head.norm, f"{hid}.norm")
        lin(head.fc, f"{hid}.fc")
    return names


@pytest.mark.parametrize("method,P,beta", [("bp", 0, 1.0), ("greedy", 0, 1.0), ("backlink", 1, 0.5),
                                           ("backlink", 2, 1.0)])
def test_backlink_api_on_nn_vit_matches_the_reference(method, P, beta):
    graph = vit(input_shape=(SIDE, SIDE, CH), patch=PATCH, depth=DEPTH, width=WIDTH, heads=HEADS, mlp_ratio=RATIO,
                num_classes=CLASSES, granularity="layer")
    cuts = (3,) if method == "bp" else (2, 4)  # cuts between the halves of blocks 1 and 2 (BL-2.8.3)
    part = make_partition(graph, cuts) if method != "bp" else Partition()
    params, buffers = init_params(graph, part if method != "bp" else None, seed=4)
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    x, y = rng.standard_normal((5, SIDE, SIDE, CH)), rng.integers(0, CLASSES, 5)
    m = Method(method, link_length=P, beta=beta) if method == "backlink" else Method(method)
    want, _ = gradients(graph, part, m, params, dict(buffers), x, y)

    torch.set_default_dtype(torch.float64)
    try:
        net = BackLink(nn_units(), cuts=None if method == "bp" else cuts, method=method,
                       link_length=P, beta=beta, head_factory=lambda k, h: TokenHead(),
                       example_input=torch.zeros(1, CH, SIDE, SIDE))
        names = load_spec_params(list(net.trunk), list(net.heads), params, [h.name for h in part.heads])
        net.backward_step(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(y))
    finally:
        torch.set_default_dtype(torch.float32)
    got = {}
    for p, (pid, layout) in names.items():
        if p.grad is not None and pid in want:
            g = p.grad
            got[pid] = (g.permute(2, 3, 1, 0) if layout == "conv" else g.T if layout == "lin" else g).numpy()
        elif p.grad is not None and np.any(p.grad.numpy() != 0):
            got[pid] = p.grad.numpy()  # a gradient the reference says the method does not give
    assert set(got) == set(want)
    for pid, g in want.items():
        np.testing.assert_allclose(got[pid], g, rtol=1e-9, atol=1e-11, err_msg=pid)
