"""The Winograd paths of the C backend, F(2x2, 3x3) and F(4x4, 3x3)
(npfcn/kernels/winograd.py, csrc/winograd.c, csrc/winograd4.c).

The reference is npfcn.reference.conv (im2col + matmul), an independent
computation: every result here is compared with it, never with itself.

Tolerances: in float64 the two differ only by rounding; the Winograd transforms
add at most 3 x 3 terms with coefficients 1 and 1/2 around products of up to
C*9 terms, so relative errors stay within a few hundred ulps: 1e-12 is used.
In float32 the same argument gives ~1e-6; 2e-5 (relative to the largest value)
leaves room for the longer sums of the bigger cases.  F(4x4, 3x3)'s transforms
have coefficients up to 8 (A) and 5 (B) and 1/24 (G): measured errors are ~10x
F(2x2)'s (float64 ~4e-15, float32 ~3e-6), still inside both tolerances.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from npfcn import functional as F
from npfcn.kernels import backend, channel, dispatch, winograd
from npfcn.gradcheck import gradcheck
from npfcn.layers import Conv2d

from conv_reference import reference_conv, relative

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


def path(x_shape, O, padding):
    """The path npfcn.kernels.dispatch picks for a 3x3 stride-1 convolution."""
    N, C, H, W = x_shape
    g = (3, 3, 1, 1, *padding, 1, 1, H + 2 * padding[0] - 2, W + 2 * padding[1] - 2)
    with backend.using("c"):
        return dispatch.conv2d_path(x_shape, (O, C, 3, 3), g)


def winograd_conv(x, w, padding, dy, tiles=None):
    """The same three arrays from the Winograd functions directly (``tiles``: F2, F4
    or None for dispatch's choice, F2 where dispatch would not take Winograd)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    if tiles is None:
        tiles = winograd.F4 if path(x.shape, O, padding) == "winograd4" else winograd.F2
    with backend.using("c"):
        y = winograd.conv3x3(x, w, padding, tiles)
        dw = np.zeros((O, C * 9), dtype=x.dtype)
        dx = winograd.conv3x3_grads(dy, x, w, padding, dw, tiles)
    return y, dx, dw.reshape(w.shape)


@pytest.fixture
def force_winograd(monkeypatch):
    """force_winograd(tiles): every convolution takes that Winograd path, however few
    channels or tiles it has."""
    def force(tiles):
        name = {winograd.F2: "winograd2", winograd.F4: "winograd4"}[tiles]
        monkeypatch.setattr(dispatch, "conv2d_path",
                            lambda x_shape, w_shape, g, *dtype: name if backend.active() == "c"
                            else "reference")
    return force


@st.composite
def cases(draw):
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    # the padded input must hold one 3x3 window
    H = draw(st.integers(max(1, 3 - 2 * padding[0]), 13))
    W = draw(st.integers(max(1, 3 - 2 * padding[1]), 13))
    return dict(N=draw(st.integers(1, 3)), C=draw(st.integers(1, 9)), O=draw(st.integers(1, 9)),
                H=H, W=W, padding=padding, seed=draw(st.integers(0, 2**16)))


def make(case, dtype):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"])).astype(dtype)
    w = rng.standard_normal((case["O"], case["C"], 3, 3)).astype(dtype)
    return x, w


@given(case=cases(), dtype=st.sampled_from([np.float64, np.float32]),
       tiles=st.sampled_from([winograd.F2, winograd.F4]))
def test_matches_the_im2col_reference(case, dtype, tiles):
    x, w = make(case, dtype)
    y0, dy, dx0, dw0 = reference_conv(x, w, case["padding"])
    y1, dx1, dw1 = winograd_conv(x, w, case["padding"], dy, tiles)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert relative(y1, y0) < tol
    assert relative(dx1, dx0) < tol
    assert relative(dw1, dw0) < tol


@given(case=cases())
def test_tile_row_bands_give_the_same_result(case):
    """One tile row per band (BAND_BYTES = 1) against one band for everything."""
    x, w = make(case, np.float64)
    _, dy, _, _ = reference_conv(x, w, case["padding"])
    whole = winograd_conv(x, w, case["padding"], dy)
    saved = winograd.BAND_BYTES, winograd.MIN_BAND_TILES
    winograd.BAND_BYTES, winograd.MIN_BAND_TILES = 1, 1
    try:
        TH = (case["H"] + 2 * case["padding"][0] - 1) // 2       # ceil(OH / 2)
        assert len(winograd.tile_row_bands(case["N"], case["C"], case["O"], TH, 1, 8)) == TH
        rows = winograd_conv(x, w, case["padding"], dy)
    finally:
        winograd.BAND_BYTES, winograd.MIN_BAND_TILES = saved
    for a, b in zip(rows, whole):
        assert relative(a, b) < 1e-13


@pytest.mark.parametrize("tiles", [winograd.F2, winograd.F4], ids=repr)
@pytest.mark.parametrize("size, padding", [((1, 1), (1, 1)), ((5, 4), (0, 0)), ((6, 7), (2, 1)),
                                           ((2, 3), (100, 100))])
def test_gradcheck_through_the_layer(size, padding, tiles, force_winograd):
    """Central differences through a float64 Conv2d that takes the Winograd path
    with either tile size."""
    layer = Conv2d(3, 4, 3, padding=padding, dtype=np.float64, rng=1)
    x = np.random.default_rng(2).standard_normal((2, 3, *size))
    force_winograd(tiles)
    with backend.using("c"):
        _, cache = F.conv2d_forward(x, layer.params["weight"], None, 1, padding)
        assert cache[0] == {winograd.F2: "winograd2", winograd.F4: "winograd4"}[tiles]
        report = gradcheck(layer, (x,))
    # float64 central differences with eps=1e-6: truncation ~1e-12, rounding ~1e-10
    assert report.max_error < 1e-6, report


@pytest.mark.parametrize("tiles", [winograd.F2, winograd.F4], ids=repr)
def test_vgg_sized_layer_in_float32(tiles):
    """64 -> 64 channels on 30x30, the shape class of VGG16's conv1_2, in several bands
    of tile rows (whose input windows overlap: the backward pass adds them in two
    phases)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 64, 30, 30)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    y0, dy, dx0, dw0 = reference_conv(x, w, (1, 1))
    saved = winograd.BAND_BYTES, winograd.MIN_BAND_TILES
    winograd.BAND_BYTES, winograd.MIN_BAND_TILES = 1 << 16, 1
    try:
        TH, TW = tiles.grid(30, 30)
        assert len(winograd.tile_row_bands(2, 64, 64, TH, TW, 4, tiles)) > 2
        y1, dx1, dw1 = winograd_conv(x, w, (1, 1), dy, tiles)
    finally:
        winograd.BAND_BYTES, winograd.MIN_BAND_TILES = saved
    for a, b in ((y1, y0), (dx1, dx0), (dw1, dw0)):
        assert relative(a, b) < 2e-5


@pytest.mark.parametrize("kernel, stride, dilation, cin, cout, out_size, expected", [
    ((3, 3), (1, 1), (1, 1), 64, 128, 112, True),
    # 64 -> 64 goes to the channel-vector direct loop where the CPU has AVX-512
    ((3, 3), (1, 1), (1, 1), 64, 64, 224, not channel.available()),
    ((3, 3), (1, 1), (1, 1), 256, 512, 28, True),   # 2*C = O still pays off
    ((3, 3), (1, 1), (1, 1), 512, 512, 16, True),   # 64 tiles
    ((3, 3), (1, 1), (1, 1), 512, 512, 14, False),  # 49 tiles: too few
    ((3, 3), (1, 1), (1, 1), 3, 64, 224, False),    # VGG's conv1_1: im2col is faster
    ((3, 3), (2, 2), (1, 1), 8, 8, 64, False),
    ((3, 3), (1, 1), (2, 2), 8, 8, 64, False),
    ((3, 1), (1, 1), (1, 1), 8, 8, 64, False),
    ((5, 5), (1, 1), (1, 1), 8, 8, 64, False),
])
def test_which_convolutions_take_the_winograd_path(kernel, stride, dilation, cin, cout,
                                                   out_size, expected):
    # padding (k-1)/2 and stride 1 keep the size: out_size x out_size outputs
    pad = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)
    size = [(o - 1) * s + d * (k - 1) + 1 - 2 * p
            for o, s, d, k, p in zip((out_size, out_size), stride, dilation, kernel, pad)]
    g = (*kernel, *stride, *pad, *dilation, out_size, out_size)
    x_shape, w_shape = (1, cin, *size), (cout, cin, *kernel)
    with backend.using("c"):
        got = dispatch.conv2d_path(x_shape, w_shape, g)
        assert got.startswith("winograd") is expected, got
    with backend.using("numpy"):     # the reference path is always im2col
        assert dispatch.conv2d_path(x_shape, w_shape, g) == "reference"


def test_layer_accumulates_the_weight_gradient(force_winograd):
    """Two backward passes without zero_grad add up (the dw_into route)."""
    force_winograd(winograd.F2)
    rng = np.random.default_rng(4)
    layer = Conv2d(4, 4, 3, padding=1, dtype=np.float64, rng=5)
    x = rng.standard_normal((1, 4, 16, 16))        # 64 tiles: the Winograd path
    dy = rng.standard_normal((1, 4, 16, 16))
    with backend.using("c"):
        layer.zero_grad()
        layer.forward(x)
        layer.backward(dy)
        once = layer.grads["weight"].copy()
        layer.forward(x)
        layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], 2 * once, rtol=1e-12)
    with backend.using("numpy"):
        _, cache = F.conv2d_forward(x, layer.params["weight"], None, 1, 1)
        _, dw_numpy, _ = F.conv2d_backward(dy, cache)
    np.testing.assert_allclose(once, dw_numpy, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad", ["output shape", "weight shape", "dtype", "non-contiguous"])
def test_the_python_gate_refuses_bad_arrays(bad):
    """The module's own checks run before any C code, even when called directly."""
    x = np.zeros((1, 2, 5, 5))
    w = np.zeros((3, 2, 3, 3))
    y = np.zeros((1, 3, 5, 5))
    if bad == "output shape":
        y = np.zeros((1, 3, 6, 5))
    elif bad == "weight shape":
        w = np.zeros((3, 2, 5, 5))
    elif bad == "dtype":
        w = w.astype(np.float32)
    else:
        x = np.zeros((1, 2, 5, 10))[..., ::2]
    with backend.using("c"), pytest.raises(ValueError, match="winograd conv"):
        winograd.conv3x3(x, w, (1, 1), winograd.F2, out=y)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-4)])
