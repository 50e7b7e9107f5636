"""BL-2.2 primitives as torch functional ops, and the NHWC <-> NCHW layout boundary.

Inside the torch backend every rank-4 activation (a per-sample image (H, W, C) in the
spec) has torch's NCHW *shape*, the one its convolution and pooling kernels take; every
other activation keeps the spec's layout. Its *memory format* (strides) is the one the
kernels are fastest with (:func:`image_format`): channels_last (NHWC in memory, the
spec's own order, so the boundary permute is a view) for float32 on CPU, NCHW
elsewhere. Parameters stay in the spec's layout (HWIO conv weights, (d_in, d_out)
linear weights) so their gradients come out in it too; the conv weight is permuted
to OIHW and made dense at each use (a small copy).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["OPS", "to_internal", "to_spec", "apply_op", "image_format", "to_internal_dense"]


def image_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format of the backend's rank-4 images for ``t``'s device and dtype.

    CPU float32 (and lower): channels_last. oneDNN's convolutions run NHWC natively;
    NCHW goes through reorders, and a ResNet-32 step is ~1.5x slower in it (a lone 3x3
    conv forward + backward, 32 channels, 16x16, batch 128: ~5x). CPU float64 has no
    oneDNN kernels: the native ones are as fast or faster in NCHW (same conv: 0.12 s
    NCHW vs 0.15 s channels_last), so it stays NCHW.
    CUDA: NCHW. The backend runs float32 without TF32 (BL-2 tolerances), i.e. not on
    tensor cores, where channels_last is what pays; cuDNN's fp32 NCHW kernels are its
    best-tuned, and channels_last adds layout transforms for batch norm and pooling.
    """
    if t.device.type == "cpu" and t.dtype != torch.float64:
        return torch.channels_last
    return torch.contiguous_format


def to_internal_dense(t: torch.Tensor) -> torch.Tensor:
    """:func:`to_internal`, then dense in the backend's format (a copy only if it differs)."""
    t = to_internal(t)
    return t.contiguous(memory_format=image_format(t)) if t.dim() == 4 else t.contiguous()


def to_internal(t: torch.Tensor) -> torch.Tensor:
    """Spec layout -> backend layout: NHWC images become NCHW, others unchanged."""
    return t.permute(0, 3, 1, 2) if t.dim() == 4 else t


def to_spec(t: torch.Tensor) -> torch.Tensor:
    """Backend layout -> spec layout (inverse of :func:`to_internal`)."""
    return t.permute(0, 2, 3, 1) if t.dim() == 4 else t


def _oihw(w):
    """HWIO weight -> dense OIHW (NCHW-contiguous) whatever the input's format: the native CPU
    kernels (slow_conv2d, which torch picks for small shapes) want a contiguous weight
    and gradient, and oneDNN runs channels_last whenever the input is (it reorders the
    small weight itself; a channels_last weight measured no faster)."""
    return w.permute(3, 2, 0, 1).contiguous()


def conv2d(x, w, *, kernel, out, stride=1, padding=0):
    return F.conv2d(x, _oihw(w), stride=stride, padding=padding)


def _channels_second(x):
    """BN's channel axis is the spec's last axis; torch wants it at position 1."""
    return x if x.dim() in (2, 4) else x.movedim(-1, 1)


def _channels_back(x, like):
    return x if like.dim() in (2, 4) else x.movedim(1, -1)


def batchnorm(x, gamma, beta, mean, var, *, momentum=0.1, eps=1e-5, training=True):
    """BL-2.5. torch updates ``mean``/``var`` in place with the unbiased batch variance,
    which is the spec's convention (m / (m - 1), m = values per channel)."""
    xc = _channels_second(x)
    m = xc.numel() // xc.shape[1]
    if training and m == 1:  # torch refuses one value per channel; the spec defines it
        return _batchnorm_single(x, gamma, beta, mean, var, momentum, eps)
    y = F.batch_norm(xc, mean, var, gamma, beta, training=training, momentum=momentum, eps=eps)
    return _channels_back(y, x)


def _batchnorm_single(x, gamma, beta, mean, var, momentum, eps):
    """One value per channel: xhat = 0, running var gets the biased variance 0 (BL-2.5)."""
    axes = [d for d in range(x.dim()) if d != 1] if x.dim() == 4 else list(range(x.dim() - 1))
    shape = [1] * x.dim()
    ch = 1 if x.dim() == 4 else x.dim() - 1
    shape[ch] = -1
    mu = x.mean(dim=axes, keepdim=True)
    v = x.var(dim=axes, unbiased=False, keepdim=True)
    with torch.no_grad():
        mean.mul_(1 - momentum).add_(momentum * mu.reshape(-1))
        var.mul_(1 - momentum).add_(momentum * v.reshape(-1))
    return (x - mu) / torch.sqrt(v + eps) * gamma.reshape(shape) + beta.reshape(shape)


def flatten(x):
    return to_spec(x).reshape(x.shape[0], -1)  # the spec flattens in NHWC order


def reshape(x, *, shape):
    return to_internal(to_spec(x).reshape((x.shape[0],) + tuple(shape)))


def linear(x, w, b, *, out):
    return torch.addmm(b, x, w)


#: name -> f(*inputs, *params, *buffers, **attrs) on backend-layout tensors.
OPS: dict[str, Callable] = {
    "conv2d": conv2d,
    "batchnorm": batchnorm,
    "relu": lambda x: torch.relu(x),
    "add": lambda a, b: a + b,
    "avgpool": lambda x, *, size: F.avg_pool2d(x, size, size),
    "maxpool": lambda x, *, size: F.max_pool2d(x, size, size),  # ties: first max, as the spec
    "global_avgpool": lambda x: x.mean(dim=(2, 3)),
    "linear": linear,
    "flatten": flatten,
    "reshape": reshape,
}


def apply_op(op, values, params, buffers, training=True):
    """Evaluate one spec :class:`~backlink.spec.Op` into ``values`` (backend layout)."""
    args = [values[v] for v in op.inputs] + [params[p] for p in op.params]
    kw = op.kw
    if op.buffers:
        kw["training"] = training
        args += [buffers[b] for b in op.buffers]
    values[op.out] = OPS[op.prim](*args, **kw)


# --- BL-2.7 token sequences. Tokens (n, T, D) keep the spec layout; a rank-4 value (the
# (n, h, T, d_h) of attention heads) arrives permuted like an NCHW image, so these ops read
# it back in spec order (to_spec) and hand it on in backend order (to_internal): both views.

def patch_embed(x, w, b, *, patch, out):
    # a stride-p convolution over NCHW, then (n, D, H/p, W/p) -> (n, T, D), patches row-major
    y = F.conv2d(x, _oihw(w), b, stride=patch)
    return y.flatten(2).transpose(1, 2)


def layernorm(x, gamma, beta, *, eps=1e-5):
    return to_internal(F.layer_norm(to_spec(x), gamma.shape, gamma, beta, eps))


def transpose(x, *, perm):
    return to_internal(to_spec(x).permute((0,) + tuple(p + 1 for p in perm)))


OPS.update({
    "patch_embed": patch_embed,
    "pos_embed": lambda x, pos: x + pos,
    "layernorm": layernorm,
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "token_linear": lambda x, w, b, *, out: torch.matmul(x, w) + b,
    "matmul": lambda a, b: to_internal(torch.matmul(to_spec(a), to_spec(b))),
    "transpose": transpose,
    "scale": lambda x, *, factor: x * factor,
    "softmax": lambda x: to_internal(torch.softmax(to_spec(x), dim=-1)),
    "token_mean": lambda x: x.mean(dim=1),
})
