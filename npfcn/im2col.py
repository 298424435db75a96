"""im2col and col2im: the NumPy reference and the dispatch to the C kernel.

im2col copies every receptive field of ``x`` into a column so that a
convolution becomes one matrix product::

    x    : (N, C, H, W)
    cols : (N, C*KH*KW, OH*OW)
    cols[n, (c*KH + i)*KW + j, oy*OW + ox] = x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]

(zero where that position falls outside the image).  col2im is its adjoint:
it adds every column entry back onto the pixel it was read from, so
``<im2col(x), c> == <x, col2im(c)>``.  The convolution's backward pass and the
transposed convolution's forward pass are both col2im.

The grid size ``(OH, OW)`` is an argument rather than derived from the other
numbers, so that one function serves convolution, transposed convolution
(whose ``output_padding`` makes the image larger than the grid needs) and the
asymmetric TensorFlow-style ``"same"`` padding (only the top/left padding is
given; the bottom/right follows from the grid).
"""
import numpy as np

from . import backend
from ._checks import as_float_tensor, check_extent, check_size, int_pair


def _geometry(kernel_size, stride, padding, dilation, out_size):
    """Validated ``(KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)``."""
    kh, kw = int_pair(kernel_size, "kernel_size", 1)
    sh, sw = int_pair(stride, "stride", 1)
    ph, pw = int_pair(padding, "padding", 0)
    dh, dw = int_pair(dilation, "dilation", 1)
    oh, ow = int_pair(out_size, "out_size", 1)
    return kh, kw, sh, sw, ph, pw, dh, dw, oh, ow


def _is_identity(H, W, g):
    """A 1x1 kernel at stride 1 without padding: the columns are the image itself.

    The stride must be checked too: with an explicit grid of H x W, a 1x1 kernel
    at stride 2 reads every other pixel and then zeros, not the image.
    """
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    return (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and (oh, ow) == (H, W)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """Columns of every receptive field.

    x: (N, C, H, W) float32/float64.  Returns cols: (N, C*KH*KW, OH*OW) of x's dtype.
    ``out_size`` (OH, OW) defaults to the convolution output size.
    """
    x = as_float_tensor(x, "x")
    N, C, H, W = x.shape
    if out_size is None:
        out_size = conv_output_size((H, W), kernel_size, stride, padding, dilation)
    g = _geometry(kernel_size, stride, padding, dilation, out_size)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), "im2col")
    if _is_identity(H, W, g):
        return x.reshape(N, C, H * W)
    check_size(N * C * kh * kw * oh * ow, "im2col")
    if backend.active() == "c":
        cols = np.empty((N, C * kh * kw, oh * ow), dtype=x.dtype)
        ffi, lib = backend.kernels()
        fn = lib.im2col_f32 if x.dtype == np.float32 else lib.im2col_f64
        fn(backend.pointer(x), backend.pointer(cols), N, C, H, W, *g)
        return cols
    return im2col_numpy(x, *g)


def col2im(cols, image_shape, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """Sum columns back into an image (the adjoint of ``im2col``).

    cols: (N, C*KH*KW, OH*OW); image_shape: (N, C, H, W).  Returns x: (N, C, H, W).
    """
    cols = as_float_tensor(cols, "cols", ndim=3)
    N, C, H, W = _image_shape(image_shape)
    if out_size is None:
        out_size = conv_output_size((H, W), kernel_size, stride, padding, dilation)
    g = _geometry(kernel_size, stride, padding, dilation, out_size)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), "col2im")
    expected = (N, C * kh * kw, oh * ow)
    if cols.shape != expected:
        raise ValueError(
            f"cols has shape {cols.shape} but image {(N, C, H, W)} with a {kh}x{kw} kernel "
            f"on a {oh}x{ow} grid needs {expected}"
        )
    if _is_identity(H, W, g):
        return cols.reshape(N, C, H, W).copy()
    check_size(N * C * H * W, "col2im output")
    if backend.active() == "c":
        x = np.zeros((N, C, H, W), dtype=cols.dtype)
        ffi, lib = backend.kernels()
        fn = lib.col2im_f32 if cols.dtype == np.float32 else lib.col2im_f64
        fn(backend.pointer(cols), backend.pointer(x), N, C, H, W, *g)
        return x
    return col2im_numpy(cols, (N, C, H, W), *g)


