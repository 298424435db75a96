"""Every layer's backward pass against float64 central differences (npfcn.gradcheck).

Hypothesis draws kernel sizes, strides, paddings, dilations, output paddings,
odd and tiny spatial sizes, batch sizes and channel counts; each test runs on
the C kernel and on the NumPy reference path.

Tolerance: gradcheck reports max|analytic - numeric| / (gradient scale) per
tensor.  With eps = 1e-6 in float64 the central difference is exact for the
(piecewise) linear layers up to rounding, ~1e-16/1e-6 = 1e-10 relative, and
O(eps^2) ~ 1e-12 for the smooth loss; a wrong gradient gives errors of order
1 (or 1e-2 for a 1 % mistake, see test_gradcheck_tool.py).  1e-6 separates
the two by four orders of magnitude either way.

Sizes are tiny: a numerical gradient costs two forward passes per element.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfcn import functional as F
from npfcn.kernels import backend
from npfcn.gradcheck import gradcheck
from npfcn.functional import conv_output_size
from npfcn.layers import (Add, Conv2d, ConvTranspose2d, Crop, Dropout, MaxPool2d,
                          MaxUnpool2d, ReLU)
from npfcn.losses import CrossEntropyLoss

TOL = 1e-6   # float64 gradient-check tolerance (see the module docstring)

BACKENDS = ["c", "numpy"]


def examples(n):
    """``n`` examples under the default profile, scaled up by the thorough profile."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 25))


def select(name):
    """Switch to backend ``name`` for the body of a test (skip C when not built)."""
    if name == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    return backend.using(name)


def normal(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def distinct(shape, seed):
    """Values 0.1 apart in random order: no max-pool tie or kink within eps."""
    size = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(size).reshape(shape) * 0.1 - size * 0.05


def check(module, inputs):
    report = gradcheck(module, inputs)
    assert report.errors, "gradcheck compared nothing"
    report.assert_ok(TOL)
    return report


# --- convolution ---------------------------------------------------------------------

@st.composite
def conv_configs(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = tuple(max(1, di * (ki - 1) + 1 - 2 * pi) + draw(st.integers(0, 3))
                 for ki, pi, di in zip(k, p, d))
    return dict(n=draw(st.integers(1, 2)), cin=draw(st.integers(1, 2)),
                cout=draw(st.integers(1, 3)), size=size, kernel_size=k, stride=s,
                padding=p, dilation=d, bias=draw(st.booleans()), seed=draw(st.integers(0, 99)))


@pytest.mark.parametrize("name", BACKENDS)
@examples(50)
@given(cfg=conv_configs())
def test_conv2d_gradients(name, cfg):
    with select(name):
        layer = Conv2d(cfg["cin"], cfg["cout"], cfg["kernel_size"], cfg["stride"],
                       cfg["padding"], cfg["dilation"], bias=cfg["bias"], dtype=np.float64,
                       rng=cfg["seed"])
        x = normal((cfg["n"], cfg["cin"], *cfg["size"]), cfg["seed"])
        report = check(layer, (x,))
    assert set(report.errors) == {"input0", "weight"} | ({"bias"} if cfg["bias"] else set())


@st.composite
def conv_transpose_configs(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):
        padding, output_padding = "same", (0, 0)
    else:
        # output_padding < max(stride, dilation), and the output must not be empty.
        output_padding = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d))
        padding = tuple(
            draw(st.integers(0, max(0, ((n - 1) * si + di * (ki - 1) + op) // 2)))
            for n, si, di, ki, op in zip(size, s, d, k, output_padding))
    return dict(n=draw(st.integers(1, 2)), cin=draw(st.integers(1, 2)),
                cout=draw(st.integers(1, 2)), size=size, kernel_size=k, stride=s,
                padding=padding, output_padding=output_padding, dilation=d,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 99)))


@pytest.mark.parametrize("name", BACKENDS)
@examples(50)
@given(cfg=conv_transpose_configs())
def test_conv_transpose2d_gradients(name, cfg):
    with select(name):
        layer = ConvTranspose2d(cfg["cin"], cfg["cout"], cfg["kernel_size"], cfg["stride"],
                                cfg["padding"], cfg["output_padding"], cfg["dilation"],
                                bias=cfg["bias"], dtype=np.float64, rng=cfg["seed"])
        x = normal((cfg["n"], cfg["cin"], *cfg["size"]), cfg["seed"])
        y = layer.forward(x)
        if cfg["padding"] == "same":
            assert y.shape[2:] == (cfg["size"][0] * cfg["stride"][0],
                                   cfg["size"][1] * cfg["stride"][1])
        check(layer, (x,))


# --- pooling -------------------------------------------------------------------------

@st.composite
def pool_configs(draw, non_overlapping=False):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if non_overlapping:   # stride >= kernel: every input pixel is in at most one window
        s = tuple(ki + draw(st.integers(0, 1)) for ki in k)
    else:
        s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)   # PyTorch: padding <= kernel / 2
    size = tuple(max(1, ki - 2 * pi) + draw(st.integers(0, 4)) for ki, pi in zip(k, p))
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 2)), size=size,
                kernel_size=k, stride=s, padding=p, ceil_mode=draw(st.booleans()),
                seed=draw(st.integers(0, 99)))


