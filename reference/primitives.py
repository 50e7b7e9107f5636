"""BL-2.2 primitives: forward functions and their VJPs, written once against ``xp``.

Every forward is ``fwd(*arrays, **attrs) -> (out, saved)``; every VJP is
``vjp(saved, g) -> cotangents`` (one per array argument: inputs, then parameters).
Layout: NHWC activations, HWIO conv weights, (d_in, d_out) linear weights.
The same code runs on NumPy and CuPy: the namespace comes from the arguments. On CuPy,
the memory-bound helpers marked ``kernels_for`` run as one hand-written CUDA kernel each
(backends/cupy_backend/kernels.cu, checked against these NumPy lines); the algorithm
around them is this file's, unchanged. The convolution, whose fast path is longer than the
rest, is in :mod:`.conv`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .conv import conv2d, conv2d_dw, conv2d_dx, conv2d_vjp
from .parallel import map_runs
from .xp import array_namespace, kernels_for

__all__ = ["Primitive", "PRIMS", "cross_entropy", "cross_entropy_vjp"]



# --- batch norm (BL-2.5): batch statistics in training, running statistics in eval ---
#
# Its elementwise passes combine an (M, C) array with per-channel (C,) vectors. NumPy
# loops over such a broadcast C elements at a time (C is 16 in a ResNet's first stage),
# and each pass over a whole array streams it from memory. So the arrays are viewed
# with r rows folded into one (_fold: the vectors tiled r times, inner loops ~1024
# long), and the passes run on row blocks of about ROW_BYTES, so that a block is still
# in cache for the next pass (_row_blocks; one block on CuPy, whose kernels fuse them).
# Inside ``parallel.threads(n)`` the blocks are shared among the n threads (_each_block);
# per-block sums are added in block order, so results are the same for every n.

#: Target bytes of one row block of batch norm's elementwise passes (NumPy).
ROW_BYTES = 1 << 20


def _column_sums(a):
    """Per-channel sums of an (M, C) array, as one GEMV: several times faster than
    ``a.sum(axis=0)``, whose reduction runs along the strided axis, 16 lanes at a time."""
    return array_namespace(a).ones(a.shape[0], a.dtype) @ a


def _fold(a):
    """(M, C) as (M / r, r * C), r = gcd(M, 1024 // C): channel j sits at columns j, j + C, ..."""
    m, c = a.shape
    r = math.gcd(m, max(1, 1024 // c))
    return a.reshape(m // r, r * c), r


def _unfold_sums(sums, r):
    """Per-channel totals of column sums taken over a folded array."""
    return sums.reshape(r, -1).sum(axis=0)


def _row_blocks(a) -> list:
    n = a.shape[0]
    step = n if array_namespace(a) is not np else max(1, ROW_BYTES // (a.shape[1] * a.itemsize))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _each_block(a, body) -> list:
    """``[body(s) for s in _row_blocks(a)]``, the blocks shared among the active threads."""
    return [r for run in map_runs(lambda blocks: [body(s) for s in blocks], _row_blocks(a)) for r in run]


def batchnorm(x, gamma, beta, mean, var, *, momentum=0.1, eps=1e-5, training=True):
    xp = array_namespace(x)
    x2 = x.reshape(-1, x.shape[-1])  # (positions, channels): statistics per channel
    m = x2.shape[0]
    mu = _column_sums(x2) / m if training else mean
    xf, r = _fold(x2)
    xhat, mu_r = xp.empty(xf.shape, xp.result_type(x2, mu)), xp.tile(mu, r)

    def centre(s):
        d = xp.subtract(xf[s], mu_r, out=xhat[s])  # x - mean: kept, normalised below
        return _column_sums(d * d) if training else 0

    sq = sum(_each_block(xf, centre))
    v = _unfold_sums(sq, r) / m if training else var  # biased batch variance
    inv = 1.0 / xp.sqrt(v + eps)
    if kern := kernels_for(x):
        xhat, out = kern.bn_normalize(x2, mu, inv, gamma, beta)
        return out.reshape(x.shape), (xhat, gamma, inv, v, mu, training)
    out, inv_r, gamma_r, beta_r = xp.empty_like(xhat), xp.tile(inv, r), xp.tile(gamma, r), xp.tile(beta, r)

    def normalise(s):
        xhat[s] *= inv_r
        o = xp.multiply(xhat[s], gamma_r, out=out[s])
        o += beta_r

    _each_block(xhat, normalise)
    return out.reshape(x.shape), (xhat.reshape(x2.shape), gamma, inv, v, mu, training)


def batchnorm_vjp(saved, g):
    xhat, gamma, inv, _, _, training = saved
    xp = array_namespace(g)
    dgamma, dbeta = batchnorm_vjp_params(saved, g)
    if not training:
        return g * (gamma * inv), dgamma, dbeta
    m = xhat.shape[0]
    g2 = g.reshape(xhat.shape)
    if kern := kernels_for(g):
        return kern.bn_backward_dx(g2, xhat, dgamma, dbeta, gamma, inv).reshape(g.shape), dgamma, dbeta
    # d/dx of gamma * (x - mean) / std with batch mean and (biased) variance
    (gf, r), (xf, _) = _fold(g2), _fold(xhat)
    dx = xp.empty(gf.shape, xp.result_type(g, xhat))
    a, b, scale = xp.tile(dgamma / m, r), xp.tile(dbeta / m, r), xp.tile(gamma * inv, r)

    def block(s):
        d = xp.multiply(xf[s], a, out=dx[s])
        d += b
        xp.subtract(gf[s], d, out=d)
        d *= scale

    _each_block(gf, block)
    return dx.reshape(g.shape), dgamma, dbeta


def batchnorm_vjp_params(saved, g):
    """(dgamma, dbeta) alone, for a batch norm whose input needs no cotangent."""
    xhat = saved[0]
    g2 = g.reshape(xhat.shape)
    (gf, r), (xf, _) = _fold(g2), _fold(xhat)
    dgamma = sum(_each_block(gf, lambda s: _column_sums(gf[s] * xf[s])))
    return _unfold_sums(dgamma, r), _column_sums(g2)


def batchnorm_update(saved, mean, var, *, momentum=0.1, eps=1e-5, training=True):
    """BL-2.5: running stats, PyTorch convention (unbiased variance in the running estimate)."""
    xhat, _, _, v, mu, _ = saved
    m = xhat.shape[0]
    return (1 - momentum) * mean + momentum * mu, (1 - momentum) * var + momentum * v * (m / max(m - 1, 1))


# --- pooling (window = stride = size; trailing rows/cols that do not fill a window are dropped)

def _windows(x, k):
    n, h, w, c = x.shape
    ho, wo = h // k, w // k
    return x[:, :ho * k, :wo * k].reshape(n, ho, k, wo, k, c)


def _unwindow(dwin, shape):
    xp = array_namespace(dwin)
    n, ho, k, wo, _, c = dwin.shape
    if shape[1] == ho * k and shape[2] == wo * k:
        return dwin.reshape(shape)
    dx = xp.zeros(shape, dwin.dtype)
    dx[:, :ho * k, :wo * k] = dwin.reshape(n, ho * k, wo * k, c)
    return dx


def avgpool(x, *, size):
    return _windows(x, size).mean(axis=(2, 4)), (x.shape, size)


def avgpool_vjp(saved, g):
    shape, k = saved
    xp = array_namespace(g)
    dwin = xp.broadcast_to((g / (k * k))[:, :, None, :, None, :], g.shape[:2] + (k, g.shape[2], k, g.shape[3]))
    return (_unwindow(dwin, shape),)


def maxpool(x, *, size):
    if kern := kernels_for(x):
        y, arg = kern.maxpool(x, size)
        return y, (x.shape, size, arg)
    xp = array_namespace(x)
    win = _windows(x, size)
    n, ho, k, wo, _, c = win.shape
    flat = win.transpose(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, k * k)
    arg = flat.argmax(axis=-1)  # first maximum in row-major window order (as PyTorch)
    return xp.take_along_axis(flat, arg[..., None], -1)[..., 0], (x.shape, size, arg)


def maxpool_vjp(saved, g):
    shape, k, arg = saved
    if kern := kernels_for(g):
        return (kern.maxpool_vjp(g, arg, shape, k),)
    xp = array_namespace(g)
    n, ho, wo, c = g.shape
    onehot = xp.arange(k * k) == arg[..., None]  # routes g to the winning tap (no scatter needed)
    dwin = (onehot * g[..., None]).reshape(n, ho, wo, c, k, k).transpose(0, 1, 4, 2, 5, 3)
    return (_unwindow(dwin, shape),)


# --- the rest: one-liners ---------------------------------------------------------

def _as_rows(*arrays):
    """Same-shaped arrays as (rows, last axis) views, for _each_block."""
    return [a.reshape(-1, a.shape[-1]) for a in arrays]


def relu(x):
    if kern := kernels_for(x):
        return kern.relu(x)
    xp = array_namespace(x)
    y, mask = xp.empty_like(x), xp.empty(x.shape, bool)
    x2, y2, m2 = _as_rows(x, y, mask)
    _each_block(x2, lambda s: xp.greater(xp.maximum(x2[s], 0, out=y2[s]), 0, out=m2[s]))
    return y, mask  # derivative 0 at x == 0, as PyTorch


def relu_vjp(mask, g):
    xp = array_namespace(g)
    dx = xp.empty(g.shape, g.dtype)
    g2, m2, d2 = _as_rows(g, mask, dx)
    _each_block(g2, lambda s: xp.multiply(g2[s], m2[s], out=d2[s]))
    return (dx,)


def add(a, b):
    return a + b, None


def global_avgpool(x):
    return x.mean(axis=(1, 2)), x.shape


def global_avgpool_vjp(shape, g):
    xp = array_namespace(g)
    return (xp.broadcast_to((g / (shape[1] * shape[2]))[:, None, None, :], shape),)


def linear(x, w, b, *, out):
    return x @ w + b, (x, w)


def reshape(x, *, shape):
    return x.reshape((x.shape[0],) + tuple(shape)), x.shape


def flatten(x):
    return x.reshape(x.shape[0], -1), x.shape


@dataclass(frozen=True)
class Primitive:
    fwd: Callable
    vjp: Callable
    update: Callable | None = None  # buffers' new values in training (batch norm only)
    # The VJP in two halves, where one half is worth skipping (the engine, BL-3.7 by
    # linearity): cotangents of the inputs only, and of the parameters only.
    vjp_inputs: Callable | None = None
    vjp_params: Callable | None = None


#: The VJP table: name -> forward, VJP (saved residuals, cotangent) -> cotangents.
PRIMS: dict[str, Primitive] = {
    "conv2d": Primitive(conv2d, conv2d_vjp, vjp_inputs=conv2d_dx, vjp_params=conv2d_dw),
    "batchnorm": Primitive(batchnorm, batchnorm_vjp, batchnorm_update, vjp_params=batchnorm_vjp_params),
    "relu": Primitive(relu, relu_vjp),
    "add": Primitive(add, lambda _, g: (g, g)),
    "avgpool": Primitive(avgpool, avgpool_vjp),
    "maxpool": Primitive(maxpool, maxpool_vjp),
    "global_avgpool": Primitive(global_avgpool, global_avgpool_vjp),
    "linear": Primitive(linear, lambda s, g: (g @ s[1].T, s[0].T @ g, g.sum(axis=0)),
                        vjp_inputs=lambda s, g: (g @ s[1].T,), vjp_params=lambda s, g: (s[0].T @ g, g.sum(axis=0))),
    "flatten": Primitive(flatten, lambda shape, g: (g.reshape(shape),)),
    "reshape": Primitive(reshape, lambda shape, g: (g.reshape(shape),)),
}


def cross_entropy(logits, y):
    """Mean log-softmax cross-entropy; returns (loss, saved). ``y`` holds class indices."""
    xp = array_namespace(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    rows = xp.arange(len(y))
    return -logp[rows, y].mean(), (logp, y)


def cross_entropy_vjp(saved, g):
    """d(loss)/d(logits) * g = (softmax - onehot) / N * g."""
    logp, y = saved
    xp = array_namespace(logp)
    d = xp.exp(logp)
    d[xp.arange(len(y)), y] -= 1
    return d * (g / len(y))


# --- BL-2.7 token sequences (Vision Transformers): per sample (T, D) -------------------
# Residuals are values the engine keeps anyway (inputs, outputs) or, for layer norm,
# xhat and 1/std: the memory model (memory.RESIDUALS) names exactly these.

def _patches(x, p):
    """(n, T, p*p*C) rows of non-overlapping p x p patches, row-major over patches and inside one."""
    n, h, w, c = x.shape
    return x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // p) * (w // p), p * p * c)


def patch_embed(x, w, b, *, patch, out):
    return _patches(x, patch) @ w.reshape(-1, out) + b, (x, w, patch)


def patch_embed_vjp(saved, g):
    x, w, p = saved
    n, h, wd, c = x.shape
    w2, g2 = w.reshape(-1, w.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = (_patches(x, p).reshape(-1, w2.shape[0]).T @ g2).reshape(w.shape)  # patches recomputed, as conv
    dx = (g @ w2.T).reshape(n, h // p, wd // p, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(x.shape)
    return dx, dw, _column_sums(g2)


def layernorm(x, gamma, beta, *, eps=1e-5):
    xp = array_namespace(x)
    xhat = x - x.mean(axis=-1, keepdims=True)
    inv = 1.0 / xp.sqrt((xhat * xhat).mean(axis=-1, keepdims=True) + eps)  # biased variance, eps inside
    xhat *= inv
    return xhat * gamma + beta, (xhat, gamma, inv)


def layernorm_vjp(saved, g):
    xhat, gamma, inv = saved
    d = g.shape[-1]
    gx = g * gamma
    # d/dx of (x - mean) / std over the last axis: project out the mean and the xhat direction
    dx = inv * (gx - gx.mean(axis=-1, keepdims=True) - xhat * (gx * xhat).mean(axis=-1, keepdims=True))
    return dx, _column_sums((g * xhat).reshape(-1, d)), _column_sums(g.reshape(-1, d))


GELU_C, GELU_A = (2.0 / 3.141592653589793) ** 0.5, 0.044715


def gelu(x):
    """Tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (PyTorch approximate='tanh')."""
    t = array_namespace(x).tanh(GELU_C * (x + GELU_A * x * x * x))
    return 0.5 * x * (1.0 + t), x


def gelu_vjp(x, g):
    t = array_namespace(x).tanh(GELU_C * (x + GELU_A * x * x * x))  # recomputed: x is kept anyway
    return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3 * GELU_A * x * x)),)


def token_linear(x, w, b, *, out):
    return x @ w + b, (x, w)


def token_linear_vjp(saved, g):
    x, w = saved
    g2 = g.reshape(-1, g.shape[-1])
    return g @ w.T, x.reshape(-1, x.shape[-1]).T @ g2, _column_sums(g2)


def transpose(x, *, perm):
    """A copy in the new order (not a view): what follows (reshape, matmul) reads it densely."""
    axes = (0,) + tuple(p + 1 for p in perm)
    return x.transpose(axes).copy(), axes  # copy() even where the transpose is already dense


def transpose_vjp(axes, g):
    inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))
    return (g.transpose(inverse).copy(),)


def softmax(x):
    """Over the last axis; the row maximum is subtracted first (exp never overflows)."""
    xp = array_namespace(x)
    y = xp.exp(x - x.max(axis=-1, keepdims=True))
    y /= y.sum(axis=-1, keepdims=True)
    return y, y


def softmax_vjp(y, g):
    return (y * (g - (g * y).sum(axis=-1, keepdims=True)),)  # J = diag(y) - y y^T per row


def token_mean(x):
    return x.mean(axis=1), x.shape


def token_mean_vjp(shape, g):
    return (array_namespace(g).broadcast_to((g / shape[1])[:, None, :], shape),)


PRIMS.update({
    "patch_embed": Primitive(patch_embed, patch_embed_vjp),
    "pos_embed": Primitive(lambda x, pos: (x + pos, None), lambda _, g: (g, g.sum(axis=0))),
    "layernorm": Primitive(layernorm, layernorm_vjp),
    "gelu": Primitive(gelu, gelu_vjp),
    "token_linear": Primitive(token_linear, token_linear_vjp),
    "matmul": Primitive(lambda a, b: (a @ b, (a, b)),
                        lambda s, g: (g @ s[1].swapaxes(-1, -2), s[0].swapaxes(-1, -2) @ g)),
    "transpose": Primitive(transpose, transpose_vjp),
    "scale": Primitive(lambda x, *, factor: (x * factor, factor), lambda f, g: (g * f,)),
    "softmax": Primitive(softmax, softmax_vjp),
    "token_mean": Primitive(token_mean, token_mean_vjp),
})
