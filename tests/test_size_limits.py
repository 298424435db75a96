"""Sizes at and beyond what 32-bit (and 64-bit) indices can hold.

Two promises are tested without ever allocating gigabytes:

* 64-bit indexing: every size the C kernel receives is an ``int64_t``, and
  window coordinates far beyond 2**31 (huge strides, paddings and dilations
  on tiny images) give exactly what the definition says, checked against a
  naive loop in Python integers (which cannot overflow).  A 32-bit kernel
  would wrap those coordinates back into the image and read pixels it must
  not.
* Absurd sizes are refused with a ValueError naming the size BEFORE anything
  large is allocated: element counts above ``MAX_ELEMENTS`` (2**40), reached
  from small inputs through a huge output grid, huge padding or stride, or a
  huge batch made by a zero-stride ``np.broadcast_to`` view (which costs no
  memory itself), and geometry whose coordinates would leave 64-bit range.
  ``tracemalloc`` (which sees NumPy's allocations) shows the peak allocation
  during each refused call stays below a megabyte.
"""
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfcn.kernels import backend, pooling
from npfcn import functional as F
from npfcn.kernels.boundary import MAX_COORDINATE, MAX_ELEMENTS
from npfcn.functional import col2im, im2col
from npfcn.layers import Conv2d, ConvTranspose2d, MaxPool2d, MaxUnpool2d, ReLU
from npfcn.losses import CrossEntropyLoss

needs_c = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")
_RUN = {"test_huge_coordinates_follow_the_definition": 0}   # examples run, for tools/sanitize.sh


@pytest.fixture(scope="module", autouse=True)
def _report_example_counts():
    yield
    path = os.environ.get("NPFCN_FUZZ_LOG")
    if path:
        with open(path, "a") as log:
            for name, count in _RUN.items():
                log.write(f"test_size_limits.py::{name} {count}\n")


# --- 64-bit indexing --------------------------------------------------------------------

@needs_c
def test_every_kernel_size_argument_is_64_bit():
    """No kernel takes a size or index as int/long/int32: only int64_t (or pointers, floats)."""
    ffi, lib = backend.ffi(), backend.lib()
    functions = [name for name in dir(lib) if callable(getattr(lib, name))]
    assert "im2col_f32" in functions and "maxpool_backward_f64" in functions
    for name in functions:
        ctype = ffi.typeof(getattr(lib, name))
        for position, arg in enumerate(ctype.args):
            if arg.kind == "primitive" and arg.cname not in ("float", "double"):
                assert arg.cname in ("int64_t", "ptrdiff_t", "size_t"), (
                    f"{name} argument {position} is {arg.cname}, not a 64-bit integer")


