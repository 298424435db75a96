"""The channel-vector direct convolution (npfcn/kernels/channel.py, csrc/channel_conv.c).

Compared with npfcn.reference.conv (im2col + matmul), an independent computation.
Tolerance: float32 sums of up to C*KH*KW = 5*7*7 = 245 products of unit-variance
terms, in another order than the reference's: 2e-5 relative to the largest value,
as for direct.c (tests/test_direct.py).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npfcn import functional, reference
from npfcn.kernels import backend, channel, direct

from conv_reference import reference_conv, relative

pytestmark = pytest.mark.skipif(not (backend.c_available() and channel.available()),
                                reason="needs the C kernel on a CPU with AVX-512")

TOL = 2e-5


@st.composite
def cases(draw):
    K = (draw(st.sampled_from([1, 3, 7])), draw(st.sampled_from([1, 3, 7])))
    # negative padding crops (the input gradient of a layer padded less than K-1)
    padding = (draw(st.integers(-1, K[0] + 1)), draw(st.integers(-1, K[1] + 1)))
    H = draw(st.integers(max(1, K[0] - 2 * padding[0]), 10))
    # widths that are and are not multiples of the 6-pixel block
    W = draw(st.integers(max(1, K[1] - 2 * padding[1]), 20))
    return dict(N=draw(st.integers(0, 2)), C=draw(st.integers(1, 5)), H=H, W=W, K=K,
                padding=padding, seed=draw(st.integers(0, 2**16)))


def make(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"])).astype(np.float32)
    w = rng.standard_normal((64, case["C"], *case["K"])).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    mask = rng.standard_normal(x.shape).astype(np.float32)
    return x, w, bias, mask


def reference_forward(x, w, padding, bias):
    """The reference pads by at least 0: a negative padding is a crop of the input."""
    (ph, pw), H, W = padding, x.shape[2], x.shape[3]
    x = x[:, :, max(0, -ph):H - max(0, -ph), max(0, -pw):W - max(0, -pw)]
    y, _ = reference.conv2d_forward(np.ascontiguousarray(x), w, bias, 1, (max(0, ph), max(0, pw)))
    return y


@settings(max_examples=60)
@given(case=cases(), relu=st.booleans(), masked=st.booleans())
def test_equals_the_reference(case, relu, masked):
    """Bias, fused ReLU and an input mask (the input read as 0 where mask <= 0)."""
    x, w, bias, mask = make(case)
    x_read = np.where(mask > 0, x, 0).astype(np.float32) if masked else x
    expected = reference_forward(x_read, w, case["padding"], bias)
    if relu:
        expected = np.maximum(expected, 0)
    y = channel.correlate(x, w, case["padding"], bias=bias, relu=relu,
                          x_mask=mask if masked else None)
    assert y.shape == expected.shape
    assert y.size == 0 or relative(y, expected) < TOL


def test_direct_correlate_hands_64_channel_7x7_layers_to_it():
    """direct.correlate's result for a SegNet-Basic-like layer is this loop's, and right."""
    assert channel.applies(np.float32, 8, 64, 7, 7) and channel.applies(np.float32, 64, 64, 3, 3)
    assert not channel.applies(np.float64, 8, 64, 7, 7)
    assert not channel.applies(np.float32, 8, 32, 7, 7)
    assert not channel.applies(np.float32, 16, 64, 3, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 13, 19)).astype(np.float32)
    w = rng.standard_normal((64, 8, 7, 7)).astype(np.float32)
    with backend.using("c"):
        y = direct.correlate(x, w, (3, 3))
    assert np.array_equal(y, channel.correlate(x, w, (3, 3)))
    assert relative(y, reference_forward(x, w, (3, 3), None)) < TOL


def test_a_segnet_layer_trains_through_it():
    """Forward, dx and dw of a 64 -> 64 7x7 layer on the C backend against the reference."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 64, 9, 14)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 7, 7)) / 20).astype(np.float32)
    y0, dy, dx0, dw0 = reference_conv(x, w, (3, 3))
    with backend.using("c"):
        y, cache = functional.conv2d_forward(x, w, None, 1, 3)
        dx, dw, _ = functional.conv2d_backward(dy, cache)
    assert relative(y, y0) < TOL and relative(dx, dx0) < TOL and relative(dw, dw0) < 1e-4


