"""BL-2.2: every primitive's VJP against central differences (float64, random cotangents)."""
import math

import numpy as np
import pytest

from backlink.reference.gradcheck import GradcheckError, check_primitive, gradcheck
from backlink.reference.primitives import PRIMS, Primitive, cross_entropy, cross_entropy_vjp

R = np.random.default_rng(1234)
X = R.standard_normal((3, 7, 6, 4))
FLAT = R.standard_normal((5, 4))
GAMMA, BETA = R.standard_normal(4) + 1.5, R.standard_normal(4)
STATS = [R.standard_normal(4), R.random(4) + 0.5]
TOK, HEADS = R.standard_normal((3, 5, 4)), R.standard_normal((3, 2, 4, 3))

CASES = {
    "conv3x3": ("conv2d", [X, R.standard_normal((3, 3, 4, 5))], dict(kernel=3, out=5, stride=1, padding=1)),
    "conv3x3_stride2_pad1": ("conv2d", [X, R.standard_normal((3, 3, 4, 5))], dict(kernel=3, out=5, stride=2, padding=1)),
    "conv3x3_valid": ("conv2d", [X, R.standard_normal((3, 3, 4, 2))], dict(kernel=3, out=2)),
    "conv1x1_stride2": ("conv2d", [X, R.standard_normal((1, 1, 4, 6))], dict(kernel=1, out=6, stride=2)),
    "conv2x2_stride3_pad1": ("conv2d", [X, R.standard_normal((2, 2, 4, 3))], dict(kernel=2, out=3, stride=3, padding=1)),
    "conv3x3_pad2_stride1": ("conv2d", [X, R.standard_normal((3, 3, 4, 2))], dict(kernel=3, out=2, padding=2)),
    "bn_train_image": ("batchnorm", [X, GAMMA, BETA, *STATS], dict(training=True, wrt=[0, 1, 2])),
    "bn_train_flat": ("batchnorm", [FLAT, GAMMA, BETA, *STATS], dict(training=True, wrt=[0, 1, 2])),
    "bn_eval": ("batchnorm", [X, GAMMA, BETA, *STATS], dict(training=False, wrt=[0, 1, 2])),
    "relu": ("relu", [X], {}),
    "add": ("add", [X, R.standard_normal(X.shape)], {}),
    "avgpool2": ("avgpool", [X], dict(size=2)),
    "avgpool3_crop": ("avgpool", [X], dict(size=3)),
    "maxpool2": ("maxpool", [X], dict(size=2)),
    "maxpool3_crop": ("maxpool", [X], dict(size=3)),
    "global_avgpool": ("global_avgpool", [X], {}),
    "linear": ("linear", [FLAT, R.standard_normal((4, 3)), R.standard_normal(3)], dict(out=3)),
    "flatten": ("flatten", [X], {}),
    "reshape": ("reshape", [X], dict(shape=(42, 4))),
    # BL-2.7 token sequences: TOK is (n, T, D) = (3, 5, 4); HEADS is (n, h, T, d_h)
    "patch_embed": ("patch_embed", [X[:, :6], R.standard_normal((3, 3, 4, 5)), R.standard_normal(5)],
                    dict(patch=3, out=5)),
    "patch_embed_1": ("patch_embed", [X, R.standard_normal((1, 1, 4, 2)), R.standard_normal(2)], dict(patch=1, out=2)),
    "pos_embed": ("pos_embed", [TOK, R.standard_normal((5, 4))], {}),
    "layernorm_tokens": ("layernorm", [TOK, GAMMA, BETA], dict(eps=1e-5)),
    "layernorm_heads": ("layernorm", [HEADS, GAMMA[:3], BETA[:3]], dict(eps=1e-3)),
    "gelu": ("gelu", [3 * TOK], {}),
    "token_linear": ("token_linear", [TOK, R.standard_normal((4, 6)), R.standard_normal(6)], dict(out=6)),
    "matmul": ("matmul", [HEADS, R.standard_normal((3, 2, 3, 5))], {}),
    "matmul_2d": ("matmul", [TOK, R.standard_normal((3, 4, 2))], {}),
    "transpose": ("transpose", [HEADS], dict(perm=(1, 2, 0))),
    "transpose_swap": ("transpose", [TOK], dict(perm=(1, 0))),
    "scale": ("scale", [TOK], dict(factor=0.5)),
    "softmax": ("softmax", [HEADS], {}),
    "softmax_large": ("softmax", [40 * TOK], {}),
    "token_mean": ("token_mean", [TOK], {}),
}


