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


# --- convolution: NHWC patch matrices, a few images at a time, and GEMMs --------------------
#
# The classic patch matrix (im2col) of a batch is k*k times the input: building it, then
# streaming it through one GEMM, is bound by memory traffic. Two things keep it small:
#
# - Groups: the batch is cut into groups of images whose patch matrix is about
#   COLUMN_BYTES; each group's patches go into a reused buffer and feed their GEMMs while
#   still in cache. On CuPy one group holds the whole batch (a GPU wants large launches).
#   Inside ``parallel.threads(n)`` the groups are shared among n threads (map_runs), each
#   with its own buffers.
# - Row patches, for stride-1 convolutions of large images: in NHWC, the k horizontal taps
#   of an output pixel are k*c contiguous numbers of the padded input. R holds them, one
#   row per (image, padded row, output column): k times the input, not k*k, copied k*c
#   numbers at a time, not c. Output row j of a group is then sum_ki R[j + ki*wo] @ W[ki],
#   k GEMMs on shifted slices of R; the last k-1 padded rows of an image start no output
#   row, so those sums read into the next image and are dropped. Measured on 1 core, a
#   ResNet's 32x32x16 stage: forward and both VJPs 1.2x faster than im2col (34 vs 41 ms).
#   On small images the dropped rows cost more than im2col's copy saves (8x8x64: 1.15x
#   slower), so im2col stays for those, and for strided convolutions (a shift cannot skip
#   rows).

#: Target bytes of one group's patch matrix (as im2col would build it; NumPy). One size for
#: every thread count, so the weight gradient's sum over groups, and so every result, is the
#: same for any n. 2 MB: with worker threads each of a group's NumPy calls hands the GIL
#: between the threads, so smaller groups scale badly (a 32x32x16 conv's forward and VJPs on
#: 2 cores: 38 ms with 1 MB groups, 26 ms with 2 MB); on 1 thread, 2 MB is within 6% of 1 MB.
COLUMN_BYTES = 1 << 21


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


def _for_groups(x, rows_per_image, width, body, scratch) -> list:
    """``[body(s, buffers) for s in groups]`` over the image groups, on the active threads.
    ``scratch(m)`` makes one run's buffers for groups of up to m images."""
    def run(groups):
        buffers = scratch(groups[0].stop - groups[0].start)  # the first group is the largest
        return [body(s, buffers) for s in groups]
    return [r for results in map_runs(run, _groups(x, rows_per_image, width)) for r in results]


@dataclass(frozen=True)
class _RowPlan:
    """Sizes of a stride-1 convolution by row patches: input (h, w, c) padded by ``pad``."""
    k: int
    pad: int
    h: int
    w: int
    c: int

    @property
    def hp(self):  # padded rows; R has hp rows per image, of which the first ho start an output row
        return self.h + 2 * self.pad

    @property
    def ho(self):
        return self.hp - self.k + 1

    @property
    def wo(self):
        return self.w + 2 * self.pad - self.k + 1

    def sums(self, m):
        """Rows of shifted sums over m images (image i's output rows start at i * hp * wo)."""
        return (m * self.hp - self.k + 1) * self.wo

    def scratch(self, xp, m, dtype):
        """A zero-bordered padded group (the border is never written) and R's buffer."""
        return (xp.zeros((m, self.hp, self.w + 2 * self.pad, self.c), dtype),
                xp.empty((m * self.hp * self.wo, self.k * self.c), dtype))

    def patches(self, x, xpad, out):
        """R of the images ``x``: row (i, r, j) holds padded x[i, r, j:j+k, :], k*c numbers."""
        m, p = x.shape[0], self.pad
        xpad = xpad[:m]
        xpad[:, p:p + self.h, p:p + self.w] = x
        sn, sh, sw, sc = xpad.strides
        R = out[:m * self.hp * self.wo]
        R.reshape(m, self.hp, self.wo, -1)[...] = array_namespace(x).lib.stride_tricks.as_strided(
            xpad, (m, self.hp, self.wo, self.k * self.c), (sn, sh, sw, sc))
        return R


#: Row patches are used where an image has at least this many output rows per dropped row,
#: and at least ROW_CHANNELS input channels (fewer make a GEMM too thin to pay: a stem).
ROWS_PER_DROPPED, ROW_CHANNELS = 8, 8


def _row_plan(x, k, stride, pad):
    """The row-patch plan of a convolution of x, or None where im2col is the better design:
    strided, too few output rows per image (the k-1 dropped sums would cost more than 1/8),
    or too few channels."""
    plan = _RowPlan(k, pad, *x.shape[1:])
    return plan if stride == 1 and plan.ho >= ROWS_PER_DROPPED * (k - 1) and plan.c >= ROW_CHANNELS else None


