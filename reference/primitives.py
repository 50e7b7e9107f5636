"""BL-2.2 primitives: forward functions and their VJPs, written once against ``xp``.

Every forward is ``fwd(*arrays, **attrs) -> (out, saved)``; every VJP is
``vjp(saved, g) -> cotangents`` (one per array argument: inputs, then parameters).
Layout: NHWC activations, HWIO conv weights, (d_in, d_out) linear weights.
The same code runs on NumPy and CuPy: the namespace comes from the arguments. On CuPy,
the memory-bound helpers marked ``kernels_for`` run as one hand-written CUDA kernel each
(backends/cupy_backend/kernels.cu, checked against these NumPy lines); the algorithm
around them is this file's, unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .parallel import map_runs
from .xp import array_namespace, kernels_for

__all__ = ["Primitive", "PRIMS", "cross_entropy", "cross_entropy_vjp"]


# --- convolution: blocked im2col over NHWC + GEMMs, for the forward and both cotangents ---
#
# The patch matrix of a whole batch is k*k times the input, far larger than any cache:
# building it, then streaming it through one GEMM, is bound by memory traffic (the copies
# alone were ~30% of a ResNet step). So the batch is cut into groups of images whose
# patch matrix is about COLUMN_BYTES; each group's patches are written into one reused
# buffer and consumed by its GEMM while still in cache. On CuPy one group holds the whole
# batch (a GPU wants one large launch per op). Inside ``parallel.threads(n)`` the groups
# are shared among n threads (parallel.map_runs), each with its own buffer.

#: Target bytes of one group's patch matrix on the CPU: about one core's L2 cache.
COLUMN_BYTES = 1 << 20


def _im2col(x, k, stride, pad, out=None):
    """(N*Ho*Wo, k*k*C) patch matrix of ``x`` zero-padded by ``pad``, and (N, Ho, Wo).

    Written into the first rows of ``out`` (a C-contiguous 2-D buffer) when given (NumPy).
    """
    if kern := kernels_for(x):
        return kern.im2col(x, k, stride, pad)
    xp = array_namespace(x)
    n, h, w, c = x.shape
    if pad:
        xpad = xp.zeros((n, h + 2 * pad, w + 2 * pad, c), x.dtype)
        xpad[:, pad:pad + h, pad:pad + w] = x
        x = xpad
    ho, wo = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    sn, sh, sw, sc = x.strides
    patches = xp.lib.stride_tricks.as_strided(x, (n, ho, wo, k, k, c), (sn, sh * stride, sw * stride, sh, sw, sc))
    if out is None:
        return patches.reshape(n * ho * wo, k * k * c), (n, ho, wo)
    cols = out[:n * ho * wo]
    cols.reshape(patches.shape)[...] = patches
    return cols, (n, ho, wo)


def _groups(x, rows_per_image: int, width: int) -> list:
    """Slices of ``x``'s images whose (rows, width) patch matrix is about COLUMN_BYTES."""
    n = x.shape[0]
    if array_namespace(x) is not np:
        return [slice(0, n)]
    step = max(1, COLUMN_BYTES // (rows_per_image * width * x.itemsize))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _buffer(x, groups, rows_per_image: int, width: int):
    """One patch buffer for a run of groups (the first is the largest); None on CuPy."""
    if array_namespace(x) is not np:
        return None
    return np.empty(((groups[0].stop - groups[0].start) * rows_per_image, width), x.dtype)


def _for_groups(x, rows_per_image, width, body):
    """``body(s, buffer)`` for every image group s, on the active threads; per-run results."""
    def run(groups):
        buf = _buffer(x, groups, rows_per_image, width)
        return [body(s, buf) for s in groups]
    return map_runs(run, _groups(x, rows_per_image, width))


def conv2d(x, w, *, kernel, out, stride=1, padding=0):
    xp = array_namespace(x)
    n, h, wd, c = x.shape
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (wd + 2 * padding - kernel) // stride + 1
    y = xp.empty((n, ho, wo, out), xp.result_type(x, w))
    w2 = w.reshape(-1, out)

    def group(s, buf):  # y's rows of group s: one GEMM on the group's patches
        cols, _ = _im2col(x[s], kernel, stride, padding, buf)
        xp.matmul(cols, w2, out=y[s].reshape(-1, out))

    _for_groups(x, ho * wo, kernel * kernel * c, group)
    return y, (x, w, stride, padding)


def conv2d_dw(saved, g):
    """(dw,): sum over groups of patches(x)^T @ g, added in group order."""
    x, w, stride, padding = saved
    k, _, c, o = w.shape
    g3 = g.reshape(g.shape[0], -1, o)  # (n, Ho*Wo, o)
    parts = _for_groups(x, g3.shape[1], k * k * c,
                        lambda s, buf: _im2col(x[s], k, stride, padding, buf)[0].T @ g3[s].reshape(-1, o))
    products = [p for run in parts for p in run]  # fresh arrays: the first can take the sum
    dw = products[0]
    for p in products[1:]:
        dw += p
    return (dw.reshape(w.shape),)


def conv2d_dx(saved, g):
    """(dx,): the cotangent of the conv's input."""
    x, w, stride, padding = saved
    xp = array_namespace(g)
    k, _, c, o = w.shape
    n, h, wd, _ = x.shape
    dtype = xp.result_type(g, w)
    if stride > 1:  # col2im: scatter-add each kernel tap (dilating g would be mostly zeros)
        w2t = w.reshape(-1, o).T
        if kern := kernels_for(g):
            return (kern.col2im(g.reshape(-1, o) @ w2t, x.shape, k, stride, padding),)
        ho, wo = g.shape[1:3]
        dpad = xp.zeros((n, h + 2 * padding, wd + 2 * padding, c), dtype)

        def scatter(s, buf):
            m = (s.stop - s.start) * ho * wo
            dcols = xp.matmul(g[s].reshape(m, o), w2t, out=buf[:m]).reshape(-1, ho, wo, k, k, c)
            dp = dpad[s]
            for i in range(k):
                for j in range(k):
                    dp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += dcols[:, :, :, i, j]

        _for_groups(g, ho * wo, k * k * c, scatter)
        return ((dpad[:, padding:padding + h, padding:padding + wd] if padding else dpad),)
    # stride 1: the transposed convolution -- g bordered by k-1-padding zeros (BL-2.3 keeps
    # padding < kernel), the flipped kernel with c_in and c_out swapped; exactly x's size
    wflip = w[::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, c)
    dx = xp.empty(x.shape, dtype)

    def transposed(s, buf):
        gcols, _ = _im2col(g[s], k, 1, k - 1 - padding, buf)
        xp.matmul(gcols, wflip, out=dx[s].reshape(-1, c))

    _for_groups(g, h * wd, k * k * o, transposed)
    return (dx,)


def conv2d_vjp(saved, g):
    return conv2d_dx(saved, g) + conv2d_dw(saved, g)


# --- batch norm (BL-2.5): batch statistics in training, running statistics in eval ---
#
# Its elementwise passes combine an (M, C) array with per-channel (C,) vectors. NumPy
# loops over such a broadcast C elements at a time (C is 16 in a ResNet's first stage),
# and each pass over a whole array streams it from memory. So the arrays are viewed
# with r rows folded into one (_fold: the vectors tiled r times, inner loops ~1024
# long), and the passes run on row blocks of about ROW_BYTES, so that a block is still
# in cache for the next pass (_row_blocks; one block on CuPy, whose kernels fuse them).

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


def batchnorm(x, gamma, beta, mean, var, *, momentum=0.1, eps=1e-5, training=True):
    xp = array_namespace(x)
    x2 = x.reshape(-1, x.shape[-1])  # (positions, channels): statistics per channel
    m = x2.shape[0]
    mu = _column_sums(x2) / m if training else mean
    xf, r = _fold(x2)
    xhat, mu_r, sq = xp.empty(xf.shape, xp.result_type(x2, mu)), xp.tile(mu, r), 0
    for s in _row_blocks(xf):
        d = xp.subtract(xf[s], mu_r, out=xhat[s])  # x - mean: kept, normalised below
        if training:
            sq = sq + _column_sums(d * d)
    v = _unfold_sums(sq, r) / m if training else var  # biased batch variance
    inv = 1.0 / xp.sqrt(v + eps)
    if kern := kernels_for(x):
        xhat, out = kern.bn_normalize(x2, mu, inv, gamma, beta)
        return out.reshape(x.shape), (xhat, gamma, inv, v, mu, training)
    out, inv_r, gamma_r, beta_r = xp.empty_like(xhat), xp.tile(inv, r), xp.tile(gamma, r), xp.tile(beta, r)
    for s in _row_blocks(xhat):
        xhat[s] *= inv_r
        o = xp.multiply(xhat[s], gamma_r, out=out[s])
        o += beta_r
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
    for s in _row_blocks(gf):
        d = xp.multiply(xf[s], a, out=dx[s])
        d += b
        xp.subtract(gf[s], d, out=d)
        d *= scale
    return dx.reshape(g.shape), dgamma, dbeta


def batchnorm_vjp_params(saved, g):
    """(dgamma, dbeta) alone, for a batch norm whose input needs no cotangent."""
    xhat = saved[0]
    g2 = g.reshape(xhat.shape)
    (gf, r), (xf, _) = _fold(g2), _fold(xhat)
    dgamma = 0
    for s in _row_blocks(gf):
        dgamma = dgamma + _column_sums(gf[s] * xf[s])
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

def relu(x):
    if kern := kernels_for(x):
        return kern.relu(x)
    y = array_namespace(x).maximum(x, 0)
    return y, y > 0  # derivative 0 at x == 0, as PyTorch


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
    "relu": Primitive(relu, lambda mask, g: (g * mask,)),
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