# --- row blocks in the batched layout (the fast path of npfcn.functional) -------------
# A layer's matrix product runs over a block of grid rows [r0, r1) at a time, for all
# images at once, with the columns laid out (C*KH*KW, N, rows*OW):
#     cols[(c*KH + i)*KW + j, n, (oy - r0)*OW + ox] = x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]
# Blocks bound the memory (columns can be KH*KW times larger than the image) and let
# one workspace be reused; the layout makes the product one GEMM over the whole batch.
# Callers pass geometry already validated for the whole grid; a block lies inside it.

def im2col_rows(x, g, rows, out):
    """Columns of grid rows ``rows = (r0, r1)`` of every image, written into ``out``.

    x: (N, C, H, W) C-contiguous; g: the ``(KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)``
    tuple of the whole grid; out: C-contiguous (C*KH*KW, N*(r1-r0)*OW) of x's dtype.
    Returns ``out``.
    """
    N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, r0, r1 = _check_rows(x, out, g, rows)
    block = (r1 - r0) * ow
    if backend.active() == "c":
        _, lib = backend.kernels()
        fn = lib.im2col_strided_f32 if x.dtype == np.float32 else lib.im2col_strided_f64
        # Rows r0.. of the grid are the grid of an image shifted up by r0*SH rows,
        # i.e. a top padding of PH - r0*SH (negative is fine: C checks every row).
        fn(backend.pointer(x), backend.pointer(out), N, C, H, W, kh, kw, sh, sw,
           ph - r0 * sh, pw, dh, dw, r1 - r0, ow, block, N * block)
        return out
    full = im2col_numpy(x, *g)[:, :, r0 * ow:r1 * ow]            # (N, CKK, block)
    out.reshape(C * kh * kw, N, block)[...] = full.transpose(1, 0, 2)
    return out


def col2im_rows(cols, x, g, rows):
    """Add columns of grid rows ``rows`` (layout of ``im2col_rows``) into ``x`` in place.

    cols: C-contiguous (C*KH*KW, N*(r1-r0)*OW); x: C-contiguous (N, C, H, W).
    """
    N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, r0, r1 = _check_rows(x, cols, g, rows)
    block = (r1 - r0) * ow
    if backend.active() == "c":
        _, lib = backend.kernels()
        fn = lib.col2im_strided_f32 if x.dtype == np.float32 else lib.col2im_strided_f64
        fn(backend.pointer(cols), backend.pointer(x), N, C, H, W, kh, kw, sh, sw,
           ph - r0 * sh, pw, dh, dw, r1 - r0, ow, block, N * block)
        return x
    full = np.zeros((N, C * kh * kw, oh * ow), dtype=x.dtype)
    full[:, :, r0 * ow:r1 * ow] = cols.reshape(C * kh * kw, N, block).transpose(1, 0, 2)
    x += col2im_numpy(full, x.shape, *g)
    return x


def _check_rows(x, cols, g, rows):
    """Check what the row-block kernels rely on; returns (N, C, H, W, *g, r0, r1).

    Explicit checks, not ``assert``: asserts vanish under ``python -O``, and a
    buffer of the wrong size would then be written out of bounds by C.
    """
    for name, a in (("x", x), ("cols", cols)):
        if not (isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64)
                and a.flags.c_contiguous):
            raise ValueError(f"{name} must be a C-contiguous float32/float64 ndarray")
    if x.ndim != 4 or cols.dtype != x.dtype:
        raise ValueError(f"x must be (N, C, H, W) and cols of its dtype, got {x.shape} {x.dtype} "
                         f"and {cols.dtype}")
    N, C, H, W = x.shape
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = _geometry(*(tuple(g[i:i + 2]) for i in range(0, 10, 2)))
    check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), "im2col rows")
    r0, r1 = (int(r) for r in rows)
    if not 0 <= r0 < r1 <= oh:
        raise ValueError(f"grid rows {rows} are not a block of the {oh} rows of the grid")
    if cols.shape != (C * kh * kw, N * (r1 - r0) * ow):
        raise ValueError(f"cols has shape {cols.shape}, expected {(C * kh * kw, N * (r1 - r0) * ow)}")
    return N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, r0, r1


