"""Fuzz every Python path that reaches the C kernel, against the NumPy reference.

Hypothesis draws extreme but legal geometry: 1x1 images, kernels as large as
the padded input, padding larger than the kernel, dilation and stride larger
than the image, single channels, batch 0 (empty), 1 and larger, float32 and float64, and
inputs that are Fortran-ordered, strided, reversed, transposed or read-only.
Each result of the C path is compared with ``backend.using("numpy")``:

* exactly where both paths do the same arithmetic (im2col is a copy; pooling
  is a comparison; unpooling is a placement);
* within a rounding bound otherwise (sums whose order may differ): with
  ``S`` the same computation on absolute values and ``n`` the number of terms
  in each sum, two correctly rounded summations of the same terms differ by at
  most ``2 * n * eps * S`` (the standard bound for recursive summation,
  ``|error| <= n * eps * sum|terms|``, applied to each path).

This module is also the sanitizer pass's main course (``tools/sanitize.sh``):
there the C kernel is built with AddressSanitizer and UBSan, so any
out-of-bounds access or undefined behaviour aborts the run.  The number of
examples each test ran is appended to the file named by ``NPFCN_FUZZ_LOG``
(if set), and ``NPFCN_FUZZ_EXAMPLES`` overrides the example count.

Finally a table of hand-crafted bad calls to the Python entry points shows
that wrong dtypes, shapes, strides and geometry are refused before C runs.
"""
import collections
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfcn import functional as F
from npfcn.functional import col2im, conv_output_size, im2col
from npfcn.kernels import backend, bands, pooling
from npfcn.kernels.bands import col2im_bands, im2col_bands
from npfcn.layers import Conv2d, ConvTranspose2d, Dropout, MaxPool2d, MaxUnpool2d
from module_tree import modules_of

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")

_OVERRIDE = int(os.environ.get("NPFCN_FUZZ_EXAMPLES", "0") or 0)


