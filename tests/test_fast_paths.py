"""The fast paths of the default (C) backend agree with the NumPy reference (npfcn.reference).

What is fast-path-only and therefore tested here:
* convolution and transposed convolution built a band of grid rows at a time
  (``npfcn.kernels.bands.BAND_BYTES``), with the batch side by side in one GEMM,
  through ``im2col_bands``/``col2im_bands`` and the strided C kernels
  (``npfcn.kernels.gemm``), on whatever path dispatch picks and forced onto bands;
* the 1x1 ("pointwise") convolution that skips im2col;
* the 2x2 stride-2 max-pool kernel;
* ReLU caching its output instead of a mask;
* workspaces reused between calls never leak into returned arrays.

The reference is the NumPy backend (``backend.using("numpy")``: npfcn.reference),
computed without bands.  Tolerances: copies (im2col, max pool) must match exactly;
sums whose order differs (GEMM blocking, col2im) are compared with a relative
tolerance of 1e-12 in float64 (a few ulps of round-off per accumulated
product) and 1e-4 in float32 (~1e3 ulps: BLAS may block sums differently).
"""
import numpy as np
import pytest

from npfcn import functional as F, reference as R
from npfcn.kernels import backend, bands, dispatch, gemm
from npfcn.kernels.bands import col2im_bands, im2col_bands

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")

RTOL = {np.float64: 1e-12, np.float32: 1e-4}


def close(a, b, dtype):
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=0, atol=RTOL[dtype] * scale)


@pytest.fixture(params=[None, 1], ids=["one-band", "row-bands"])
def block_bytes(request, monkeypatch):
    """Run once with the default band size and once with one grid row per band."""
    if request.param is not None:
        monkeypatch.setattr(bands, "BAND_BYTES", request.param)
    return request.param


@pytest.fixture(params=["dispatch", "bands"])
def conv_path(request, monkeypatch):
    """Run once on the path dispatch picks and once forced onto im2col / col2im in bands."""
    if request.param == "bands":
        for name in ("conv2d_path", "conv_transpose2d_path"):
            choose = getattr(dispatch, name)
            monkeypatch.setattr(dispatch, name, lambda *args, choose=choose: "bands"
                                if choose(*args) != "reference" else "reference")
    return request.param


def ref_im2col(x, g):
    """npfcn.reference's im2col of the geometry g = (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)."""
    return R.im2col(x, g[0:2], g[2:4], g[4:6], g[6:8], g[8:10])


def reference(fn, *args):
    with backend.using("numpy"):
        return fn(*args)


