"""BL-2.2 ``conv2d`` on NumPy and CuPy: its forward and VJPs (:mod:`.primitives` lists them).

What it computes is the plain definition (BL-2.2: NHWC input, HWIO weights, zero padding,
stride); this module is how it computes it fast, and its tests hold it to that definition
(tests/test_blocked_conv.py runs every case under both patch designs below, and the
float64 gradchecks of tests/test_primitives.py cover the VJPs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .parallel import map_runs
from .xp import array_namespace, kernels_for

__all__ = ["conv2d", "conv2d_vjp", "conv2d_dx", "conv2d_dw"]


# NHWC patch matrices, a few images at a time, and GEMMs.
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
