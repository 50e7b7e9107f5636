"""Mutant backends for the transformer parts (BL-2.7, BL-2.8, BL-4.7): the reference with ONE
planted bug each, as in ``tests/meta/mutants.py``. The suite must reject all of them."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tests.meta.isolated import Mutant

__all__ = ["MUTANTS", "Baseline"]


def _replace_prim(ref, name, **fields):
    ref.primitives.PRIMS[name] = dataclasses.replace(ref.primitives.PRIMS[name], **fields)


class Baseline(Mutant):
    """No bug: the mutant machinery itself must pass the suite."""


# ---------------------------------------------------------------- primitives (BL-2.7)

class AttentionScaleMissing(Mutant):
    bug = "attention scores are not scaled by 1/sqrt(d_h) (the scale op is the identity)"

    def plant(self, ref):
        _replace_prim(ref, "scale", fwd=lambda x, *, factor: (x, None), vjp=lambda _, g: (g,))


class SoftmaxWrongAxis(Mutant):
    bug = "softmax normalises over the second-to-last axis (queries) instead of the last (keys)"

    def plant(self, ref):
        def fwd(x):
            y, _ = ref.primitives.softmax(x.swapaxes(-1, -2))
            return y.swapaxes(-1, -2), y.swapaxes(-1, -2)
        _replace_prim(ref, "softmax", fwd=fwd,
                      vjp=lambda y, g: (y * (g - (g * y).sum(axis=-2, keepdims=True)),))


class LayerNormUnbiased(Mutant):
    bug = "layer norm divides by the unbiased variance (D - 1)"

    def plant(self, ref):
        def unbiased(x, gamma, beta, *, eps=1e-5):
            xc = x - x.mean(axis=-1, keepdims=True)
            inv = 1.0 / np.sqrt((xc * xc).sum(axis=-1, keepdims=True) / max(x.shape[-1] - 1, 1) + eps)
            return xc * inv * gamma + beta, (xc * inv, gamma, inv)
        _replace_prim(ref, "layernorm", fwd=unbiased)


class LayerNormOverTokens(Mutant):
    bug = "layer norm takes its statistics over the token axis instead of the feature axis"

    def plant(self, ref):
        fwd, vjp = ref.primitives.layernorm, ref.primitives.layernorm_vjp

        def tokens(x, gamma, beta, *, eps=1e-5):
            if x.ndim != 3:
                return fwd(x, gamma, beta, eps=eps)
            mu = x.mean(axis=1, keepdims=True)
            inv = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=1, keepdims=True) + eps)
            xhat = (x - mu) * inv
            return xhat * gamma + beta, (xhat, gamma, inv)
        _replace_prim(ref, "layernorm", fwd=tokens, vjp=vjp)


class GeluErf(Mutant):
    bug = "GELU in its erf form instead of the tanh form the spec chooses"

    def plant(self, ref):
        erf = np.vectorize(math.erf)

        def fwd(x):
            return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))), x

        def vjp(x, g):
            return (g * (0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)),)
        _replace_prim(ref, "gelu", fwd=fwd, vjp=vjp)


class PatchesColumnMajor(Mutant):
    bug = "patch tokens are numbered column-major (down the image first)"

    def plant(self, ref):
        fwd, vjp = ref.primitives.patch_embed, ref.primitives.patch_embed_vjp

        def cols(x, w, b, *, patch, out):  # the transposed image's row-major patches
            return fwd(x.swapaxes(1, 2), w.swapaxes(0, 1), b, patch=patch, out=out)

        def cols_vjp(saved, g):
            dx, dw, db = vjp(saved, g)
            return dx.swapaxes(1, 2), dw.swapaxes(0, 1), db
        _replace_prim(ref, "patch_embed", fwd=cols, vjp=cols_vjp)


class PosEmbedMeanGrad(Mutant):
    bug = "the positional embedding's gradient is the batch mean, not the sum"

    def plant(self, ref):
        _replace_prim(ref, "pos_embed", vjp=lambda _, g: (g, g.mean(axis=0)))


# ---------------------------------------------------------------- units and links (BL-2.8)

class LinkCountsBlocks(Mutant):
    bug = "at half-block grain the link length is counted in whole blocks (the tail stops a half-block too early)"

    def compute(self, runner, x, y):
        p = runner.problem
        m = p.method
        if m.kind == "backlink" and any(u.name.endswith(".attn") for u in p.graph.units):
            m = dataclasses.replace(m, link_length=2 * m.link_length, allow_cross_module=True)
        return self.ref.backend.gradients(p.graph, p.partition, m, runner.params, runner.buffers, x, y,
                                          validated=True)


# ---------------------------------------------------------------- AdamW (BL-4.7)

def _adamw_variant(ref, *, bias_correction=True, coupled=False, decay_all=False, eps_inside=False):
    def adamw(params, grads, state, opt, t, decay):
        lr, (b1, b2) = ref.optim.lr_at(opt.lr, opt.schedule, t), opt.betas
        params, state = dict(params), dict(state)
        for k, g in grads.items():
            decays = decay_all or k in decay
            if coupled and decays:
                g = g + opt.weight_decay * params[k]  # Adam-L2: the decay goes through the moments
            m, v, n = state[k]
            m, v, n = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g, n + 1
            c1, c2 = (1 - b1 ** n, 1 - b2 ** n) if bias_correction else (1.0, 1.0)
            theta = params[k] * (1 - lr * opt.weight_decay) if (decays and not coupled) else params[k]
            denom = np.sqrt(v / c2 + opt.eps) if eps_inside else np.sqrt(v / c2) + opt.eps
            params[k] = theta - lr * (m / c1) / denom
            state[k] = (m, v, n)
        return params, state
    ref.optim.adamw = adamw


class AdamNoBiasCorrection(Mutant):
    bug = "AdamW without bias correction of m and v"

    def plant(self, ref):
        _adamw_variant(ref, bias_correction=False)


class AdamCoupledDecay(Mutant):
    bug = "weight decay added to the gradient (Adam + L2) instead of decoupled"

    def plant(self, ref):
        _adamw_variant(ref, coupled=True)


class AdamDecayOnAll(Mutant):
    bug = "AdamW decays biases, norms and positional embeddings too (ignores ArraySpec.decay)"

    def plant(self, ref):
        _adamw_variant(ref, decay_all=True)


class AdamEpsInsideSqrt(Mutant):
    bug = "AdamW adds eps inside the square root of v-hat"

    def plant(self, ref):
        _adamw_variant(ref, eps_inside=True)


class AdamIsSgd(Mutant):
    bug = "optimizer kind 'adamw' is ignored: plain SGD (no momentum) is applied"

    def plant(self, ref):
        def as_sgd(params, grads, state, opt, t, decay):
            return ref.optim.sgd(params, grads, {}, opt, t, decay)[0], state
        ref.optim.adamw = as_sgd


MUTANTS = sorted(name for name, obj in list(globals().items())
                 if isinstance(obj, type) and issubclass(obj, Mutant) and obj not in (Mutant, Baseline)
                 and not name.startswith("_"))