@pytest.mark.parametrize("name", BACKENDS)
@examples(50)
@given(cfg=pool_configs())
def test_max_pool2d_gradients(name, cfg):
    with select(name):
        layer = MaxPool2d(cfg["kernel_size"], cfg["stride"], cfg["padding"],
                          ceil_mode=cfg["ceil_mode"])
        x = distinct((cfg["n"], cfg["c"], *cfg["size"]), cfg["seed"])
        check(layer, (x,))


@pytest.mark.parametrize("name", BACKENDS)
@examples(40)
@given(cfg=pool_configs(non_overlapping=True))
def test_max_unpool2d_gradients(name, cfg):
    with select(name):
        pool = MaxPool2d(cfg["kernel_size"], cfg["stride"], cfg["padding"],
                         ceil_mode=cfg["ceil_mode"], return_indices=True)
        image = distinct((cfg["n"], cfg["c"], *cfg["size"]), cfg["seed"])
        pooled, indices = pool.forward(image)
        for plane in indices.reshape(cfg["n"] * cfg["c"], -1):
            assert len(np.unique(plane)) == plane.size   # unique, as the test needs
        unpool = MaxUnpool2d(cfg["kernel_size"], cfg["stride"], cfg["padding"])
        x = normal(pooled.shape, cfg["seed"])
        check(unpool, (x, indices, image.shape))


# --- elementwise ---------------------------------------------------------------------

shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))


@pytest.mark.parametrize("name", BACKENDS)
@examples(20)
@given(shape=shapes, seed=st.integers(0, 99))
def test_relu_gradients(name, shape, seed):
    rng = np.random.default_rng(seed)
    # |x| >= 0.1: the kink at 0 is far outside eps.
    x = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 1.0, shape)
    with select(name):
        check(ReLU(), (x,))


@pytest.mark.parametrize("training", [True, False])
@examples(20)
@given(shape=shapes, p=st.sampled_from([0.0, 0.2, 0.5, 0.9]), seed=st.integers(0, 99))
def test_dropout_gradients(training, shape, p, seed):
    # gradcheck restores the layer's rng before every forward: one fixed mask.
    layer = Dropout(p, rng=seed).train(training)
    if training:
        check(layer, (normal(shape, seed),))
        return
    # Eval mode is inference: the identity, whose gradient (through the functional
    # op) is dy exactly; the layer keeps nothing for a backward pass and says so.
    x, dy = normal(shape, seed), normal(shape, seed + 1)
    np.testing.assert_array_equal(layer.forward(x), x)
    with pytest.raises(ValueError, match="eval mode"):
        layer.backward(dy)
    y, cache = F.dropout_forward(x, p, np.random.default_rng(seed), training=False)
    np.testing.assert_array_equal(F.dropout_backward(dy, cache), dy)


@examples(20)
@given(shape=shapes, oy=st.integers(0, 3), ox=st.integers(0, 3), seed=st.integers(0, 99))
def test_crop_gradients(shape, oy, ox, seed):
    n, c, h, w = shape
    x = normal((n, c, h + oy + 1, w + ox + 2), seed)
    layer = Crop((oy, ox))
    assert layer.forward(x, (h, w)).shape == (n, c, h, w)
    check(layer, (x, (h, w)))


