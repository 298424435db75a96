"""The direct convolution path of the C backend (npfcn/kernels/direct.py, csrc/direct.c).

The reference is npfcn.reference.conv (im2col + matmul), an independent
computation: every result here is compared with it, never with itself.

Tolerances: in float64 both sum the same C*KH*KW products per output (and the
same N*OH*OW per weight gradient) in different orders, so they differ by
rounding only: 1e-12 relative to the largest value.  In float32 the longest
sums here have a few hundred terms (~1e-5 worst case for a random-order sum of
unit-variance terms); 2e-5 is used, as for the Winograd path.
"""
import contextlib
import os
import platform

import numpy as np
import pytest
from hypothesis import given, strategies as st

from npfcn.kernels import backend, channel, direct, dispatch
from npfcn.gradcheck import gradcheck
from npfcn.layers import Conv2d

from conv_reference import reference_conv, relative

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


def direct_conv(x, w, padding, dy):
    """The same three arrays from the direct functions."""
    with backend.using("c"):
        y = direct.correlate(x, w, padding)
        dw = np.zeros(w.size, dtype=x.dtype)
        dx = direct.correlate_grads(dy, x, w, padding, dw)
    return y, dx, dw.reshape(w.shape)


@st.composite
def cases(draw):
    K = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    # paddings up to past the kernel (FCN's conv1_1 pads 100 with a 3x3 kernel):
    # then whole output rows and columns see only zeros
    padding = (draw(st.integers(0, K[0] + 3)), draw(st.integers(0, K[1] + 3)))
    H = draw(st.integers(max(1, K[0] - 2 * padding[0]), 12))
    # wide enough rows, now and then, for several register blocks (48 floats or
    # 24 doubles each) and the partial last one
    W = draw(st.integers(max(1, K[1] - 2 * padding[1]), 12) | st.integers(30, 110))
    return dict(N=draw(st.integers(0, 3)), C=draw(st.integers(1, 9)), O=draw(st.integers(1, 9)),
                H=H, W=W, K=K, padding=padding, seed=draw(st.integers(0, 2**16)))


def make(case, dtype):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"])).astype(dtype)
    w = rng.standard_normal((case["O"], case["C"], *case["K"])).astype(dtype)
    return x, w


@given(case=cases(), dtype=st.sampled_from([np.float64, np.float32]))
def test_bias_starts_every_sum(case, dtype):
    """With a bias the kernel's output is the reference's plus b[o], also where the
    window sees only padding (there it is exactly b[o])."""
    x, w = make(case, dtype)
    bias = np.random.default_rng(case["seed"] + 1).standard_normal(case["O"]).astype(dtype)
    y0 = reference_conv(x, w, case["padding"])[0] + bias[None, :, None, None]
    with backend.using("c"):
        y1 = direct.correlate(x, w, case["padding"], bias=bias)
    assert y1.shape == y0.shape
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert y1.size == 0 or relative(y1, y0) < tol


def test_outputs_that_see_only_padding_are_the_bias():
    x, w = make(dict(N=1, C=3, H=6, W=5, O=5, K=(3, 3), seed=2), np.float32)
    bias = np.array([0.5, -1.0, 0.0, 2.0, -0.25], np.float32)
    with backend.using("c"):
        y = direct.correlate(x, w, (10, 10), bias=bias)
    expected = np.broadcast_to(bias[:, None, None], y.shape[1:])
    # rows 0..7 and columns 0..7 (and past the image's far side) see no input
    assert np.array_equal(y[0, :, :8], expected[:, :8])
    assert np.array_equal(y[0, :, :, -8:], expected[:, :, -8:])
    with pytest.raises(ValueError, match="bias"):
        direct.correlate(x, w, (1, 1), bias=bias[:4])
    with pytest.raises(ValueError, match="bias"):
        direct.correlate(x, w, (1, 1), bias=bias.astype(np.float64))


def _vector_widths():
    """The forward pass's builds this CPU runs: 32 bytes always, 64 with AVX-512."""
    if not backend.c_available():
        return [32]
    before = direct.vector_bytes()
    widths = sorted({direct.vector_bytes(32), direct.vector_bytes(64)})
    direct.vector_bytes(before)
    return widths


VECTOR_WIDTHS = _vector_widths()


@contextlib.contextmanager
def vector_width(width, flat=False):
    """Every forward call in the block runs the build of this width in this layout
    (``forward_layout`` would otherwise choose per layer)."""
    before, choose = direct.vector_bytes(), direct.forward_layout
    try:
        assert direct.vector_bytes(width) == width
        direct.forward_layout = lambda *args: (width, flat)
        yield
    finally:
        direct.vector_bytes(before)
        direct.forward_layout = choose


@given(case=cases(), dtype=st.sampled_from([np.float64, np.float32]),
       width=st.sampled_from(VECTOR_WIDTHS), flat=st.booleans())
