"""Transposed convolution by sub-pixel phases (npfcn/kernels/subpixel.py, csrc/subpixel.c).

Every result is compared with the NumPy backend's, npfcn.reference.conv's matmul +
col2im transposed convolution, an independent computation.  In float64 the two differ only by
summation order: 1e-12 relative to the largest value.  In float32, 1e-5
(sums of at most C*KH*KW/(SH*SW) products, ~1e-6 expected).
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from npfcn import functional as F
from npfcn.kernels import backend, dispatch, subpixel
from npfcn.gradcheck import gradcheck
from npfcn.layers import ConvTranspose2d

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


def relative(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def run(x, w, b, stride, padding, output_padding, dy=None):
    """y, dy, dx, dw, db of the functional transposed convolution on the active backend."""
    y, cache = F.conv_transpose2d_forward(x, w, b, stride, padding, output_padding)
    if dy is None:
        dy = np.sin(np.arange(y.size, dtype=x.dtype)).reshape(y.shape)
    dx, dw, db = F.conv_transpose2d_backward(dy, cache)
    return y, dy, dx, dw, db


@st.composite
def cases(draw):
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    kernel = tuple(s * draw(st.integers(1, 3)) for s in stride)     # a multiple of the stride
    same = draw(st.booleans())
    if same:
        padding, output_padding = "same", (0, 0)
    else:
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        output_padding = tuple(draw(st.integers(0, s - 1)) for s in stride)
    return dict(N=draw(st.integers(1, 2)), C=draw(st.integers(1, 5)), O=draw(st.integers(1, 5)),
                H=draw(st.integers(1, 7)), W=draw(st.integers(1, 7)), stride=stride,
                kernel=kernel, padding=padding, output_padding=output_padding,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@given(case=cases(), dtype=st.sampled_from([np.float64, np.float32]))
def test_matches_the_col2im_reference(case, dtype):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"])).astype(dtype)
    w = rng.standard_normal((case["C"], case["O"], *case["kernel"])).astype(dtype)
    b = rng.standard_normal(case["O"]).astype(dtype) if case["bias"] else None
    args = (case["stride"], case["padding"], case["output_padding"])
    try:
        with backend.using("numpy"):
            expected = run(x, w, b, *args)
    except ValueError:          # an empty output: refused on both paths alike
        with backend.using("c"), pytest.raises(ValueError):
            run(x, w, b, *args)
        return
    with backend.using("c"):
        assert dispatch.conv_transpose2d_path(w.shape, case["stride"], (1, 1)) == "subpixel"
        got = run(x, w, b, *args, dy=expected[1])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for name, a, e in zip(("y", "dy", "dx", "dw", "db"), got, expected):
        if e is not None:
            assert relative(a, e) < tol, name


@pytest.mark.parametrize("channels, kernel, stride, size", [
    (3, 4, 2, (3, 4)),      # upscore2 / upscore_pool4
    (2, 16, 8, (2, 3)),     # upscore8
])
def test_gradcheck_fcn_upsampling_shapes(channels, kernel, stride, size):
    layer = ConvTranspose2d(channels, channels, kernel, stride=stride, bias=False,
                            dtype=np.float64, rng=3)
    x = np.random.default_rng(4).standard_normal((2, channels, *size))
    with backend.using("c"):
        report = gradcheck(layer, (x,))
    # float64 central differences, eps=1e-6: errors ~1e-9 or below
    assert report.max_error < 1e-6, report


def test_fcn8s_upscore8_in_float32_matches_the_reference():
    """21 channels, kernel 16, stride 8 on 38x38 - FCN-8s's biggest upsampling."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 21, 38, 38)).astype(np.float32)
    w = (rng.standard_normal((21, 21, 16, 16)) / 16).astype(np.float32)
    with backend.using("numpy"):
        expected = run(x, w, None, 8, 0, 0)
    with backend.using("c"):
        got = run(x, w, None, 8, 0, 0, dy=expected[1])
    for a, e in zip(got[:4], expected[:4]):
        assert relative(a, e) < 1e-5


@pytest.mark.parametrize("kernel, stride, dilation, expected", [
    ((4, 4), (2, 2), (1, 1), True),
    ((16, 16), (8, 8), (1, 1), True),
    ((3, 3), (1, 1), (1, 1), True),        # stride 1: every kernel is a multiple
    ((3, 3), (2, 2), (1, 1), False),       # 3 is not a multiple of 2: col2im
    ((4, 4), (2, 2), (2, 2), False),       # dilated: col2im
])
def test_which_transposed_convolutions_go_by_phases(kernel, stride, dilation, expected):
    w_shape = (2, 3, *kernel)
    with backend.using("c"):
        assert (dispatch.conv_transpose2d_path(w_shape, stride, dilation) == "subpixel") is expected
    with backend.using("numpy"):
        assert dispatch.conv_transpose2d_path(w_shape, stride, dilation) == "reference"


def test_backward_follows_the_path_the_forward_pass_took():
    """A forward pass on NumPy and a backward pass on C (or the reverse) still agree:
    the backward pass takes the path recorded in the cache, whatever is active."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((2, 2, 4, 4))
    with backend.using("numpy"):
        y, cache_numpy = F.conv_transpose2d_forward(x, w, None, 2)
    with backend.using("c"):
        _, cache_c = F.conv_transpose2d_forward(x, w, None, 2)
    assert (cache_numpy[0], cache_c[0]) == ("reference", "subpixel")
    dy = rng.standard_normal(y.shape)
    with backend.using("c"):
        a = F.conv_transpose2d_backward(dy, cache_numpy)
    with backend.using("numpy"):
        b = F.conv_transpose2d_backward(dy, cache_c)
    for u, v in zip(a[:2], b[:2]):
        assert relative(u, v) < 1e-12


def test_the_python_gate_refuses_mismatched_sizes():
    phases = np.zeros((4 * 2, 1 * 3 * 3))
    image = np.zeros((1, 2, 5, 5))
    with backend.using("c"), pytest.raises(ValueError, match="subpixel"):
        subpixel._move("phases_to_image", phases, image, 1, 2, (2, 2), 3, 4, (5, 5), (0, 0))