def _conv_rows(x, w, plan, y):
    """Writes the stride-1 convolution of ``x`` with HWIO ``w`` into y, by row patches."""
    xp = array_namespace(x)
    k, _, c, o = w.shape
    w3 = w.reshape(k, k * c, o)

    def scratch(m):
        return plan.scratch(xp, m, x.dtype) + (xp.empty((2, m * plan.hp * plan.wo, o), y.dtype),)

    def group(s, bufs):
        xpad, rbuf, (acc, tmp) = bufs
        R, m = plan.patches(x[s], xpad, rbuf), s.stop - s.start
        n = plan.sums(m)
        xp.matmul(R[:n], w3[0], out=acc[:n])
        for ki in range(1, k):
            acc[:n] += xp.matmul(R[ki * plan.wo:ki * plan.wo + n], w3[ki], out=tmp[:n])
        y[s] = acc[:m * plan.hp * plan.wo].reshape(m, plan.hp, plan.wo, o)[:, :plan.ho]

    _for_groups(x, plan.ho * plan.wo, k * k * c, group, scratch)
    return y


def _patch_buffer(x, rows_per_image, width):
    """``scratch`` for im2col groups: one patch buffer per run (None on CuPy: one group)."""
    return lambda m: np.empty((m * rows_per_image, width), x.dtype) if array_namespace(x) is np else None


def _conv(x, w, stride, pad):
    """The convolution of NHWC ``x``, zero-padded by ``pad``, with HWIO ``w``."""
    xp = array_namespace(x)
    n, h, wd, c = x.shape
    k, _, _, o = w.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    y = xp.empty((n, ho, wo, o), xp.result_type(x, w))
    if plan := _row_plan(x, k, stride, pad):
        return _conv_rows(x, w, plan, y)
    w2, width = w.reshape(-1, o), k * k * c

    def group(s, buf):  # y's rows of group s: one GEMM on the group's patches
        cols, _ = _im2col(x[s], k, stride, pad, buf)
        xp.matmul(cols, w2, out=y[s].reshape(-1, o))

    _for_groups(x, ho * wo, width, group, _patch_buffer(x, ho * wo, width))
    return y


def conv2d(x, w, *, kernel, out, stride=1, padding=0):
    return _conv(x, w, stride, padding), (x, w, stride, padding)


def conv2d_dw(saved, g):
    """(dw,): sum over groups of patches(x)^T @ g, added in group order."""
    x, w, stride, padding = saved
    xp = array_namespace(g)
    k, _, c, o = w.shape
    if plan := _row_plan(x, k, stride, padding):  # dW[ki] = sum_j R[j + ki*wo]^T g_j, g zero on dropped rows

        def scratch(m):
            return plan.scratch(xp, m, x.dtype) + (xp.zeros((m, plan.hp, plan.wo, o), g.dtype),)

        def product(s, bufs):
            xpad, rbuf, gbuf = bufs
            R, m = plan.patches(x[s], xpad, rbuf), s.stop - s.start
            gp = gbuf[:m]
            gp[:, :plan.ho] = g[s]  # rows ho..hp-1 stay zero
            n = plan.sums(m)
            gf = gp.reshape(-1, o)[:n]
            return xp.stack([R[ki * plan.wo:ki * plan.wo + n].T @ gf for ki in range(k)])

        products = _for_groups(x, plan.ho * plan.wo, k * k * c, product, scratch)
    else:
        g3, width = g.reshape(g.shape[0], -1, o), k * k * c  # (n, Ho*Wo, o)
        products = _for_groups(x, g3.shape[1], width,
                               lambda s, buf: _im2col(x[s], k, stride, padding, buf)[0].T @ g3[s].reshape(-1, o),
                               _patch_buffer(x, g3.shape[1], width))
    dw = products[0]  # fresh arrays, in group order: the first can take the sum
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
    if stride == 1:  # the transposed convolution: g bordered by k-1-padding zeros (BL-2.3
        # keeps padding < kernel), the flipped kernel with c_in and c_out swapped; x's size
        return (_conv(g, w[::-1, ::-1].transpose(0, 1, 3, 2), 1, k - 1 - padding),)
    # col2im: scatter-add each kernel tap (dilating g would be mostly zeros)
    w2t = w.reshape(-1, o).T
    if kern := kernels_for(g):
        return (kern.col2im(g.reshape(-1, o) @ w2t, x.shape, k, stride, padding),)
    ho, wo = g.shape[1:3]
    dpad = xp.zeros((n, h + 2 * padding, wd + 2 * padding, c), dtype)

    def scatter(s, buf):
        m = (s.stop - s.start) * ho * wo
        dcols = xp.matmul(g[s].reshape(m, o), w2t, out=None if buf is None else buf[:m])
        dcols = dcols.reshape(-1, ho, wo, k, k, c)
        dp = dpad[s]
        for i in range(k):
            for j in range(k):
                dp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride] += dcols[:, :, :, i, j]

    _for_groups(g, ho * wo, k * k * c, scatter, _patch_buffer(g, ho * wo, k * k * c))
    return ((dpad[:, padding:padding + h, padding:padding + wd] if padding else dpad),)


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