def conv_output_size(in_size, kernel_size, stride=1, padding=0, dilation=1, ceil_mode=False):
    """PyTorch's output size of a convolution or pooling window, per spatial axis.

    ``floor((H + 2*PH - DH*(KH-1) - 1) / SH) + 1`` (ceil instead of floor with
    ``ceil_mode``, where a last window that would start in the bottom/right
    padding is dropped, as PyTorch does).  Raises ValueError when the kernel is
    larger than the padded input.
    """
    sizes = []
    for n, k, s, p, d, axis in zip(in_size, int_pair(kernel_size, "kernel_size", 1),
                                   int_pair(stride, "stride", 1),
                                   int_pair(padding, "padding", 0),
                                   int_pair(dilation, "dilation", 1), ("height", "width")):
        span = d * (k - 1) + 1
        if n + 2 * p < span:
            raise ValueError(
                f"kernel (extent {span} with dilation {d}) is larger than the padded input "
                f"{axis} {n} + 2*{p}"
            )
        if ceil_mode:
            out = -(-(n + 2 * p - span) // s) + 1
            if (out - 1) * s >= n + p:
                out -= 1
        else:
            out = (n + 2 * p - span) // s + 1
        sizes.append(out)
    return tuple(sizes)


def _image_shape(shape):
    if len(shape) != 4:
        raise ValueError(f"image_shape must be (N, C, H, W), got {tuple(shape)}")
    for v in shape:
        # 0 is allowed: an empty batch goes through forward, so backward must take it too.
        if int(v) != v or v < 0:
            raise ValueError(f"image_shape must hold non-negative ints, got {tuple(shape)}")
    return tuple(int(v) for v in shape)


# --- the NumPy reference -------------------------------------------------------------
# One strided slice per kernel offset (i, j): readable, vectorised over the
# whole batch, and obviously the same sum as the C loops.

def _padded_extent(n, k, s, p, d, o):
    """Bottom/right padding so that all ``o`` windows fit in the padded axis."""
    need = (o - 1) * s + (k - 1) * d + 1
    return max(0, need - n - p)


def im2col_numpy(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Reference im2col. x: (N, C, H, W) -> cols: (N, C*KH*KW, OH*OW)."""
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0),
                    (ph, _padded_extent(H, kh, sh, ph, dh, oh)),
                    (pw, _padded_extent(W, kw, sw, pw, dw, ow))))
    cols = np.empty((N, C, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            cols[:, :, i, j] = xp[:, :, top:top + (oh - 1) * sh + 1:sh,
                                  left:left + (ow - 1) * sw + 1:sw]
    return cols.reshape(N, C * kh * kw, oh * ow)


def col2im_numpy(cols, image_shape, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Reference col2im. cols: (N, C*KH*KW, OH*OW) -> x: (N, C, H, W), summing overlaps."""
    N, C, H, W = image_shape
    xp = np.zeros((N, C, H + ph + _padded_extent(H, kh, sh, ph, dh, oh),
                   W + pw + _padded_extent(W, kw, sw, pw, dw, ow)), dtype=cols.dtype)
    cols6 = cols.reshape(N, C, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            xp[:, :, top:top + (oh - 1) * sh + 1:sh,
               left:left + (ow - 1) * sw + 1:sw] += cols6[:, :, i, j]
    return np.ascontiguousarray(xp[:, :, ph:ph + H, pw:pw + W])