def test_matches_the_im2col_reference(case, dtype, width, flat):
    """Every build of the forward pass this CPU can run, in both layouts (the input
    gradient is one too)."""
    x, w = make(case, dtype)
    y0, dy, dx0, dw0 = reference_conv(x, w, case["padding"])
    with vector_width(width, flat):
        y1, dx1, dw1 = direct_conv(x, w, case["padding"], dy)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert y1.shape == y0.shape and dx1.shape == dx0.shape
    if case["N"] == 0:
        assert not dw1.any()
        return
    assert relative(y1, y0) < tol
    assert relative(dx1, dx0) < tol
    assert relative(dw1, dw0) < tol


def test_fcn_conv1_1_geometry():
    """FCN's first layer: 3x3, padding 100 - all but the middle of the output sees
    only padding (0 before the bias), and the gradients only come from the middle."""
    x, w = make(dict(N=2, C=3, H=20, W=17, O=4, K=(3, 3), seed=1), np.float64)
    y0, dy, dx0, dw0 = reference_conv(x, w, (100, 100))
    y1, dx1, dw1 = direct_conv(x, w, (100, 100), dy)
    assert y1.shape == (2, 4, 218, 215)
    assert relative(y1, y0) < 1e-12 and relative(dx1, dx0) < 1e-12 and relative(dw1, dw0) < 1e-12
    assert not y1[:, :, :98].any() and not y1[:, :, :, 120:].any()


def test_weight_gradient_is_added():
    x, w = make(dict(N=2, C=3, H=9, W=40, O=5, K=(3, 3), seed=2), np.float64)
    _, dy, _, dw0 = reference_conv(x, w, (1, 1))
    dw = np.full(w.size, 0.5)
    direct.correlate_grads(dy, x, w, (1, 1), dw)
    np.testing.assert_allclose(dw.reshape(w.shape), dw0 + 0.5, rtol=1e-12, atol=1e-12)


def test_forward_does_not_depend_on_the_thread_count():
    """Rows are split between threads, each sum keeps its order: identical bits."""
    x, w = make(dict(N=2, C=4, H=70, W=70, O=6, K=(3, 3), seed=3), np.float32)
    lib = backend.lib()
    before = lib.npfcn_num_threads()
    try:
        lib.npfcn_set_num_threads(1)
        one = direct.correlate(x, w, (1, 1))
        lib.npfcn_set_num_threads(2)
        two = direct.correlate(x, w, (1, 1))
    finally:
        lib.npfcn_set_num_threads(before)
    assert np.array_equal(one, two)


@pytest.mark.parametrize("padding", [0, 1, 4])
def test_layer_gradcheck_on_the_direct_path(padding):
    """The Conv2d layer, float64, through the path conv2d picks for 4 -> 6 channels."""
    assert path_of((3, 3), (1, 1), (1, 1), 4, 6) == "direct"
    layer = Conv2d(4, 6, 3, padding=padding, dtype=np.float64, rng=0)
    x = np.random.default_rng(5).standard_normal((2, 4, 6, 7))
    with backend.using("c"):
        report = gradcheck(layer, (x,))
    report.assert_ok(1e-6)
    assert set(report.errors) >= {"input0", "weight", "bias"}