def naive_im2col(x, k, s, p, d, out):
    """cols[n, (c*KH+i)*KW+j, oy*OW+ox] = x[n, c, oy*SH-PH+i*DH, ox*SW-PW+j*DW] in Python ints."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = k, s, p, d, out
    cols = np.zeros((N, C * kh * kw, oh * ow), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    for oy in range(oh):
                        for ox in range(ow):
                            iy, ix = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                            if 0 <= iy < H and 0 <= ix < W:
                                cols[n, (c * kh + i) * kw + j, oy * ow + ox] = x[n, c, iy, ix]
    return cols


def naive_col2im(cols, shape, k, s, p, d, out):
    """The adjoint, in Python ints: every column entry added back onto its pixel."""
    N, C, H, W = shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = k, s, p, d, out
    x = np.zeros(shape, dtype=cols.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    for oy in range(oh):
                        for ox in range(ow):
                            iy, ix = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                            if 0 <= iy < H and 0 <= ix < W:
                                x[n, c, iy, ix] += cols[n, (c * kh + i) * kw + j, oy * ow + ox]
    return x


# Values up to 2**61: far beyond 32 bits, and (summed) still below MAX_COORDINATE.
big = st.one_of(st.integers(0, 4), st.integers(2 ** 31 - 2, 2 ** 31 + 2),
                st.integers(2 ** 32 - 2, 2 ** 32 + 2), st.integers(1, 2 ** 59))


@st.composite
def huge_axis(draw):
    """(size, kernel, stride, padding, dilation, outputs) with coordinates beyond 2**31."""
    n, k, o = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s, p, d = 1 + draw(big), draw(big), 1 + draw(big)
    return n, k, s, p, d, o


@needs_c
@settings(max_examples=int(os.environ.get("NPFCN_FUZZ_EXAMPLES", "0") or 0) or 150)
@given(h=huge_axis(), w=huge_axis(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_huge_coordinates_follow_the_definition(h, w, dtype, seed):
    """im2col and col2im on the C kernel with strides/paddings/dilations up to 2**60."""
    _RUN["test_huge_coordinates_follow_the_definition"] += 1
    (H, kh, sh, ph, dh, oh), (W, kw, sw, pw, dw, ow) = h, w
    geometry = ((kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, H, W)).astype(dtype)
    with backend.using("c"):
        cols = im2col(x, *geometry)
        np.testing.assert_array_equal(cols, naive_im2col(x, *geometry))
        c = rng.standard_normal(cols.shape).astype(dtype)
        # Each pixel receives at most one entry per kernel tap (i, j), added in the same
        # (i, j) order by both: the sums agree to the last bit.
        np.testing.assert_array_equal(col2im(c, x.shape, *geometry),
                                      naive_col2im(c, x.shape, *geometry))


@needs_c
def test_a_coordinate_wrapping_at_32_bits_reads_nothing():
    """padding = dilation = 2**32: tap 0 sits at row -2**32 (outside: zeros), tap 1 at row 0.
    Truncated to 32 bits both would be row 0, and tap 0 would read the image."""
    x = np.arange(1.0, 7.0).reshape(1, 1, 2, 3)
    with backend.using("c"):
        cols = im2col(x, (2, 1), padding=(2 ** 32, 0), dilation=(2 ** 32, 1), out_size=(1, 3))
    np.testing.assert_array_equal(cols[0], [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])


# --- refusals before allocation -----------------------------------------------------------

def huge_batch(shape, batch):
    """A zero-stride view: ``batch`` copies of one small image, costing no memory."""
    one = np.ones((1,) + tuple(shape), dtype=np.float32)
    view = np.broadcast_to(one, (batch,) + tuple(shape))
    assert view.strides[0] == 0
    return view


TOO_MANY = 2 ** 41   # elements: twice MAX_ELEMENTS
assert TOO_MANY > MAX_ELEMENTS

_small = np.ones((1, 1, 4, 4), dtype=np.float32)
_tiny = np.ones((1, 1, 1, 1), dtype=np.float32)
_w1 = np.ones((1, 1, 1, 1), dtype=np.float32)
_idx = np.zeros((1, 1, 2, 2), dtype=np.int64)

REFUSALS = [
    # (id, call, message keyword)
    ("im2col-huge-batch-view", lambda: im2col(huge_batch((1, 32, 32), TOO_MANY // 1024), 3),
     "elements"),
    ("im2col-huge-grid", lambda: im2col(_small, 1, out_size=(2 ** 20, 2 ** 21)), "im2col would need"),
    ("im2col-huge-kernel-grid", lambda: im2col(_small, (2 ** 10, 2 ** 10), padding=2 ** 10,
                                               out_size=(2 ** 10, 2 ** 11)), "im2col would need"),
    ("col2im-huge-image", lambda: col2im(np.ones((1, 1, 1), np.float32), (1, 1, 2 ** 21, 2 ** 21),
                                         1, out_size=(1, 1)), "col2im output"),
    ("conv2d-huge-batch-view", lambda: Conv2d(1, 1, 3).forward(huge_batch((1, 32, 32), TOO_MANY // 1024)),
     "elements"),
    ("conv2d-huge-padding", lambda: F.conv2d_forward(_tiny, _w1, padding=2 ** 20), "would need"),
    ("conv2d-padding-beyond-int64", lambda: F.conv2d_forward(_tiny, _w1, padding=2 ** 62),
     "2**62"),
    ("conv_transpose2d-huge-stride", lambda: ConvTranspose2d(1, 1, 1, stride=2 ** 21).forward(
        np.ones((1, 1, 2, 2), np.float32)), "would need"),
    ("conv_transpose2d-huge-batch-view", lambda: ConvTranspose2d(1, 1, 2).forward(
        huge_batch((1, 32, 32), TOO_MANY // 1024)), "elements"),
    ("max_pool2d-huge-batch-view", lambda: MaxPool2d(2).forward(
        huge_batch((1, 32, 32), TOO_MANY // 1024)), "elements"),
    ("max_pool-kernel-huge-grid", lambda: pooling.pool_with_argmax(
        _small, (1, 1, 1, 1, 0, 0, 1, 1, 2 ** 21, 2 ** 21)), "max_pool output"),
    ("max_pool-kernel-stride-beyond-int64", lambda: pooling.pool_with_argmax(
        _small, (1, 1, 2 ** 63, 1, 0, 0, 1, 1, 2, 2)), "2**62"),
    ("max_unpool2d-huge-stride", lambda: MaxUnpool2d(1, stride=2 ** 21).forward(
        np.ones((1, 1, 2, 2), np.float32), _idx), "max_unpool2d output"),
    ("relu-huge-view", lambda: ReLU().forward(huge_batch((1, 32, 32), TOO_MANY // 1024)),
     "elements"),
    ("cross-entropy-huge-logits-view", lambda: CrossEntropyLoss().forward(
        huge_batch((2, 32, 32), TOO_MANY // 1024), np.zeros((1, 32, 32), np.int64)), "elements"),
    ("im2col-stride-beyond-int64", lambda: im2col(_small, 1, stride=2 ** 63 - 1, out_size=(1, 3)),
     "2**62"),
    ("col2im-dilation-beyond-int64", lambda: col2im(np.ones((1, 2, 1), np.float32), (1, 1, 4, 4),
                                                    (2, 1), dilation=(2 ** 62, 1),
                                                    out_size=(1, 1)), "2**62"),
]


@pytest.mark.parametrize("call, keyword", [row[1:] for row in REFUSALS],
                         ids=[row[0] for row in REFUSALS])
@pytest.mark.parametrize("name", ["c", "numpy"])
def test_absurd_sizes_are_refused_before_allocation(name, call, keyword):
    if name == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    tracemalloc.start()
    try:
        with backend.using(name), pytest.raises(ValueError) as info:
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert keyword in str(info.value), f"message {info.value!r} lacks {keyword!r}"
    # The refused work would need terabytes; the check itself allocates almost nothing.
    assert peak < 2 ** 20, f"{peak} bytes were allocated before the refusal"


def test_the_coordinate_limit_is_exact():
    """Just below MAX_COORDINATE is computed, at it is refused (the bound is not a guess)."""
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    # extent = H + PH + OH*SH + KH*DH = 2 + 0 + 1*s + 1*1
    limit_stride = MAX_COORDINATE - 3
    cols = im2col(x, 1, stride=(limit_stride - 1, 1), out_size=(1, 2))
    np.testing.assert_array_equal(cols[0, 0], [0.0, 1.0])
    with pytest.raises(ValueError, match="2\\*\\*62"):
        im2col(x, 1, stride=(limit_stride, 1), out_size=(1, 2))
