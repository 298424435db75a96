"""im2col and col2im in C: whole grids, or a band of grid rows at a time with all
images side by side.

``im2col_grid`` / ``col2im_grid`` equal ``npfcn.reference.im2col.im2col`` /
``col2im`` (exactly: copies, and col2im adds in the same order).
``im2col_bands`` / ``col2im_bands`` equal them restricted to the grid rows
``[r0, r1)`` of a band, in the layout a batched matrix product wants::

    cols[(c*KH + i)*KW + j, n*B + (oy - r0)*OW + ox]
        = x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]      (0 outside the image)

with ``B = (r1 - r0)*OW``: row ``k`` of the band's columns is row ``k`` of the
reference's ``cols[n]``, columns ``r0*OW .. r1*OW``, for every image n in turn.

Why bands: the columns of a whole layer are KH*KW times larger than its input
(410 MB for FCN-8s's conv1_2 on a 224x224 image), so a layer builds them a band
of about BAND_BYTES at a time into a reused workspace: memory stays bounded, a
fresh buffer's page faults are paid once, and each band is ONE matrix product
for the whole batch instead of one skinny product per image.

``g`` is the geometry of the whole grid, ``(KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)``;
the grid size (OH, OW) is given, not derived, so that the same functions serve
convolution and transposed convolution (whose image is larger than its grid).
"""
import numpy as np

from . import backend, boundary

BAND_BYTES = 16 << 20   # the size of one band's columns


def band_ranges(rows, row_bytes):
    """Split ``rows`` grid rows into bands ``[(r0, r1), ...]`` of about BAND_BYTES."""
    step = max(1, BAND_BYTES // max(1, row_bytes))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def check_geometry(what, g):
    """g = (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW): kernel, stride, dilation and grid
    positive, padding non-negative (the C loops assume it)."""
    if len(g) != 10 or min(g[0:4] + g[6:10]) < 1 or min(g[4:6]) < 0:
        raise ValueError(f"{what}: kernel, stride, dilation and grid must be positive and "
                         f"padding non-negative, got (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW) = {g}")


def _check(what, image, cols, g, rows):
    """The sizes the C loops rely on; returns (N, C, H, W) and the band (r0, r1)."""
    check_geometry(what, g)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    r0, r1 = rows
    if not 0 <= r0 < r1 <= oh:
        raise ValueError(f"{what}: grid rows {rows} are not a band of the {oh} rows of the grid")
    if getattr(image, "ndim", 0) != 4:
        raise ValueError(f"{what}: the image must be (N, C, H, W)")
    N, C, H, W = image.shape
    boundary.check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), what)
    boundary.check(what, image.dtype, {"image": (image, (N, C, H, W)),
                                       "cols": (cols, (C * kh * kw, N * (r1 - r0) * ow))})
    return N, C, H, W, r0, r1


def im2col_bands(x, g, rows, out):
    """Write the columns of grid rows ``rows = (r0, r1)`` of every image into ``out``.

    x: (N, C, H, W); out: (C*KH*KW, N*(r1-r0)*OW) of x's dtype.  Returns ``out``.
    """
    N, C, H, W, r0, r1 = _check("im2col band", x, out, g, rows)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    band = (r1 - r0) * ow
    # Rows r0.. of the grid are the grid of an image shifted up by r0*SH rows,
    # i.e. a top padding of PH - r0*SH (negative is fine: C checks every row).
    fn = getattr(backend.lib(), f"im2col_strided_{boundary.suffix(x.dtype)}")
    fn(boundary.pointer(x), boundary.pointer(out), N, C, H, W, kh, kw, sh, sw,
       ph - r0 * sh, pw, dh, dw, r1 - r0, ow, band, N * band)
    return out


def col2im_bands(cols, x, g, rows):
    """ADD the columns of grid rows ``rows`` (the layout of ``im2col_bands``) into ``x``.

    cols: (C*KH*KW, N*(r1-r0)*OW); x: (N, C, H, W), changed in place and returned.
    """
    N, C, H, W, r0, r1 = _check("col2im band", x, cols, g, rows)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    band = (r1 - r0) * ow
    fn = getattr(backend.lib(), f"col2im_strided_{boundary.suffix(x.dtype)}")
    fn(boundary.pointer(cols), boundary.pointer(x), N, C, H, W, kh, kw, sh, sw,
       ph - r0 * sh, pw, dh, dw, r1 - r0, ow, band, N * band)
    return x


def im2col_grid(x, g):
    """The columns of the whole grid, per image: x: (N, C, H, W) -> (N, C*KH*KW, OH*OW)."""
    check_geometry("im2col", g)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    N, C, H, W = x.shape
    boundary.check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), "im2col")
    boundary.check_size(N * C * kh * kw * oh * ow, "im2col")
    cols = np.empty((N, C * kh * kw, oh * ow), dtype=x.dtype)
    boundary.check("im2col", x.dtype, {"image": (x, (N, C, H, W)), "cols": (cols, cols.shape)})
    fn = getattr(backend.lib(), f"im2col_{boundary.suffix(x.dtype)}")
    fn(boundary.pointer(x), boundary.pointer(cols), N, C, H, W, *g)
    return cols


def col2im_grid(cols, image_shape, g):
    """The adjoint of ``im2col_grid``: cols (N, C*KH*KW, OH*OW) summed into (N, C, H, W)."""
    check_geometry("col2im", g)
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    N, C, H, W = image_shape
    boundary.check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), "col2im")
    boundary.check_size(N * C * H * W, "col2im output")
    x = np.zeros((N, C, H, W), dtype=cols.dtype)
    boundary.check("col2im", cols.dtype, {"cols": (cols, (N, C * kh * kw, oh * ow)),
                                          "image": (x, x.shape)})
    fn = getattr(backend.lib(), f"col2im_{boundary.suffix(cols.dtype)}")
    fn(boundary.pointer(cols), boundary.pointer(x), N, C, H, W, *g)
    return x
