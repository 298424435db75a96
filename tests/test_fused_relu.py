"""ConvReLU2d: a convolution with its ReLU fused (npfcn/layers.py, npfcn/kernels/direct.py,
csrc/direct.c).

The reference is the unfused pair, ReLU()(Conv2d(...)(x)), run with the same
weights: both layers are verified on their own (tests/test_gradients.py), so the
fused module must give the same output and the same dx, dw and db on every path
conv2d takes (direct, Winograd, im2col, 1x1).

Tolerance: float64; fused and unfused sum the same products in the same order on
the direct path and on the others share the convolution outright, so they agree to
rounding: 1e-12 relative to the largest value.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from npfcn.kernels import backend, direct, dispatch
from npfcn.layers import Conv2d, ConvReLU2d, ReLU

from conv_reference import relative


def pair(cin, cout, k, stride, padding, seed):
    fused = ConvReLU2d(cin, cout, k, stride=stride, padding=padding, dtype=np.float64, rng=seed)
    plain = Conv2d(cin, cout, k, stride=stride, padding=padding, dtype=np.float64, rng=seed)
    # biases of both signs: channels that are mostly on and mostly off
    bias = np.random.default_rng(seed).normal(0, 1.0, cout)
    fused.params["bias"][...] = bias
    plain.params["bias"][...] = bias
    return fused, plain


def run(layer, x, dy, relu=None):
    y = layer.forward(x)
    if relu is not None:
        y = relu.forward(y)
        dx = layer.backward(relu.backward(dy))
    else:
        dx = layer.backward(dy)
    return y, dx, layer.grads["weight"].copy(), layer.grads["bias"].copy()


@given(cin=st.integers(1, 9), cout=st.integers(1, 9), k=st.sampled_from([1, 3, 5]),
       padding=st.sampled_from([0, 1, 2, 12]), h=st.integers(1, 14), w=st.integers(1, 60),
       n=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_same_as_conv_then_relu_on_the_direct_path(cin, cout, k, padding, h, w, n, seed):
    """Padding 12 > kernel: outputs that see only padding are relu(bias)."""
    if h + 2 * padding < k or w + 2 * padding < k:
        return
    fused, plain = pair(cin, cout, k, 1, padding, seed)
    g = (k, k, 1, 1, padding, padding, 1, 1, h + 2 * padding - k + 1, w + 2 * padding - k + 1)
    with backend.using("c"):
        assert k == 1 or dispatch.conv2d_path((n, cin, h, w), (cout, cin, k, k), g) == "direct"
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n, cin, h, w))
    y_ref = plain.forward(x)
    dy = rng.standard_normal(y_ref.shape)
    plain.zero_grad()
    plain.backward(np.zeros_like(y_ref))        # consume the cache
    got = run(fused, x, dy)
    want = run(plain, x, dy, ReLU())
    for a, b, name in zip(got, want, ("y", "dx", "dw", "db")):
        assert a.shape == b.shape, name
        assert relative(a, b) < 1e-12, name


@pytest.mark.parametrize("cin, cout, k, stride, padding", [
    (40, 36, 3, 1, 1),     # more than 32 channels: Winograd
    (4, 6, 3, 2, 1),       # stride 2: im2col
    (40, 8, 7, 1, 0),      # fc6's 7x7: im2col
    (16, 12, 1, 1, 0),     # 1x1: a matrix product (fc7, the score layers)
])
def test_same_as_conv_then_relu_on_the_other_paths(cin, cout, k, stride, padding):
    fused, plain = pair(cin, cout, k, stride, padding, 7)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, cin, 11, 12))
    dy = rng.standard_normal(plain.forward(x).shape)
    plain.backward(np.zeros_like(dy))
    got, want = run(fused, x, dy), run(plain, x, dy, ReLU())
    for a, b, name in zip(got, want, ("y", "dx", "dw", "db")):
        assert relative(a, b) < 1e-12, name


def test_nan_propagates_through_the_fused_relu():
    fused, plain = pair(3, 4, 3, 1, 1, 0)
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6))
    x[0, 1, 2, 3] = np.nan
    assert np.array_equal(np.isnan(fused.forward(x)), np.isnan(ReLU().forward(plain.forward(x))))
    assert np.isnan(fused.forward(x)).any()


@pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")
def test_bad_masks_are_refused_before_c():
    x = np.zeros((1, 3, 5, 5))
    w = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match="mask"):
        direct.correlate(x, w, (1, 1), x_mask=np.zeros((1, 3, 5, 4)))
    with pytest.raises(ValueError, match="mask"):
        direct.correlate(x, w, (1, 1), x_mask=np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="mask"):
        direct.correlate_grads(np.zeros((1, 4, 5, 5)), x, w, (1, 1), np.zeros(w.size),
                             dy_mask=np.zeros((1, 4, 5, 5))[:, :, :, ::-1])
    with pytest.raises(ValueError, match="bias gradient"):
        direct.correlate_grads(np.zeros((1, 4, 5, 5)), x, w, (1, 1), np.zeros(w.size),
                             db=np.zeros(3))
