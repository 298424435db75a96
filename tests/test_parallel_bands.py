"""Layers whose bands run side by side on the threads (npfcn.kernels.threads) equal the
reference: the banded im2col convolution and the Winograd bands of a small layer.
Bands are made small so that there are many (float64, 2 threads; tolerance 1e-12
relative to the output's scale: float64 rounding of sums of ~800 terms)."""
import numpy as np
import pytest

from npfcn import functional as F
from npfcn import reference
from npfcn.kernels import backend, bands, direct, dispatch, gemm, winograd

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


@pytest.fixture
def two_threads():
    lib = backend.lib()
    before = backend.num_threads()
    lib.npfcn_set_num_threads(2)
    yield
    lib.npfcn_set_num_threads(before)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, np.abs(b).max()))


def test_banded_convolution_in_parallel_bands(two_threads, monkeypatch):
    row_bytes = 8 * 49 * 2 * 33 * 8                               # K * N * OW * itemsize
    monkeypatch.setattr(bands, "BAND_BYTES", 8 * row_bytes)        # bands of 8 rows: 4 bands
    calls = []
    real_partial = gemm._thread_partial
    monkeypatch.setattr(gemm, "_thread_partial", lambda *a: calls.append(1) or real_partial(*a))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 30, 33))
    w = rng.standard_normal((65, 8, 7, 7))             # > 64 channels: not the direct loop
    b = rng.standard_normal(65)
    g = (7, 7, 1, 1, 3, 3, 1, 1, 30, 33)
    assert dispatch.conv2d_path(x.shape, w.shape, g) == "bands"
    assert len(bands.band_ranges(30, row_bytes)) == 4
    y, cache = F.conv2d_forward(x, w, b, padding=3)
    y_ref, cache_ref = reference.conv2d_forward(x, w, b, padding=3)
    close(y, y_ref)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(F.conv2d_backward(dy, cache), reference.conv2d_backward(dy, cache_ref)):
        close(got, want)
    assert calls            # the weight gradient was summed in per-thread copies


def test_a_small_winograd_layer_in_parallel_bands(two_threads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 16, 32, 32))
    w = rng.standard_normal((16, 16, 3, 3))
    assert len(winograd.tile_row_bands(4, 16, 16, 8, 8, 8, winograd.F4)) >= 4
    for path in ("winograd4", "winograd2"):
        forward, grads = dispatch.CONV2D[path]
        g = (3, 3, 1, 1, 1, 1, 1, 1, 32, 32)
        y = forward(x, w, None, g, False)
        y_ref, cache_ref = reference.conv2d_forward(x, w, None, padding=1)
        close(y, y_ref)
        dy = rng.standard_normal(y.shape)
        dw2 = np.zeros((16, 16 * 9))
        dx, _ = grads(dy, x, w, False, g, None, dw2)
        dx_ref, dw_ref, _ = reference.conv2d_backward(dy, cache_ref)
        close(dx, dx_ref)
        close(dw2.reshape(w.shape), dw_ref)


def test_bands_are_cut_finer_only_when_each_stays_wide(two_threads):
    # SegNet-Basic's 64 -> 64 7x7 at 45x60: 3 bands of ~16 MB become 4 (two per thread)
    ranges = gemm._band_ranges(45, 64 * 49 * 60 * 4, 60)
    assert len(ranges) == 4 and ranges[0][0] == 0 and ranges[-1][1] == 45
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    # fc6 on an 8x8 grid: bands of 2 rows would be 16 columns wide - kept whole
    assert gemm._band_ranges(8, 25088 * 8 * 4, 8) == [(0, 8)]


@pytest.mark.parametrize("channels, flipped", [(16, True), (8, False)])
def test_input_gradient_as_a_flipped_convolution(channels, flipped, two_threads, monkeypatch):
    """From 16 input channels (and no more output ones: fc6's 512 -> 4096 keeps col2im)
    the bands path takes dx as a convolution of dy with the turned kernel (padding
    KH-1-PH) instead of col2im; both equal the reference, and a
    padding of 0 (a 'valid' convolution: dx padded by KH-1) too."""
    monkeypatch.setattr(bands, "BAND_BYTES", 16 << 10)           # many bands, run in parallel
    rng = np.random.default_rng(2)
    for padding in (2, 0):
        x = rng.standard_normal((2, channels, 13, 17))
        w = rng.standard_normal((5, channels, 5, 5))
        g = (5, 5, 1, 1, padding, padding, 1, 1, 13 + 2 * padding - 4, 17 + 2 * padding - 4)
        assert (gemm.flipped_conv_for_dx(2, channels, 5, g) is not None) == flipped
        y_ref, cache_ref = reference.conv2d_forward(x, w, None, padding=padding)
        dy = rng.standard_normal(y_ref.shape)
        dw2 = np.zeros((5, channels * 25))
        dx, _ = gemm.banded_conv_grads(dy, x, w, False, g, None, dw2)
        dx_ref, dw_ref, _ = reference.conv2d_backward(dy, cache_ref)
        close(dx, dx_ref)
        close(dw2.reshape(w.shape), dw_ref)


@pytest.mark.parametrize("width", sorted({32, direct.vector_bytes() or 32}))
def test_large_kernels_with_full_rows_take_the_direct_loop(width, two_threads):
    """A 7x7 layer of at most 64 channels runs forward and dx in the direct loop, dw in
    direct.c's 7-wide loop (AVX-512: width 64; 4 output channels = a block of 3 and a
    remainder of 1) or by im2col + matmul (width 32); with bias and a fused ReLU it
    equals the reference.  fc6's 7x7 (more channels) stays on bands."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 9, 60))
    w = rng.standard_normal((4, 6, 7, 7))
    b = rng.standard_normal(4)
    assert dispatch.conv2d_path(x.shape, w.shape, (7, 7, 1, 1, 3, 3, 1, 1, 9, 60)) == "direct_large"
    assert dispatch.conv2d_path((2, 32, 9, 9), (256, 32, 7, 7), (7, 7, 1, 1, 0, 0, 1, 1, 3, 3)) == "bands"
    before = direct.vector_bytes()
    try:
        assert direct.vector_bytes(width) == width
        y, cache = F.conv2d_forward(x, w, b, padding=3, relu=True)
        assert cache[0] == "direct_large"
        dy = rng.standard_normal(y.shape)
        dx, dw, db = F.conv2d_backward(dy, cache)
    finally:
        direct.vector_bytes(before)
    y_ref, cache_ref = reference.conv2d_forward(x, w, b, padding=3)
    y_ref = np.maximum(y_ref, 0)
    close(y, y_ref)
    dx_ref, dw_ref, db_ref = reference.conv2d_backward(dy * (y_ref > 0), cache_ref)
    for got, want in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        close(got, want)


def test_fc6_keeps_col2im_for_dx():
    g = (7, 7, 1, 1, 0, 0, 1, 1, 8, 8)
    assert gemm.flipped_conv_for_dx(1, 512, 4096, g) is None
    assert gemm.flipped_conv_for_dx(1, 64, 64, g) is not None


def test_a_small_map_of_many_channels_keeps_col2im_for_dx():
    """VGG's conv5 on 14x14: turning 512 x 512 x 3x3 weights would copy more than the
    196 output columns col2im sums; from 4 images (784 columns) the flip pays again."""
    g = (3, 3, 1, 1, 1, 1, 1, 1, 14, 14)
    assert gemm.flipped_conv_for_dx(1, 512, 512, g) is None
    assert gemm.flipped_conv_for_dx(4, 512, 512, g) is not None