CONV_CASES = [
    # N, C, O, H, W, k, stride, padding, dilation
    (1, 3, 5, 9, 7, 3, 1, 1, 1),
    (3, 4, 6, 8, 9, 3, 2, 1, 1),
    (2, 2, 3, 11, 10, 5, (2, 1), (2, 0), (1, 2)),
    (2, 5, 4, 6, 6, 1, 1, 0, 1),          # pointwise: no im2col at all
    (1, 6, 3, 5, 5, 1, 2, 0, 1),          # 1x1 but strided: im2col
    (2, 3, 4, 4, 4, 7, 1, 3, 1),          # kernel larger than the image, padded
    (1, 3, 16, 12, 12, 3, 1, 1, 1),       # >= 16 channels, many pixels: transposed GEMM
    (2, 4, 20, 9, 9, 3, 1, 1, 1),         # the same, batched
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_fast_path_matches_reference(case, dtype, block_bytes, conv_path, rng):
    N, C, O, H, W, k, s, p, d = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, k, k)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    y, cache = F.conv2d_forward(x, w, b, s, p, d)
    y_ref, cache_ref = reference(F.conv2d_forward, x, w, b, s, p, d)
    assert cache_ref[0] == "reference" and (conv_path == "dispatch" or cache[0] == "bands")
    close(y, y_ref, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = F.conv2d_backward(dy, cache)
    want = reference(F.conv2d_backward, dy, cache_ref)
    for g, r in zip(got, want):
        assert g.dtype == dtype and g.shape == r.shape
        close(g, r, dtype)


TRANSPOSED_CASES = [
    # N, Cin, Cout, H, W, k, stride, padding, output_padding
    (1, 3, 3, 4, 5, 4, 2, 0, 0),          # FCN's upscore2
    (2, 2, 3, 3, 3, 16, 8, 0, 0),         # FCN's upscore8, batched
    (3, 4, 2, 5, 4, 3, 2, 1, 1),
    (2, 3, 2, 4, 4, 3, 2, "same", 0),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", TRANSPOSED_CASES)
def test_conv_transpose2d_fast_path_matches_reference(case, dtype, block_bytes, conv_path, rng):
    N, C, O, H, W, k, s, p, op = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C, O, k, k)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    y, cache = F.conv_transpose2d_forward(x, w, b, s, p, op)
    y_ref, cache_ref = reference(F.conv_transpose2d_forward, x, w, b, s, p, op)
    assert cache_ref[0] == "reference" and (conv_path == "dispatch" or cache[0] == "bands")
    close(y, y_ref, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = F.conv_transpose2d_backward(dy, cache)
    want = reference(F.conv_transpose2d_backward, dy, cache_ref)
    for g, r in zip(got, want):
        assert g.dtype == dtype and g.shape == r.shape
        close(g, r, dtype)


@pytest.mark.parametrize("rows", [(0, 1), (2, 5), (0, 7), (6, 7)])
def test_band_columns_are_the_reference_columns(rows, rng):
    """im2col_bands copies exactly the reference's columns of rows [r0, r1), batched."""
    x = rng.standard_normal((3, 2, 13, 11))
    g = (3, 2, 2, 1, 1, 0, 1, 2, 7, 9)        # KH KW SH SW PH PW DH DW OH OW
    r0, r1 = rows
    out = np.full((2 * 3 * 2, 3 * (r1 - r0) * 9), np.nan)
    im2col_bands(x, g, rows, out)
    full = ref_im2col(x, g)[:, :, r0 * 9:r1 * 9]                   # (N, CKK, band)
    np.testing.assert_array_equal(out.reshape(12, 3, -1), full.transpose(1, 0, 2))


def test_bands_of_col2im_add_up_to_the_reference(rng):
    """col2im_bands over disjoint bands sums to the reference col2im of all rows."""
    g = (3, 3, 2, 2, 1, 1, 1, 1, 6, 5)
    N, C, H, W = 2, 3, 11, 10
    cols = rng.standard_normal((N, C * 9, 30))
    x = np.zeros((N, C, H, W))
    for r0, r1 in [(0, 2), (2, 3), (3, 6)]:
        block = np.ascontiguousarray(cols[:, :, r0 * 5:r1 * 5].transpose(1, 0, 2))
        col2im_bands(block.reshape(C * 9, -1), x, g, (r0, r1))
    close(x, R.col2im(cols, (N, C, H, W), g[0:2], g[2:4], g[4:6], g[6:8], g[8:10]), np.float64)


def test_threaded_sizes_match_reference(rng):
    """Big enough for the OpenMP branches (> 131072 elements) of im2col and col2im."""
    x = rng.standard_normal((2, 8, 64, 64)).astype(np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    y, cache = F.conv2d_forward(x, w, None, 1, 1)
    y_ref, cache_ref = reference(F.conv2d_forward, x, w, None, 1, 1)
    close(y, y_ref, np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    close(F.conv2d_backward(dy, cache)[0], reference(F.conv2d_backward, dy, cache_ref)[0],
          np.float32)


def test_workspace_never_leaks_into_results(rng):
    """A second call reuses the workspace; the first call's outputs must not change."""
    x1, x2 = rng.standard_normal((2, 1, 3, 12, 12))
    w = rng.standard_normal((4, 3, 3, 3))
    y1, cache1 = F.conv2d_forward(x1, w, None, 1, 1)
    dx1, dw1, _ = F.conv2d_backward(np.ones_like(y1), cache1)
    kept = [a.copy() for a in (y1, dx1, dw1)]
    y2, cache2 = F.conv2d_forward(x2, w, None, 1, 1)
    F.conv2d_backward(np.ones_like(y2), cache2)
    for before, after in zip(kept, (y1, dx1, dw1)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (1, 1, 3, 5), (2, 2, 5, 2)])
def test_maxpool_2x2_fast_path_matches_reference(shape, dtype, rng):
    """Values and indices exactly, with ties, NaN and ceil-mode edge windows."""
    x = rng.integers(-3, 3, shape).astype(dtype)     # small integers: many ties
    x.flat[::7] = np.nan
    for ceil_mode in (False, True):
        y, idx, _ = F.max_pool2d_forward(x, 2, 2, 0, 1, ceil_mode)
        y_ref, idx_ref, _ = reference(F.max_pool2d_forward, x, 2, 2, 0, 1, ceil_mode)
        np.testing.assert_array_equal(idx, idx_ref)
        np.testing.assert_array_equal(y, y_ref)      # NaN == NaN for assert_array_equal


def test_relu_caches_its_output_and_propagates_nan(rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    y, cache = F.relu_forward(x)
    assert y.dtype == np.float32
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 0 and y[0, 0, 0, 2] == 0
    np.testing.assert_array_equal(y[~np.isnan(x)], np.where(x > 0, x, 0)[~np.isnan(x)])
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = F.relu_backward(dy, cache)
    # The gradient passes exactly where x > 0 (not at NaN, 0 or negatives).
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))
    assert dx.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [20, 300_000])     # one thread / above the OpenMP threshold
def test_relu_c_kernel_equals_the_numpy_reference_bit_for_bit(dtype, size, rng):
    """csrc/relu.c against np.maximum / np.where, with NaN, +-inf, +-0 in x and in dy."""
    if not backend.c_available():
        pytest.skip("C kernel not built")
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45], dtype=dtype)
    x = rng.standard_normal(size).astype(dtype)
    x[:7] = specials
    dy = rng.standard_normal(size).astype(dtype)
    dy[:14] = np.tile(specials, 2)[::-1]            # NaN/inf gradients where x is negative too
    with backend.using("c"):
        y, cache = F.relu_forward(x)
        dx = F.relu_backward(dy, cache)
    with backend.using("numpy"):
        y_ref, cache_ref = F.relu_forward(x)
        dx_ref = F.relu_backward(dy, cache_ref)
    np.testing.assert_array_equal(y, y_ref)         # NaN == NaN here
    np.testing.assert_array_equal(np.signbit(y), np.signbit(y_ref))
    np.testing.assert_array_equal(dx, dx_ref)