@examples(15)
@given(shape=shapes, seed=st.integers(0, 99))
def test_add_gradients(shape, seed):
    report = check(Add(), (normal(shape, seed), normal(shape, seed + 1)))
    assert set(report.errors) == {"input0", "input1"}


# --- loss ----------------------------------------------------------------------------

@examples(50)
@given(n=st.integers(1, 2), c=st.integers(2, 4), h=st.integers(1, 3), w=st.integers(1, 3),
       reduction=st.sampled_from(["mean", "sum"]), weighted=st.booleans(),
       ignore_fraction=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 99))
def test_cross_entropy_gradients(n, c, h, w, reduction, weighted, ignore_fraction, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c, h, w)) * 2
    target = rng.integers(0, c, (n, h, w))
    target[rng.random((n, h, w)) < ignore_fraction] = 255
    weight = rng.uniform(0.2, 2.0, c) if weighted else None
    loss = CrossEntropyLoss(weight=weight, ignore_index=255, reduction=reduction)
    check(loss, (logits, target))


# --- accumulation, layouts, dtypes ---------------------------------------------------

@pytest.mark.parametrize("make, shape", [
    (lambda: Conv2d(2, 3, 3, stride=2, padding=1, dtype=np.float64, rng=0), (2, 2, 7, 6)),
    (lambda: ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1,
                             dtype=np.float64, rng=0), (2, 2, 4, 3)),
], ids=["conv", "conv_transpose"])
def test_parameter_gradients_accumulate_until_zero_grad(make, shape):
    layer = make()
    x = normal(shape, 1)
    dy = normal(layer.forward(x).shape, 2)
    layer.backward(dy)
    once = {k: g.copy() for k, g in layer.grads.items()}
    layer.forward(x)
    layer.backward(dy)
    for k in once:   # added, as PyTorch does, not overwritten
        np.testing.assert_allclose(layer.grads[k], 2 * once[k], rtol=1e-14, atol=0)
    layer.zero_grad()
    assert all(not g.any() for g in layer.grads.values())


@pytest.mark.parametrize("name", BACKENDS)
def test_non_contiguous_inputs_and_gradients_give_contiguous_results(name):
    # Views (Fortran order, strided slices) are copied, not rejected, and give the
    # same numbers as their contiguous copies.
    base = normal((2, 2, 12, 10), 3)
    x = np.asfortranarray(base[:, :, ::2, ::2])
    layers = [lambda: Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0),
              lambda: ConvTranspose2d(2, 3, 3, stride=2, dtype=np.float64, rng=0),
              lambda: MaxPool2d(2, ceil_mode=True), lambda: ReLU()]
    with select(name):
        for make in layers:
            a, b = make(), make()
            ya, yb = a.forward(x), b.forward(np.ascontiguousarray(x))
            np.testing.assert_array_equal(ya, yb)
            dy = np.asfortranarray(normal(ya.shape, 4))
            np.testing.assert_array_equal(a.backward(dy), b.backward(np.ascontiguousarray(dy)))
            for k in a.grads:
                np.testing.assert_array_equal(a.grads[k], b.grads[k])


def test_cross_entropy_backward_scales_with_upstream_gradient():
    rng = np.random.default_rng(6)
    logits, target = rng.standard_normal((2, 3, 4, 4)), rng.integers(0, 3, (2, 4, 4))
    loss = CrossEntropyLoss()
    loss.forward(logits, target)
    g1 = loss.backward()
    loss.forward(logits, target)
    np.testing.assert_allclose(loss.backward(2.5), 2.5 * g1, rtol=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_drops_about_p_and_keeps_the_mean(p):
    layer = Dropout(p, rng=7)
    y = layer.forward(np.ones((1, 1, 300, 300)))
    dropped = np.mean(y == 0)
    # 90 000 Bernoulli(p) draws: the standard deviation of the fraction is at most
    # 0.0017, so 0.01 is a > 5-sigma bound.
    assert abs(dropped - p) < 0.01
    np.testing.assert_array_equal(y[y != 0], 1 / (1 - p))   # inverted: kept values scaled
    assert np.array_equal(layer.eval().forward(np.ones((2, 2))), np.ones((2, 2)))