@settings(max_examples=40)
@given(case=cases(), masked=st.booleans(), O=st.integers(1, 5))
def test_input_gradient_equals_the_reference(case, masked, O):
    """dx of a layer with 64 inputs and O outputs, its weights laid out flipped by C
    straight from w (no flipped copy first), also through a fused ReLU's mask."""
    rng = np.random.default_rng(case["seed"])
    (ph, pw), K = case["padding"], case["K"]
    H, W = case["H"], case["W"]
    x = rng.standard_normal((case["N"], 64, H, W)).astype(np.float32)
    w = rng.standard_normal((O, 64, *K)).astype(np.float32)
    xc = np.ascontiguousarray(x[:, :, max(0, -ph):H - max(0, -ph), max(0, -pw):W - max(0, -pw)])
    y, cache = reference.conv2d_forward(xc, w, None, 1, (max(0, ph), max(0, pw)))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    mask = rng.standard_normal(y.shape).astype(np.float32) if masked else None
    dy_read = np.where(mask > 0, dy, 0).astype(np.float32) if masked else dy
    dxc, _, _ = reference.conv2d_backward(dy_read, cache)
    expected = np.zeros_like(x)          # the cropped rows and columns get no gradient
    expected[:, :, max(0, -ph):H - max(0, -ph), max(0, -pw):W - max(0, -pw)] = dxc
    dx = channel.input_gradient(dy, w, case["padding"], dy_mask=mask)
    assert dx.shape == x.shape
    # (a mask that lets nothing through gives exact zeros on both sides)
    assert np.array_equal(dx, expected) or relative(dx, expected) < TOL


def test_the_weight_layouts_are_the_transposes_they_claim():
    """channel_conv_weights_f32 against NumPy's transposes of the same weights."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 5, 3, 7)).astype(np.float32)
    assert np.array_equal(channel._weights(w, flipped=False),
                          w.transpose(1, 2, 3, 0).reshape(5 * 21, 64))
    w = rng.standard_normal((5, 64, 3, 7)).astype(np.float32)
    turned = w[:, :, ::-1, ::-1].transpose(0, 2, 3, 1).reshape(5 * 21, 64)
    assert np.array_equal(channel._weights(w, flipped=True), turned)


def test_a_wrong_weight_is_refused_before_c():
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="channel conv"):
        channel.correlate(x, np.zeros((32, 3, 7, 7), np.float32), (3, 3))
    with pytest.raises(ValueError, match="channel conv"):
        channel.correlate(x, np.zeros((64, 4, 7, 7), np.float32), (3, 3))


@settings(max_examples=30)
@given(case=cases(), masked=st.booleans(), C=st.sampled_from([16, 17]))
def test_weight_gradient_equals_the_reference(case, masked, C):
    """dw (added into the caller's array) and db, also through a fused ReLU's mask."""
    case = dict(case, C=C)
    x, w, bias, _ = make(case)
    y = reference_forward(x, w, case["padding"], None)
    rng = np.random.default_rng(case["seed"] + 7)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    mask = rng.standard_normal(y.shape).astype(np.float32) if masked else None
    dy_read = np.where(mask > 0, dy, 0) if masked else dy
    (ph, pw), H, W = case["padding"], x.shape[2], x.shape[3]
    xc = np.ascontiguousarray(x[:, :, max(0, -ph):H - max(0, -ph), max(0, -pw):W - max(0, -pw)])
    _, cache = reference.conv2d_forward(xc, w, bias, 1, (max(0, ph), max(0, pw)))
    _, dw_expected, db_expected = reference.conv2d_backward(dy_read.astype(np.float32), cache)
    start = rng.standard_normal(w.size).astype(np.float32)      # dw is ADDED into dw2
    dw2, db = start.copy(), np.ones(64, np.float32)
    channel.weight_grad(dy, x, *case["K"], case["padding"], dw2, dy_mask=mask, db=db)
    if x.shape[0] == 0:
        assert np.array_equal(dw2, start) and np.array_equal(db, np.ones(64, np.float32))
        return
    assert relative(dw2 - start, dw_expected.reshape(-1)) < 1e-4
    assert relative(db - 1, db_expected) < 1e-4


def test_weight_gradient_of_rows_wider_than_a_band():
    """Rows of more than the C loop's band of 2048 pixels (a band is then one row, and
    the per-thread dy scratch is sized by the row): dw and db against the reference."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 3, 2100)).astype(np.float32)
    w = rng.standard_normal((64, 16, 7, 7)).astype(np.float32)
    _, dy, _, dw0 = reference_conv(x, w, (3, 3))
    dw, db = np.zeros(w.size, np.float32), np.zeros(64, np.float32)
    channel.weight_grad(np.ascontiguousarray(dy), x, 7, 7, (3, 3), dw, db=db)
    assert relative(dw.reshape(w.shape), dw0) < 1e-4
    assert relative(db, dy.sum(axis=(0, 2, 3))) < 1e-4