def path_of(kernel_size, stride, dilation, in_channels, out_channels):
    """The path npfcn.kernels.dispatch picks for one such layer on a 20x20 input."""
    KH, KW = kernel_size
    x_shape, w_shape = (1, in_channels, 20, 20), (out_channels, in_channels, KH, KW)
    out = [(20 + 2 - d * (k - 1) - 1) // s + 1 for k, s, d in zip(kernel_size, stride, dilation)]
    return dispatch.conv2d_path(x_shape, w_shape, (KH, KW, *stride, 1, 1, *dilation, *out))


def test_which_convolutions_take_the_direct_path():
    stride1 = ((1, 1), (1, 1))
    with backend.using("c"):
        assert path_of((3, 3), *stride1, 3, 4) == "direct"          # conv1_1 at width 1/16
        assert path_of((3, 3), *stride1, 16, 32) == "direct"        # conv4_1 at width 1/16
        assert path_of((3, 3), *stride1, 32, 32) == "direct"        # 25 tiles x 32: small
        assert path_of((5, 5), *stride1, 32, 32) == "direct"
        # wider: Winograd, except 64 outputs on AVX-512 (vectors along the channels)
        wide = "direct" if channel.available() else "winograd2"
        assert path_of((3, 3), *stride1, 64, 64) == wide
        assert path_of((3, 3), *stride1, 64, 128) == "winograd2"
        assert path_of((3, 3), *stride1, 3, 64) == "direct"         # VGG's conv1_1
        assert path_of((5, 5), *stride1, 64, 64) == "direct"        # no Winograd for 5x5
        assert path_of((7, 7), *stride1, 32, 32) == "direct_large"  # SegNet-Basic's 7x7
        assert path_of((7, 7), *stride1, 32, 256) == "bands"        # fc6: im2col + GEMM
        # 4x4 tiles x channels: 2 x 21 x 21 x 32 = 28k stays direct; wider layers Winograd
        g82 = (3, 3, 1, 1, 1, 1, 1, 1, 82, 82)
        assert dispatch.conv2d_path((2, 32, 82, 82), (32, 32, 3, 3), g82) == "direct"
        assert dispatch.conv2d_path((2, 64, 82, 82), (128, 64, 3, 3), g82) == "winograd4"
        assert dispatch.conv2d_path((2, 64, 82, 82), (64, 64, 3, 3), g82) == (
            "direct" if channel.available() else "winograd4")
        # the default run's conv1_2: 13,448 tiles, but 16 channel pairs: direct
        g326 = (3, 3, 1, 1, 1, 1, 1, 1, 326, 326)
        assert dispatch.conv2d_path((2, 4, 326, 326), (4, 4, 3, 3), g326) == "direct"
        assert path_of((3, 3), (2, 2), (1, 1), 4, 4) == "bands"
        assert path_of((3, 3), (1, 1), (2, 2), 4, 4) == "bands"
    with backend.using("numpy"):
        assert path_of((3, 3), *stride1, 4, 4) == "reference"


@pytest.mark.parametrize("size,out,kernel,pad,expected", [
    (128, 326, 3, 100, (98, 228)),   # conv1_1 of FCN on a 128x128 image
    (10, 10, 3, 1, (0, 10)),         # an ordinary same-size convolution: all of it
    (5, 3, 3, 0, (0, 3)),            # valid convolution
    (4, 13, 5, 6, (2, 10)),
])
def test_window_of_outputs_that_see_the_image(size, out, kernel, pad, expected):
    assert direct.window(size, out, kernel, pad) == expected
    lo, hi = expected
    # by definition: output o reads inputs o-pad .. o-pad+kernel-1
    sees = [o for o in range(out) if o - pad + kernel - 1 >= 0 and o - pad < size]
    assert (sees[0], sees[-1] + 1) == (lo, hi)


def test_bad_arrays_are_refused_before_the_kernel():
    x = np.zeros((1, 3, 8, 8), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        direct.correlate(x[:, :, :, ::2], w, (1, 1))
    with pytest.raises(ValueError, match="dtype"):
        direct.correlate(x, w.astype(np.float64), (1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        direct.correlate(x, np.zeros((4, 2, 3, 3), np.float32), (1, 1))
    with pytest.raises(ValueError, match="output"):
        direct.correlate_grads(np.zeros((1, 4, 5, 5), np.float32), x, w, (1, 1),
                             np.zeros(w.size, np.float32))
    with pytest.raises(ValueError, match="weight gradient"):
        direct.correlate_grads(np.zeros((1, 4, 8, 8), np.float32), x, w, (1, 1),
                             np.zeros(w.size - 1, np.float32))


def test_vector_width_is_chosen_by_the_cpu_and_can_be_narrowed():
    """64 bytes only where the CPU has AVX-512 as x86-64-v4 defines it (its flags in
    /proc/cpuinfo, where there is one); 32 can always be chosen; other widths are refused."""
    before = direct.vector_bytes()
    try:
        assert before in (32, 64)
        assert direct.vector_bytes(32) == 32
        flags = ""
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        if flags and platform.machine() == "x86_64":
            words = set(flags.split())
            avx512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= words
            assert (direct.vector_bytes(64) == 64) == avx512
        with pytest.raises(ValueError, match="vector width"):
            direct.vector_bytes(16)
    finally:
        direct.vector_bytes(before)


def test_forward_layout_follows_how_full_the_blocks_are_and_where_the_rows_live():
    """Worked by hand from the rule in forward_layout (64-byte blocks hold 48 floats,
    32-byte blocks 24): rows only for rows that fill >= 95 % of 24-wide blocks in a
    layer of >= 128 channel pairs; there, with AVX-512, 64 bytes when the fill of
    48-wide blocks times 1.12 (staged rows in L1) or 0.85 (beyond) is the larger;
    flat takes the widest vectors the CPU allows."""
    assert direct.block_fill(30, 4, 64) == pytest.approx(30 / 48)
    assert direct.block_fill(60, 4, 32) == pytest.approx(60 / 72)
    assert direct.block_fill(21, 8, 32) == pytest.approx(21 / 24)
    widest = direct.vector_bytes()                       # flat: the widest the CPU allows
    assert direct.forward_layout(64, 64, 7, 7, 30, 4) == (widest, True)  # 62 % full
    assert direct.forward_layout(4, 4, 3, 3, 96, 4) == (widest, True)    # 16 channel pairs
    before = direct.vector_bytes()
    try:
        if direct.vector_bytes(64) == 64:
            # 240 fills both kinds of block; 64*7 rows of ~300 floats are far beyond L1
            assert direct.forward_layout(64, 64, 7, 7, 240, 4) == (32, False)
            # 96 fills both; 16*3 rows of 146 floats = 28 KB stay in L1 -> 64 bytes
            assert direct.forward_layout(16, 16, 3, 3, 96, 4) == (64, False)
        direct.vector_bytes(32)
        assert direct.forward_layout(16, 16, 3, 3, 96, 4) == (32, False)
        assert direct.forward_layout(4, 4, 3, 3, 96, 4) == (32, True)
    finally:
        direct.vector_bytes(before)