def test_layer_matches_torch_on_the_winograd_path(torch, dtype, tol):
    """Conv2d forward and backward against torch.nn.functional.conv2d, 80 -> 80 channels
    on 2 x 15x17 (2 x 8 x 9 = 144 tiles, so the layer takes the Winograd path)."""
    rng = np.random.default_rng(7)
    layer = Conv2d(80, 80, 3, padding=1, dtype=dtype, rng=8)
    x = rng.standard_normal((2, 80, 15, 17)).astype(dtype)
    assert path(x.shape, 80, (1, 1)) == "winograd2"
    with backend.using("c"):
        layer.zero_grad()
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = layer.backward(dy)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["weight"], requires_grad=True)
    tb = torch.tensor(layer.params["bias"], requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
    ty.backward(torch.tensor(dy))
    for ours, theirs in ((y, ty), (dx, tx.grad), (layer.grads["weight"], tw.grad),
                         (layer.grads["bias"], tb.grad)):
        assert relative(ours, theirs.detach().numpy()) < tol


@pytest.mark.parametrize("N, C, O, size, expected", [
    (1, 64, 128, 112, "F4"),      # conv2_1 (64 -> 64 goes direct on AVX-512: channel.py)
    (1, 128, 256, 56, "F4"),      # conv3_1
    (1, 256, 256, 56, "F2"),      # wider: F(4x4)'s weights and thin products lose
    (1, 512, 512, 28, "F2"),
    (1, 128, 128, 52, "F2"),      # 13 x 13 = 169 tiles of 4x4: too few
    (4, 128, 128, 28, "F4"),      # 4 x 49 = 196: enough
])
def test_which_tile_size_is_chosen(N, C, O, size, expected):
    assert path((N, C, size, size), O, (1, 1)) == {"F2": "winograd2", "F4": "winograd4"}[expected]