@pytest.mark.parametrize("transposed", [False, True])
def test_weight_gradient_is_added_into_dw_into(transposed, block_bytes, conv_path, rng):
    """dw_into receives start + dw (what a layer's grads accumulate), even in column blocks."""
    x = rng.standard_normal((2, 3, 7, 6))
    if transposed:
        w = rng.standard_normal((3, 4, 4, 4))
        forward, backward = F.conv_transpose2d_forward, F.conv_transpose2d_backward
        y, cache = forward(x, w, None, 2)
    else:
        w = rng.standard_normal((4, 3, 3, 3))
        forward, backward = F.conv2d_forward, F.conv2d_backward
        y, cache = forward(x, w, None, 1, 1)
    dy = rng.standard_normal(y.shape)
    _, dw, _ = backward(dy, cache)
    start = rng.standard_normal(w.shape)
    target = start.copy()
    _, returned, _ = backward(dy, forward(x, w, None, *((2,) if transposed else (1, 1)))[1],
                              dw_into=target)
    assert returned.base is target or returned is target
    close(target, start + dw, np.float64)


def test_big_weight_gradient_in_column_blocks(monkeypatch, rng):
    """A weight gradient too large to copy per thread (fc6's) is added into dw a band
    of columns at a time."""
    monkeypatch.setattr(bands, "BAND_BYTES", 256)
    monkeypatch.setattr(gemm, "PARALLEL_DW_BYTES", 256)
    calls = []
    real = gemm._add_outer
    monkeypatch.setattr(gemm, "_add_outer", lambda *a: calls.append(1) or real(*a))
    x = rng.standard_normal((1, 16, 5, 5))
    w = rng.standard_normal((80, 16, 3, 3))          # dw: 80 x 144, far more than 256 bytes
    y, cache = F.conv2d_forward(x, w, None, 1, 0)
    assert cache[0] == "bands"
    dy = rng.standard_normal(y.shape)
    dw = F.conv2d_backward(dy, cache)[1]
    _, cache_ref = reference(F.conv2d_forward, x, w, None, 1, 0)
    close(dw, reference(F.conv2d_backward, dy, cache_ref)[1], np.float64)
    assert calls
