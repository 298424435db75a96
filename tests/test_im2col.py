"""im2col / col2im (npfcn.functional.im2col / col2im): the C kernel
(npfcn/kernels/bands.py, csrc/im2col.c) against the NumPy reference
(npfcn.reference.im2col), against a naive loop written here from the formula, and
col2im as the adjoint of im2col.

The geometry is drawn by hypothesis: kernel sizes, strides, paddings (also larger
than the kernel), dilations, tiny and odd image sizes, an optional grid larger
than the convolution needs (as the transposed convolution uses), float32 and
float64.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfcn.kernels import backend
from npfcn.functional import col2im, conv_output_size, im2col

needs_c = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


def examples(n):
    """``n`` examples under the default profile, scaled up by the thorough profile."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 25))


@st.composite
def geometries(draw):
    """A valid (x shape, kernel, stride, padding, dilation, out_size) configuration."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 5)), draw(st.integers(0, 5))   # may exceed the kernel
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # The padded image must hold one dilated kernel: H + 2*PH >= DH*(KH-1) + 1.
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 5))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 5))
    n, c = draw(st.integers(0, 2)), draw(st.integers(1, 3))   # n = 0: an empty batch
    oh, ow = conv_output_size((h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    if draw(st.booleans()):   # a larger grid: windows that run off the bottom/right
        oh, ow = oh + draw(st.integers(0, 2)), ow + draw(st.integers(0, 2))
    return dict(shape=(n, c, h, w), kernel_size=(kh, kw), stride=(sh, sw),
                padding=(ph, pw), dilation=(dh, dw), out_size=(oh, ow))


dtypes = st.sampled_from([np.float32, np.float64])


def geometry_args(g):
    return g["kernel_size"], g["stride"], g["padding"], g["dilation"], g["out_size"]


def naive_im2col(x, kernel_size, stride, padding, dilation, out_size):
    """Straight from the formula, one element at a time:
    cols[n, (c*KH + i)*KW + j, oy*OW + ox] = x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = (kernel_size, stride, padding,
                                                          dilation, out_size)
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


def random_image(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def random_cols(x_shape, g, dtype, seed=1):
    (kh, kw), (oh, ow) = g["kernel_size"], g["out_size"]
    n, c = x_shape[:2]
    return np.random.default_rng(seed).standard_normal((n, c * kh * kw, oh * ow)).astype(dtype)


@needs_c
@examples(150)
@given(g=geometries(), dtype=dtypes)
def test_c_and_numpy_im2col_col2im_agree_exactly(g, dtype):
    # Both paths copy the same elements and add col2im's overlaps in the same
    # order (kernel offset by kernel offset), so they must agree bit for bit.
    x = random_image(g["shape"], dtype)
    cols = random_cols(g["shape"], g, dtype)
    results = {}
    for name in ("c", "numpy"):
        with backend.using(name):
            results[name] = (im2col(x, *geometry_args(g)),
                             col2im(cols, g["shape"], *geometry_args(g)))
    for got, ref in zip(results["c"], results["numpy"]):
        assert got.dtype == ref.dtype == dtype
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", ["c", "numpy"])
@examples(60)
@given(g=geometries(), dtype=dtypes)
def test_im2col_matches_naive_loop(name, g, dtype):
    if name == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    x = random_image(g["shape"], dtype)
    with backend.using(name):
        got = im2col(x, *geometry_args(g))
    # A copy: exact equality.
    np.testing.assert_array_equal(got, naive_im2col(x, *geometry_args(g)))


@pytest.mark.parametrize("name", ["c", "numpy"])
@examples(100)
@given(g=geometries())
def test_col2im_is_adjoint_of_im2col(name, g):
    if name == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    x = random_image(g["shape"], np.float64, seed=2)
    c = random_cols(g["shape"], g, np.float64, seed=3)
    with backend.using(name):
        lhs = np.vdot(im2col(x, *geometry_args(g)), c)
        rhs = np.vdot(x, col2im(c, g["shape"], *geometry_args(g)))
    # Both sides sum the same products x[p]*c[q] in different orders, so they
    # differ only by rounding: relative to the sum of |products| that is a few
    # ulps of float64 per term, far below 1e-12.
    scale = np.vdot(np.abs(im2col(np.abs(x), *geometry_args(g))), np.abs(c))
    assert abs(lhs - rhs) <= 1e-12 * max(scale, 1e-300)


@pytest.mark.parametrize("name", ["c", "numpy"])
@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed"])
def test_non_contiguous_input_gives_the_contiguous_result(name, layout):
    if name == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    base = random_image((2, 3, 14, 12), np.float64)
    if layout == "fortran":
        x = np.asfortranarray(base[:, :, :7, :6])
    elif layout == "strided":
        x = base[:, :, ::2, ::2]
    else:   # an (N, C, W, H) array viewed as (N, C, H, W)
        x = np.ascontiguousarray(base[:, :, :6, :7].transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not x.flags.c_contiguous
    args = dict(kernel_size=3, stride=2, padding=1, dilation=1)
    with backend.using(name):
        got = im2col(x, **args)
        ref = im2col(np.ascontiguousarray(x), **args)
        cols = np.asfortranarray(got)
        back = col2im(cols, x.shape, **args)
        back_ref = col2im(np.ascontiguousarray(cols), x.shape, **args)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(back, back_ref)


def test_identity_kernel_cols_are_the_image():
    # A 1x1 kernel at stride 1 without padding: cols is x reshaped.
    x = random_image((2, 3, 4, 5), np.float32)
    np.testing.assert_array_equal(im2col(x, 1), x.reshape(2, 3, 20))
    np.testing.assert_array_equal(col2im(x.reshape(2, 3, 20), x.shape, 1), x)


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, stride=1, padding=1, dilation=1),
    dict(kernel_size=(4, 3), stride=(2, 3), padding=(3, 0), dilation=(1, 2)),
])
def test_threaded_sizes_agree_exactly(dtype, geometry):
    # The hypothesis shapes are tiny, below the size where the C kernel splits the
    # (n, c) planes across OpenMP threads (32768 column entries); this one is above.
    x = random_image((3, 8, 40, 37), dtype)
    with backend.using("c"):
        cols_c = im2col(x, **geometry)
        back_c = col2im(cols_c, x.shape, **geometry)
    assert cols_c.size > 32768
    with backend.using("numpy"):
        np.testing.assert_array_equal(cols_c, im2col(x, **geometry))
        np.testing.assert_array_equal(back_c, col2im(cols_c, x.shape, **geometry))