def test_every_primitive_has_a_gradcheck_case():
    assert {case[0] for case in CASES.values()} == set(PRIMS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vjp_matches_finite_differences(case):
    name, args, attrs = CASES[case]
    check_primitive(name, args, **attrs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_rejects_a_sign_flipped_vjp(case, monkeypatch):
    name, args, attrs = CASES[case]
    good = PRIMS[name]
    flipped = Primitive(good.fwd, lambda s, g: tuple(-d for d in good.vjp(s, g)), good.update)
    monkeypatch.setitem(PRIMS, name, flipped)
    with pytest.raises(GradcheckError, match="analytic .* vs numeric"):
        check_primitive(name, args, **attrs)


def test_cross_entropy_vjp():
    logits, y = R.standard_normal((6, 5)), R.integers(0, 5, 6)
    _, saved = cross_entropy(logits, y)
    gradcheck(lambda z: cross_entropy(z, y)[0], lambda u: (cross_entropy_vjp(saved, u),), [logits])


def test_cross_entropy_value_matches_definition():
    logits, y = R.standard_normal((4, 3)), np.array([0, 2, 1, 2])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.isclose(cross_entropy(logits, y)[0], -np.log(p[np.arange(4), y]).mean())


def test_conv_forward_matches_direct_sum():
    x, w = R.standard_normal((2, 5, 5, 3)), R.standard_normal((3, 3, 3, 4))
    out, _ = PRIMS["conv2d"].fwd(x, w, kernel=3, out=4, stride=2, padding=1)
    xp_ = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    direct = np.zeros((2, 3, 3, 4))
    for i in range(3):
        for j in range(3):
            direct[:, i, j] = np.einsum("nhwc,hwco->no", xp_[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w)
    np.testing.assert_allclose(out, direct, rtol=1e-12, atol=1e-12)


def test_batchnorm_running_stats_use_unbiased_variance():
    prim = PRIMS["batchnorm"]
    mean, var = np.zeros(4), np.ones(4)
    _, saved = prim.fwd(FLAT, GAMMA, BETA, mean, var, training=True)
    new_mean, new_var = prim.update(saved, mean, var, momentum=0.1)
    np.testing.assert_allclose(new_mean, 0.1 * FLAT.mean(0))
    np.testing.assert_allclose(new_var, 0.9 + 0.1 * FLAT.var(0, ddof=1))


def test_maxpool_ties_go_to_the_first_maximum():
    x = np.zeros((1, 2, 2, 1))
    _, saved = PRIMS["maxpool"].fwd(x, size=2)
    (dx,) = PRIMS["maxpool"].vjp(saved, np.ones((1, 1, 1, 1)))
    assert dx.ravel().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_gradcheck_refuses_float32():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda a: a, lambda u: (u,), [np.ones(3, np.float32)])


# ---------------------------------------------------------------- BL-2.7 forward definitions

def test_layernorm_uses_biased_variance_with_eps_inside_the_root():
    y, _ = PRIMS["layernorm"].fwd(TOK, GAMMA, BETA, eps=0.1)
    mu, var = TOK.mean(-1, keepdims=True), TOK.var(-1, keepdims=True)  # ddof 0: biased
    np.testing.assert_allclose(y, (TOK - mu) / np.sqrt(var + 0.1) * GAMMA + BETA, rtol=1e-12, atol=1e-12)


def test_gelu_is_the_tanh_form():
    x = np.linspace(-4, 4, 81)
    y, _ = PRIMS["gelu"].fwd(x)
    np.testing.assert_allclose(y, 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
                               rtol=1e-14, atol=1e-15)
    erf_form = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.abs(y - erf_form).max() > 1e-4  # the two forms differ: the spec's choice is checkable


def test_softmax_is_stable_and_sums_to_one_over_the_last_axis():
    y, _ = PRIMS["softmax"].fwd(np.array([[[1000.0, 1000.0, -1000.0]]]))
    np.testing.assert_allclose(y, [[[0.5, 0.5, 0.0]]])
    y, _ = PRIMS["softmax"].fwd(HEADS)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-13)


def test_patch_embed_equals_a_stride_p_convolution_plus_bias():
    x, w, b = R.standard_normal((2, 6, 4, 3)), R.standard_normal((2, 2, 3, 5)), R.standard_normal(5)
    y, _ = PRIMS["patch_embed"].fwd(x, w, b, patch=2, out=5)
    conv, _ = PRIMS["conv2d"].fwd(x, w, kernel=2, out=5, stride=2)
    np.testing.assert_allclose(y, conv.reshape(2, 6, 5) + b, rtol=1e-12, atol=1e-12)  # row-major patches


def test_transpose_returns_a_dense_array():
    y, _ = PRIMS["transpose"].fwd(HEADS, perm=(1, 0, 2))
    assert y.flags.c_contiguous and y.shape == (3, 4, 2, 3)
    np.testing.assert_array_equal(y, HEADS.transpose(0, 2, 1, 3))