def examples(n, cap=None):
    """``n`` examples under the default profile (scaled by the profile), or the override
    (at most ``cap``: whole-model examples cost a thousand kernel examples each)."""
    if _OVERRIDE:
        return settings(max_examples=min(_OVERRIDE, cap or _OVERRIDE))
    return settings(max_examples=max(1, n * settings.default.max_examples // 25))


_RUN = collections.Counter()   # examples executed per test, for the sanitizer report


@pytest.fixture(scope="module", autouse=True)
def _report_example_counts():
    yield
    path = os.environ.get("NPFCN_FUZZ_LOG")
    if path:
        with open(path, "a") as log:
            for name, count in sorted(_RUN.items()):
                log.write(f"test_fuzz_kernels.py::{name} {count}\n")


# --- strategies -----------------------------------------------------------------------

dtypes = st.sampled_from([np.float32, np.float64])
LAYOUTS = ("c", "fortran", "strided", "reversed", "transposed", "readonly")
layouts = st.sampled_from(LAYOUTS)
seeds = st.integers(0, 2 ** 32 - 1)


@st.composite
def conv_axis(draw, max_image=7):
    """One spatial axis of a convolution: (size, kernel, stride, padding, dilation)."""
    n = draw(st.integers(1, max_image))
    p = draw(st.one_of(st.just(0), st.integers(0, 6)))     # may exceed the kernel
    d = draw(st.integers(1, 9))                  # may exceed the image
    k_max = (n + 2 * p - 1) // d + 1             # the dilated kernel fills the padded input
    k = draw(st.one_of(st.just(1), st.just(k_max), st.integers(1, min(k_max, 5))))
    s = draw(st.integers(1, 10))                 # may exceed the image
    return n, k, s, p, d


@st.composite
def pool_axis(draw, max_image=7):
    """One axis of a pooling window: padding at most half the kernel, as PyTorch requires."""
    k = draw(st.integers(1, 6))
    p = draw(st.integers(0, k // 2))
    d = draw(st.integers(1, 5))
    span = d * (k - 1) + 1
    n = max(1, span - 2 * p) + draw(st.integers(0, max_image))
    s = draw(st.integers(1, 10))
    return n, k, s, p, d


def values(rng, shape, dtype, ties=False, specials=False):
    """Random values; ``ties`` draws small integers (many equal maxima), ``specials``
    sprinkles NaN and +-inf (pooling must order them exactly as the reference)."""
    if ties:
        a = rng.integers(-3, 4, size=shape).astype(dtype)
    else:
        a = rng.standard_normal(shape).astype(dtype)
    if specials and a.size:
        mask = rng.random(shape) < 0.1
        a[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=int(mask.sum()))
    return a


def with_layout(a, layout):
    """The same values as ``a`` in another memory layout (the C kernel needs C order)."""
    if layout == "c":
        out = a.copy()
    elif layout == "fortran":
        out = np.asfortranarray(a)
    elif layout == "strided":                     # every other element of a wider array
        wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        wide[..., ::2] = a
        out = wide[..., ::2]
    elif layout == "reversed":                    # negative strides
        out = a[:, ::-1, ::-1].copy()[:, ::-1, ::-1]
    elif layout == "transposed":                  # W-major memory
        out = a.swapaxes(2, 3).copy().swapaxes(2, 3)
    elif layout == "readonly":
        out = a.copy()
        out.flags.writeable = False
    else:  # pragma: no cover
        raise AssertionError(layout)
    np.testing.assert_array_equal(out, a)
    return out


def both_backends(fn):
    """``fn()`` on the C kernel and on the NumPy reference: (c_result, numpy_result)."""
    with backend.using("c"):
        c = fn()
    with backend.using("numpy"):
        ref = fn()
    return c, ref


def assert_within_rounding(c, ref, abs_sum, terms, name):
    """|c - ref| <= 2 * terms * eps * abs_sum elementwise (see the module docstring)."""
    assert c.dtype == ref.dtype, f"{name}: dtype {c.dtype} vs {ref.dtype}"
    assert c.shape == ref.shape, f"{name}: shape {c.shape} vs {ref.shape}"
    eps = np.finfo(c.dtype).eps
    bound = 2.0 * terms * eps * abs_sum.astype(np.float64) + np.finfo(c.dtype).tiny
    err = np.abs(c.astype(np.float64) - ref.astype(np.float64))
    assert np.all(err <= bound), (
        f"{name}: C and NumPy differ by {err.max():.3g} (bound {bound.flat[np.argmax(err - bound)]:.3g})")


# --- im2col / col2im ------------------------------------------------------------------

@examples(150)
@given(h=conv_axis(), w=conv_axis(), n=st.integers(0, 3), c=st.integers(1, 3), dtype=dtypes,
       layout=layouts, seed=seeds,
       grid=st.one_of(st.just("image"), st.tuples(st.integers(-3, 3), st.integers(-3, 3))))
def test_im2col_and_col2im_match_the_reference(h, w, n, c, dtype, layout, grid, seed):
    """Any geometry, any grid size >= 1 (larger grids read past the image: zeros);
    "image" asks for a grid of the image's own size, whatever the stride."""
    _RUN["test_im2col_and_col2im_match_the_reference"] += 1
    (H, kh, sh, ph, dh), (W, kw, sw, pw, dw) = h, w
    oh, ow = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    out = (H, W) if grid == "image" else (max(1, oh + grid[0]), max(1, ow + grid[1]))
    geometry = ((kh, kw), (sh, sw), (ph, pw), (dh, dw), out)
    rng = np.random.default_rng(seed)
    x = with_layout(values(rng, (n, c, H, W), dtype), layout)

    cols_c, cols_ref = both_backends(lambda: im2col(x, *geometry))
    assert cols_c.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cols_c, cols_ref)   # a copy: bit for bit
    # Both paths share the Python dispatch (shortcuts included), so check it
    # against the definition too, one element at a time.
    np.testing.assert_array_equal(cols_c, naive_im2col(x, *geometry))

    cols = values(rng, cols_ref.shape, dtype)
    x_c, x_ref = both_backends(lambda: col2im(cols, x.shape, *geometry))
    abs_sum = col2im(np.abs(cols), x.shape, *geometry)
    assert_within_rounding(x_c, x_ref, abs_sum, kh * kw, "col2im")


def naive_im2col(x, kernel, stride, padding, dilation, out):
    """cols[n, (c*KH+i)*KW+j, oy*OW+ox] = x[n, c, oy*SH-PH+i*DH, ox*SW-PW+j*DW] (0 outside)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = kernel, stride, padding, dilation, out
    cols = np.zeros((N, C, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            for oy in range(oh):
                for ox in range(ow):
                    iy, ix = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                    if 0 <= iy < H and 0 <= ix < W:
                        cols[:, :, i, j, oy, ox] = x[:, :, iy, ix]
    return cols.reshape(N, C * kh * kw, oh * ow)


# --- layers ---------------------------------------------------------------------------

class workspace_of:
    """Temporarily shrink ``npfcn.kernels.bands.BAND_BYTES`` so that the C path builds
    its columns a band of grid rows at a time: bands after the first reach C with a
    negative top padding, a case tiny shapes would never produce."""

    def __init__(self, size):
        self.size = size

    def __enter__(self):
        self.previous = bands.BAND_BYTES
        if self.size:
            bands.BAND_BYTES = self.size

    def __exit__(self, *exc):
        bands.BAND_BYTES = self.previous


workspaces = st.sampled_from([0, 1, 300])   # 0: the default; 1: one grid row per band


def _run_layer(layer, x, dy_seed):
    """forward, then backward with a seeded upstream gradient; returns y, dx, grads."""
    layer.zero_grad()
    y = layer.forward(x)
    dy = values(np.random.default_rng(dy_seed), y.shape, y.dtype)
    dx = layer.backward(dy)
    return y, dy, dx, {k: g.copy() for k, g in layer.grads.items()}


@examples(80)
@given(h=conv_axis(), w=conv_axis(), n=st.integers(0, 3), c=st.integers(1, 3),
       o=st.integers(1, 3), bias=st.booleans(), dtype=dtypes, layout=layouts, seed=seeds,
       workspace=workspaces)
def test_conv2d_matches_the_reference(h, w, n, c, o, bias, dtype, layout, seed, workspace):
    _RUN["test_conv2d_matches_the_reference"] += 1
    (H, kh, sh, ph, dh), (W, kw, sw, pw, dw) = h, w
    layer = Conv2d(c, o, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=bias, dtype=dtype, rng=seed)
    x = with_layout(values(np.random.default_rng(seed), (n, c, H, W), dtype), layout)
    with workspace_of(workspace):
        (y, dy, dx, grads), (y_r, _, dx_r, grads_r) = both_backends(
            lambda: _run_layer(layer, x, seed + 1))
    OH, OW = y_r.shape[2:]
    assert y.shape == (n, o, OH, OW) and dx.shape == x.shape

    # The same sums over absolute values bound every rounding difference.
    absolute = Conv2d(c, o, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=bias, dtype=dtype)
    absolute.params = {k: np.abs(v) for k, v in layer.params.items()}
    absolute.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
    with backend.using("numpy"):
        y_abs = absolute.forward(np.abs(x))
        dx_abs = absolute.backward(np.abs(dy))
    assert_within_rounding(y, y_r, y_abs, c * kh * kw + 1, "conv2d forward")
    assert_within_rounding(dx, dx_r, dx_abs, o * kh * kw, "conv2d d/dx")
    for k in grads:
        assert_within_rounding(grads[k], grads_r[k], absolute.grads[k], n * OH * OW, f"conv2d d/d{k}")


@st.composite
def transposed_axis(draw, max_image=6):
    """(size, kernel, stride, padding, output_padding, dilation) with a non-empty output."""
    n = draw(st.integers(1, max_image))
    k = draw(st.integers(1, 6))
    s = draw(st.integers(1, 9))
    d = draw(st.integers(1, 5))
    op = draw(st.integers(0, max(s, d) - 1))     # PyTorch: below stride or dilation
    full = (n - 1) * s + d * (k - 1) + op        # output size minus one, before padding
    p = draw(st.integers(0, full // 2))          # may exceed the kernel
    return n, k, s, p, op, d


@examples(80)
@given(h=transposed_axis(), w=transposed_axis(), same=st.booleans(), n=st.integers(0, 3),
       c=st.integers(1, 3), o=st.integers(1, 3), dtype=dtypes, layout=layouts, seed=seeds,
       workspace=workspaces)
def test_conv_transpose2d_matches_the_reference(h, w, same, n, c, o, dtype, layout, seed,
                                                workspace):
    _RUN["test_conv_transpose2d_matches_the_reference"] += 1
    (H, kh, sh, ph, oph, dh), (W, kw, sw, pw, opw, dw) = h, w
    geometry = dict(kernel_size=(kh, kw), stride=(sh, sw), dilation=(dh, dw),
                    padding="same" if same else (ph, pw),
                    output_padding=(0, 0) if same else (oph, opw))
    layer = ConvTranspose2d(c, o, dtype=dtype, rng=seed, **geometry)
    x = with_layout(values(np.random.default_rng(seed), (n, c, H, W), dtype), layout)
    with workspace_of(workspace):
        (y, dy, dx, grads), (y_r, _, dx_r, grads_r) = both_backends(
            lambda: _run_layer(layer, x, seed + 1))
    if same:
        assert y.shape[2:] == (H * sh, W * sw)

    absolute = ConvTranspose2d(c, o, dtype=dtype, **geometry)
    absolute.params = {k: np.abs(v) for k, v in layer.params.items()}
    absolute.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}
    with backend.using("numpy"):
        y_abs = absolute.forward(np.abs(x))
        dx_abs = absolute.backward(np.abs(dy))
    OH, OW = y.shape[2:]
    assert_within_rounding(y, y_r, y_abs, c * kh * kw + 1, "conv_transpose2d forward")
    assert_within_rounding(dx, dx_r, dx_abs, o * kh * kw, "conv_transpose2d d/dx")
    for k in grads:
        assert_within_rounding(grads[k], grads_r[k], absolute.grads[k], n * OH * OW,
                               f"conv_transpose2d d/d{k}")


@examples(15, cap=60)
@given(name=st.sampled_from(["fcn8s", "fcn16s", "fcn32s"]), h=st.integers(1, 12),
       w=st.integers(1, 12), n=st.integers(1, 2), dtype=dtypes, layout=layouts, seed=seeds)
def test_fcn_models_match_the_reference(name, h, w, n, dtype, layout, seed):
    """Whole networks (crops, skips, frozen upsampling, every kernel in one graph) on
    any image size down to 1x1: forward scores, d/dx and every weight gradient.
    Tolerance: 1000 eps relative to the largest reference value, for sums of up to
    about a thousand terms whose order a fast path may change (measured: below 3e-16
    in float64, 0 in float32).  A bias gradient is one sum over every output pixel of
    its channel (up to n * (h + 200) * (w + 200) after FCN's padding of 100), whose
    terms cancel: its rounding grows like the square root of that count, and so does
    its tolerance (hypothesis found conv1_1's bias of a 12x5 image off by 3.3e-13
    relative, 1500 eps, when the path of a layer above changed the order)."""
    from npfcn.models import build_model
    _RUN["test_fcn_models_match_the_reference"] += 1
    model = build_model(name, num_classes=3, width=0.015625, dtype=dtype, seed=seed % 1000)
    rng = np.random.default_rng(seed)
    for key in model.params:      # score layers start at zero; make the skips matter
        if "score" in key:
            model.params[key][...] = rng.standard_normal(model.params[key].shape) * 0.1
    for module in modules_of(model):   # no dropout: both passes see the same network
        if isinstance(module, Dropout):
            module.p = 0.0
    x = with_layout(values(rng, (n, 3, h, w), dtype), layout)

    def run():
        model.zero_grad()
        scores = model.forward(x)
        dx = model.backward(values(np.random.default_rng(seed + 1), scores.shape, scores.dtype))
        return {"scores": scores, "dx": dx, **{k: g.copy() for k, g in model.grads.items()}}

    c, ref = both_backends(run)
    assert c["scores"].shape == (n, 3, h, w)
    eps = np.finfo(dtype).eps
    for key in ref:
        scale = np.abs(ref[key]).max() if ref[key].size else 0.0
        terms = n * (h + 200) * (w + 200) if key.endswith("bias") else 1
        np.testing.assert_allclose(c[key], ref[key], rtol=0,
                                   atol=1000 * eps * scale * np.sqrt(terms) + 1e-30,
                                   err_msg=key)


def scatter_add_planes(values, indices, image_shape):
    """out[n, c].flat[indices[n, c]] += values[n, c] (repeats add up), summed in float64."""
    N, C, H, W = image_shape
    plane = np.arange(N * C).reshape(N, C, 1, 1) * (H * W)
    flat = np.bincount((plane + indices).ravel(), weights=values.ravel().astype(np.float64),
                       minlength=N * C * H * W)
    return flat.reshape(image_shape)


def window_sees_only_padding(n, k, s, p, d, out):
    """Brute force, from the definition: is some window's every tap outside [0, n)?"""
    return any(all(not 0 <= o * s - p + i * d < n for i in range(k)) for o in range(out))


@examples(150)
@given(h=pool_axis(), w=pool_axis(), n=st.integers(0, 3), c=st.integers(1, 3),
       ceil_mode=st.booleans(), ties=st.booleans(), specials=st.booleans(), dtype=dtypes,
       layout=layouts, seed=seeds)
def test_max_pool2d_and_unpool_match_the_reference(h, w, n, c, ceil_mode, ties, specials, dtype,
                                                   layout, seed):
    """Values, argmax indices (ties, NaN, +-inf included) and gradients; then unpooling."""
    _RUN["test_max_pool2d_and_unpool_match_the_reference"] += 1
    (H, kh, sh, ph, dh), (W, kw, sw, pw, dw) = h, w
    pool = MaxPool2d((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode=ceil_mode,
                     return_indices=True)
    rng = np.random.default_rng(seed)
    x = with_layout(values(rng, (n, c, H, W), dtype, ties, specials), layout)
    OH, OW = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    if (window_sees_only_padding(H, kh, sh, ph, dh, OH)
            or window_sees_only_padding(W, kw, sw, pw, dw, OW)):
        # Dilated taps can straddle the image: no maximum exists, so it is refused.
        for name in ("c", "numpy"):
            with backend.using(name), pytest.raises(ValueError, match="entirely in the padding"):
                pool.forward(x)
        return

    def run():
        (y, idx) = pool.forward(x)
        dy = values(np.random.default_rng(seed + 1), y.shape, y.dtype)
        return y, idx, dy, pool.backward(dy)

    (y, idx, dy, dx), (y_r, idx_r, _, dx_r) = both_backends(run)
    assert y.shape == (n, c, OH, OW) and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_r)             # comparisons only: bit for bit (NaN == NaN)
    np.testing.assert_array_equal(idx, idx_r)
    assert idx.size == 0 or (idx.min() >= 0 and idx.max() < H * W)   # inside its plane
    # A pixel collects as many gradients as windows pick it (at most OH*OW).
    abs_sum = scatter_add_planes(np.abs(dy), idx, x.shape)
    assert_within_rounding(dx, dx_r, abs_sum, OH * OW, "max_pool2d d/dx")

    # Unpooling puts every maximum back where it came from (a placement: exact).
    unpool = MaxUnpool2d((kh, kw), (sh, sw), (ph, pw))
    default = ((OH - 1) * sh - 2 * ph + kh, (OW - 1) * sw - 2 * pw + kw)
    if not all(abs(a - b) < s for a, b, s in zip((H, W), default, (sh, sw))):
        return   # PyTorch's output_size rule cannot name the original size here
    u, u_r = both_backends(lambda: unpool.forward(y, idx, output_size=(H, W)))
    np.testing.assert_array_equal(u, u_r)
    np.testing.assert_array_equal(
        np.take_along_axis(u.reshape(n, c, H * W), idx.reshape(n, c, OH * OW), 2),
        y.reshape(n, c, OH * OW))


@examples(150)
@given(h=pool_axis(), w=pool_axis())
def test_pooling_window_check_agrees_with_brute_force(h, w):
    """The refusal of windows that see only padding happens exactly when one exists."""
    _RUN["test_pooling_window_check_agrees_with_brute_force"] += 1
    (H, kh, sh, ph, dh), (W, kw, sw, pw, dw) = h, w
    OH, OW = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    expect_refusal = (window_sees_only_padding(H, kh, sh, ph, dh, OH)
                      or window_sees_only_padding(W, kw, sw, pw, dw, OW))
    x = np.zeros((1, 1, H, W))
    if expect_refusal:
        with pytest.raises(ValueError, match="entirely in the padding"):
            F.max_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    else:
        y, idx, _ = F.max_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw))
        assert y.shape == (1, 1, OH, OW)


def test_dilated_window_in_padding_is_refused_not_read_out_of_bounds():
    """Regression: H=1, kernel 2, dilation 2, padding 1 taps rows -1 and 1 only; the C
    kernel returned index -1 there, which the backward pass then wrote to."""
    x = np.arange(1.0, 4.0).reshape(1, 1, 1, 3)
    for name in ("c", "numpy"):
        with backend.using(name), pytest.raises(ValueError, match="entirely in the padding"):
            F.max_pool2d_forward(x, 2, 1, 1, 2)


# --- bad direct calls are refused before C --------------------------------------------

def _x(dtype=np.float64, shape=(1, 2, 5, 5)):
    return np.ones(shape, dtype=dtype)


_GOOD_IDX = np.zeros((1, 2, 2, 2), dtype=np.int64)
_GRID = (3, 3, 1, 1, 0, 0, 1, 1, 3, 3)     # (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW) on 5x5
_GOOD_DY = np.ones((1, 2, 2, 2))

BAD_CALLS = [
    # (id, call, exception, message keyword)
    ("im2col-int-input", lambda: im2col(_x(np.int32), 3), TypeError, "float32 or float64"),
    ("im2col-float16", lambda: im2col(_x(np.float16), 3), TypeError, "float16"),
    ("im2col-object", lambda: im2col(_x(object), 3), TypeError, "object"),
    ("im2col-complex", lambda: im2col(_x(np.complex128), 3), TypeError, "complex"),
    ("im2col-list", lambda: im2col([[[[1.0]]]], 1), TypeError, "numpy.ndarray"),
    ("im2col-rank-3", lambda: im2col(np.ones((2, 5, 5)), 3), ValueError, "4 dimensions"),
    ("im2col-kernel-0", lambda: im2col(_x(), 0), ValueError, "kernel_size"),
    ("im2col-kernel-bool", lambda: im2col(_x(), True), TypeError, "kernel_size"),
    ("im2col-kernel-float", lambda: im2col(_x(), 2.0), TypeError, "kernel_size"),
    ("im2col-stride-0", lambda: im2col(_x(), 3, stride=0), ValueError, "stride"),
    ("im2col-padding-negative", lambda: im2col(_x(), 3, padding=-1), ValueError, "padding"),
    ("im2col-dilation-0", lambda: im2col(_x(), 3, dilation=0), ValueError, "dilation"),
    ("im2col-grid-0", lambda: im2col(_x(), 3, out_size=(0, 3)), ValueError, "out_size"),
    ("im2col-kernel-too-large", lambda: im2col(_x(), 6), ValueError, "larger than the padded"),
    ("im2col-kernel-triple", lambda: im2col(_x(), (1, 2, 3)), ValueError, "pair"),
    ("col2im-wrong-cols-shape", lambda: col2im(np.ones((1, 18, 10)), (1, 2, 5, 5), 3),
     ValueError, "cols has shape"),
    ("col2im-cols-rank-4", lambda: col2im(np.ones((1, 18, 3, 3)), (1, 2, 5, 5), 3),
     ValueError, "3 dimensions"),
    ("col2im-int-cols", lambda: col2im(np.ones((1, 18, 9), dtype=np.int64), (1, 2, 5, 5), 3),
     TypeError, "int64"),
    ("col2im-image-shape-negative", lambda: col2im(np.ones((1, 18, 9)), (1, 2, -5, 5), 3),
     ValueError, "image_shape"),
    ("col2im-image-shape-rank", lambda: col2im(np.ones((1, 18, 9)), (2, 5, 5), 3),
     ValueError, "image_shape"),
    ("conv2d-weight-dtype", lambda: F.conv2d_forward(_x(), np.ones((3, 2, 3, 3), np.float32)),
     TypeError, "dtype"),
    ("conv2d-channels", lambda: F.conv2d_forward(_x(), np.ones((3, 4, 3, 3))),
     ValueError, "channels"),
    ("conv2d-bias-shape", lambda: F.conv2d_forward(_x(), np.ones((3, 2, 3, 3)), np.ones(4)),
     ValueError, "bias"),
    ("conv_transpose2d-output-padding", lambda: F.conv_transpose2d_forward(
        _x(), np.ones((2, 3, 3, 3)), stride=2, output_padding=2), ValueError, "output_padding"),
    ("conv_transpose2d-empty-output", lambda: F.conv_transpose2d_forward(
        _x(shape=(1, 2, 1, 1)), np.ones((2, 3, 1, 1)), padding=1), ValueError, "empty output"),
    ("max_pool2d-padding-over-half", lambda: F.max_pool2d_forward(_x(), 2, padding=2),
     ValueError, "half the kernel"),
    ("max_pool2d-float16", lambda: F.max_pool2d_forward(_x(np.float16), 2), TypeError, "float16"),
    ("max_pool-kernel-int-input", lambda: pooling.pool_with_argmax(
        _x(np.int64), (2, 2, 2, 2, 0, 0, 1, 1, 2, 2)), ValueError, "int64"),
    ("max_pool-kernel-stride-0", lambda: pooling.pool_with_argmax(
        _x(), (2, 2, 0, 2, 0, 0, 1, 1, 2, 2)), ValueError, "positive"),
    ("max_pool-kernel-negative-kernel", lambda: pooling.pool_with_argmax(
        _x(), (-2, 2, 2, 2, 0, 0, 1, 1, 2, 2)), ValueError, "positive"),
    ("max_pool-kernel-grid-0", lambda: pooling.pool_with_argmax(
        _x(), (2, 2, 2, 2, 0, 0, 1, 1, 0, 2)), ValueError, "positive"),
    ("max_pool-backward-index-high", lambda: pooling.scatter_to_argmax(
        _GOOD_DY, _GOOD_IDX + 25, (1, 2, 5, 5)), ValueError, "out of range"),
    ("max_pool-backward-index-negative", lambda: pooling.scatter_to_argmax(
        _GOOD_DY, _GOOD_IDX - 1, (1, 2, 5, 5)), ValueError, "out of range"),
    ("max_pool-backward-index-int32", lambda: pooling.scatter_to_argmax(
        _GOOD_DY, _GOOD_IDX.astype(np.int32), (1, 2, 5, 5)), ValueError, "int32"),
    ("max_pool-backward-index-strided", lambda: pooling.scatter_to_argmax(
        _GOOD_DY, np.zeros((1, 2, 2, 4), np.int64)[..., ::2], (1, 2, 5, 5)),
     ValueError, "contiguous"),
    ("max_pool-backward-index-shape", lambda: pooling.scatter_to_argmax(
        _GOOD_DY, np.zeros((1, 2, 2, 3), np.int64), (1, 2, 5, 5)), ValueError, "shape"),
    ("max_pool-backward-dy-planes", lambda: pooling.scatter_to_argmax(
        _GOOD_DY, _GOOD_IDX, (1, 3, 5, 5)), ValueError, "shape"),
    ("max_pool-backward-image-shape-negative", lambda: pooling.scatter_to_argmax(
        _GOOD_DY, _GOOD_IDX, (1, 2, -5, 5)), ValueError, "image_shape"),
    ("im2col_bands-buffer-too-small", lambda: im2col_bands(
        _x(), _GRID, (0, 3), np.empty((18, 4))), ValueError, "cols has shape"),
    ("im2col_bands-rows-beyond-grid", lambda: im2col_bands(
        _x(), _GRID, (2, 4), np.empty((18, 6))), ValueError, "grid rows"),
    ("im2col_bands-buffer-other-dtype", lambda: im2col_bands(
        _x(), _GRID, (0, 3), np.empty((18, 9), np.float32)), ValueError, "dtype"),
    ("im2col_bands-strided-buffer", lambda: im2col_bands(
        _x(), _GRID, (0, 3), np.empty((18, 18))[:, ::2]), ValueError, "C-contiguous"),
    ("col2im_bands-buffer-too-small", lambda: col2im_bands(
        np.empty((18, 4)), _x(), _GRID, (0, 3)), ValueError, "cols has shape"),
    ("col2im_bands-fortran-image", lambda: col2im_bands(
        np.empty((18, 9)), np.asfortranarray(_x()), _GRID, (0, 3)), ValueError, "C-contiguous"),
    ("col2im_bands-negative-stride-geometry", lambda: col2im_bands(
        np.empty((18, 9)), _x(), (3, 3, -1, 1, 0, 0, 1, 1, 3, 3), (0, 3)), ValueError, "stride"),
    ("max_unpool2d-index-out-of-range", lambda: F.max_unpool2d_forward(
        np.ones((1, 2, 2, 2)), _GOOD_IDX + 16, 2), ValueError, "out of range"),
    ("max_unpool2d-float-indices", lambda: F.max_unpool2d_forward(
        np.ones((1, 2, 2, 2)), _GOOD_IDX.astype(float), 2), TypeError, "integer"),
]


@pytest.mark.parametrize("call, exc, keyword", [row[1:] for row in BAD_CALLS],
                         ids=[row[0] for row in BAD_CALLS])
def test_bad_direct_calls_are_refused_before_c(call, exc, keyword, monkeypatch):
    """Each bad call raises a clear error while the C kernel is unreachable: the
    kernel lookup is replaced by a tripwire, so reaching it would fail differently."""
    def tripwire():
        raise AssertionError("the C kernel was reached with bad arguments")

    monkeypatch.setattr(backend, "lib", tripwire)
    monkeypatch.setattr(backend, "ffi", tripwire)
    with backend.using("c"), pytest.raises(exc) as info:
        call()
    assert keyword in str(info.value), f"message {info.value!r} lacks {keyword!r}"


def test_refusals_do_not_rely_on_assert():
    """The same table under ``python -O``, where ``assert`` statements vanish: every
    refusal must be an explicit check (an assert-only guard once let a too-small
    buffer be written out of bounds)."""
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, "-O", "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "bad_direct_calls"], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, NPFCN_FUZZ_LOG=""))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
