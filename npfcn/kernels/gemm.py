"""Convolution and transposed convolution as matrix products (the C backend's general paths).

Equal, to float rounding, ``npfcn.reference.conv.conv2d_forward`` / ``conv2d_backward``
and ``conv_transpose2d_forward`` / ``conv_transpose2d_backward``: the same im2col +
matmul and matmul + col2im, but with the columns built a band of grid rows at a
time in C (``npfcn.kernels.bands``) into a reused workspace, all images of the
batch in one product.

* ``pointwise_conv``: a 1x1 kernel at stride 1 without padding (fc7, the score
  layers): the columns are the image itself, so there is no im2col at all.
* ``banded_conv``: every other convolution the direct and Winograd paths leave.
* ``banded_transposed_conv``: transposed convolutions the sub-pixel path leaves.

Every core has the signatures ``npfcn.kernels.dispatch`` expects:
``core(x, w, b, g, relu) -> y`` and ``core_grads(dy, x, w, has_bias, g, relu_y, dw2,
input_gradient=True) -> (dx, db)`` for convolution, where ``dw2`` is the (rows, cols)
view of the array the weight gradient is ADDED into, ``relu_y`` is the output of a
fused ReLU (its mask) or None, and with ``input_gradient`` False dx may be skipped
(None; a network's first layer: nothing needs the gradient of the image);
``g = (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)``.
"""
import threading

import numpy as np

from . import backend, bands, relu as relu_kernel, threads
from .workspace import workspace


def _batch_columns(a, p0, p1, name):
    """Columns [p0, p1) of every image of a: (N, C, P) as one (C, N*(p1-p0)) matrix.

    With one image that is a view (BLAS takes the row stride); otherwise a copy
    into a workspace.
    """
    N, C, _ = a.shape
    if N == 1:
        return a[0, :, p0:p1]
    out = workspace.get(name, (C, N * (p1 - p0)), a.dtype)
    out.reshape(C, N, p1 - p0)[...] = a[:, :, p0:p1].transpose(1, 0, 2)
    return out


def _matmul_into(a, b, y, p0, p1):
    """y[:, :, p0:p1] = a @ b per image, where b: (K, N*(p1-p0)) is batched (see above).

    One image: the product is written straight into y (BLAS takes the row stride).
    Several: one product for the whole batch, then each image's part is copied to
    its place; the copy moves contiguous runs of p1-p0 values.  (The product is never
    computed transposed and copied back: NumPy's transposing copy of a tall matrix is
    slower than the GEMM itself.)
    """
    N, O, _ = y.shape
    width = p1 - p0
    if N == 1:
        np.matmul(a, b, out=y[0, :, p0:p1])
    else:
        product = workspace.get("product", (O, N * width), y.dtype)
        np.matmul(a, b, out=product)
        y[:, :, p0:p1] = product.reshape(O, N, width).transpose(1, 0, 2)


def _add_outer(dw, a, b):
    """dw += a @ b.T for a: (O, P), b: (K, P) - a weight gradient summed over pixels.

    A big result (fc6's is 4096 x 25088, 411 MB) is done a band of columns at a
    time through a workspace: no parameter-sized temporary per step, and each
    addition runs over contiguous rows.
    """
    O, K = dw.shape
    step = max(1, bands.BAND_BYTES // (O * dw.itemsize))
    for k0 in range(0, K, step):
        k1 = min(K, k0 + step)
        part = workspace.get("outer", (O, k1 - k0), dw.dtype)
        np.matmul(a, b[k0:k1].T, out=part)
        dw[:, k0:k1] += part


def channel_sums(dy):
    """dy: (N, C, H, W) -> (C,): sum over everything but the channel - a bias gradient.

    As a matrix-vector product with ones: BLAS streams the rows with vector loads
    on every core, 3-4x faster than ``dy.sum(axis=(0, 2, 3))`` (which walks the
    planes with strides) on FCN's 326x326 maps.
    """
    N, C, H, W = dy.shape
    ones = np.ones(H * W, dtype=dy.dtype)
    return (dy.reshape(N * C, H * W) @ ones).reshape(N, C).sum(axis=0)


def add_bias_and_relu(y, b, relu):
    """y: (N, O, ...) += b per channel, then max(y, 0) in place when relu is set."""
    if b is not None:
        y += b.reshape(1, -1, *(1,) * (y.ndim - 2))
    if relu:
        relu_kernel.clamp(y, y)
    return y


def through_relu(dy, relu_y):
    """The gradient that reaches a convolution through its fused ReLU (relu_y None: none)."""
    return dy if relu_y is None else relu_kernel.masked_gradient(relu_y, dy)


# --- convolution ---------------------------------------------------------------------

def pointwise_conv(x, w, b, g, relu):
    """1x1, stride 1, no padding: y[n] = w @ x[n].  x: (N, C, H, W), w: (O, C, 1, 1)."""
    N, C, H, W = x.shape
    O = w.shape[0]
    y = np.matmul(w.reshape(O, C), x.reshape(N, C, H * W))
    return add_bias_and_relu(y, b, relu).reshape(N, O, H, W)


def pointwise_conv_grads(dy, x, w, has_bias, g, relu_y, dw2, input_gradient=True):
    """dx = w^T dy[n]; dw2 += dy[n] x[n]^T over the batch; returns (dx, db or None)."""
    dy = through_relu(dy, relu_y)
    N, C, H, W = x.shape
    O = w.shape[0]
    dy3, x3 = dy.reshape(N, O, H * W), x.reshape(N, C, H * W)
    for n in range(N):
        _add_outer(dw2, dy3[n], x3[n])
    dx = np.matmul(w.reshape(O, C).T, dy3).reshape(N, C, H, W) if input_gradient else None
    return dx, channel_sums(dy) if has_bias else None


def banded_conv(x, w, b, g, relu):
    """Any convolution: per band of output rows, cols = im2col(x) and y = w @ cols."""
    N, C, H, W = x.shape
    O = w.shape[0]
    KH, KW, OH, OW = g[0], g[1], g[8], g[9]
    K = C * KH * KW
    w2 = w.reshape(O, K)
    y = np.empty((N, O, OH * OW), dtype=x.dtype)

    def band(rows):
        # Bands write disjoint rows of y and take their scratch from this thread's
        # workspace, so npfcn.kernels.threads can run whole bands on each core (no
        # barrier inside a band: see threads.py for why that matters on a busy machine).
        r0, r1 = rows
        cols = workspace.get("cols", (K, N * (r1 - r0) * OW), x.dtype)
        bands.im2col_bands(x, g, (r0, r1), cols)
        _matmul_into(w2, cols, y, r0 * OW, r1 * OW)

    threads.run(_band_ranges(OH, K * N * OW * x.itemsize, N * OW), band)
    return add_bias_and_relu(y, b, relu).reshape(N, O, OH, OW)


MIN_PARALLEL_COLUMNS = 512      # the thinnest band worth a core of its own (GEMM columns)


def _band_ranges(rows, row_bytes, row_columns):
    """``bands.band_ranges``, cut finer when that gives every thread two bands of at
    least MIN_PARALLEL_COLUMNS columns (SegNet-Basic's 64 -> 64 7x7 at 45x60 makes 3
    bands of ~16 MB: one thread would sit idle)."""
    ranges = bands.band_ranges(rows, row_bytes)
    parts = 2 * backend.num_threads()
    if 1 < len(ranges) < parts or (len(ranges) == 1 and parts > 1):
        step = -(-rows // parts)
        if step * row_columns >= MIN_PARALLEL_COLUMNS:
            return [(r, min(r + step, rows)) for r in range(0, rows, step)]
    return ranges


def banded_conv_grads(dy, x, w, has_bias, g, relu_y, dw2, input_gradient=True):
    """dx as a convolution of dy (``flipped_conv_for_dx``) where that applies, else
    dcols = w^T dy and dx += col2im(dcols) per band; dw2 += dy cols^T per band."""
    dy = through_relu(dy, relu_y)
    flipped = flipped_conv_for_dx(x.shape[0], x.shape[1], w.shape[0], g)
    if not input_gradient:
        dx = None
        grad_bands(dy, x, g, dw2)
    elif flipped:
        dx = banded_conv(dy, flipped_transposed(w), None, flipped, False)
        grad_bands(dy, x, g, dw2)
    else:
        dx = np.zeros(x.shape, dtype=x.dtype)
        grad_bands(dy, x, g, dw2, w=w, dx=dx)
    return dx, channel_sums(dy) if has_bias else None


def grad_bands(dy, x, g, dw2, w=None, dx=None):
    """Per band of output rows: cols = im2col(x), dw2 += dy cols^T; and with dx given,
    dcols = w^T dy and dx += col2im(dcols).

    dy: (N, O, OH, OW) (after any fused ReLU), x: (N, C, H, W), dw2: (O, C*KH*KW),
    dx: (N, C, H, W) zeros or None.
    """
    N, C, H, W = x.shape
    O = dy.shape[1]
    KH, KW, OH, OW = g[0], g[1], g[8], g[9]
    K = C * KH * KW
    dy3 = dy.reshape(N, O, OH * OW)
    ranges = _band_ranges(OH, K * N * OW * x.itemsize, N * OW)
    # Bands side by side on the threads (see banded_conv) when there are enough and a
    # weight-gradient copy per thread is small; with dx, two bands that run at once must
    # not touch the same rows of it: even bands, then odd ones.  Then each thread sums
    # its bands' products into its own (K, O) array: dw2's transpose, because cols @ dy^T
    # ran 1.1-1.25x faster in OpenBLAS than dy @ cols^T for SegNet-Basic's shapes (64
    # rows of dy), and the transposing add into dw2 happens once per layer.  Otherwise
    # (few bands: a small layer, where a zeroed copy and a transposing add would cost
    # more than the product; or fc6's 411 MB gradient) each band adds into dw2 directly.
    span = (g[0] - 1) * g[6] + 1                         # input rows one output row reads
    step = ranges[0][1] - ranges[0][0]
    own_sums = len(ranges) >= 4 and dw2.nbytes <= PARALLEL_DW_BYTES \
        and (dx is None or step * g[2] >= span)
    partials, lock = {}, threading.Lock()

    def band(rows):
        r0, r1 = rows
        cols = workspace.get("cols", (K, N * (r1 - r0) * OW), x.dtype)
        bands.im2col_bands(x, g, (r0, r1), cols)
        dy_band = _batch_columns(dy3, r0 * OW, r1 * OW, "dy")             # (O, N*band)
        if own_sums:
            product = workspace.get("outer", (K, O), x.dtype)
            np.matmul(cols, dy_band.T, out=product)
            _thread_partial(partials, lock, (K, O), x.dtype)[...] += product
        else:
            _add_outer(dw2, dy_band, cols)
        if dx is not None:
            dcols = workspace.get("dcols", cols.shape, x.dtype)
            np.matmul(w.reshape(O, K).T, dy_band, out=dcols)
            bands.col2im_bands(dcols, dx, g, (r0, r1))

    if own_sums:
        for phase in ((ranges,) if dx is None else (ranges[0::2], ranges[1::2])):
            threads.run(phase, band, parallel=True)
    else:
        for rows in ranges:
            band(rows)
    for partial in partials.values():
        dw2 += partial.T


FLIPPED_DX_MIN_CHANNELS = 16     # below it the flipped product has too few rows for BLAS


def flipped_conv_for_dx(N, C, O, g):
    """The geometry of dx as a convolution of dy, or None where that does not apply
    or does not pay (N images of C channels in, O out, geometry g).

    At stride 1 without dilation, input row i receives dy[i + PH - ky] w[ky] for every
    ky: a correlation of dy with the kernel turned by 180 degrees (in and out channels
    swapped) and padding KH-1-PH. That is one matrix product of inner size O*KH*KW
    per band, instead of a product of inner size O that writes KH*KW times dx's size
    and a col2im that sums it back (``npfcn.reference.conv`` does the latter).
    Only with no more output channels than input ones: the flipped kernel is a copy of
    the weights and its columns are O*KH*KW rows of dy, so fc6 (512 -> 4096, 7x7) would
    copy 411 MB and build columns 8 times larger than col2im's each step (its backward
    took 1.2 s instead of 0.3).  Nor where the turned copy of the weights, O*C*KH*KW
    values, would outweigh the columns col2im sums, C*KH*KW*N*OH*OW: VGG's conv5 on a
    14x14 map (512 channels, 196 outputs) spent 1.8-1.9 ms of its 19-25 ms forward +
    backward on that copy, and took 17.4-20.2 ms by col2im against 22.3-25.1 (Zen 4,
    three alternated pairs of processes).
    """
    KH, KW, SH, SW, PH, PW, DH, DW, OH, OW = g
    if (SH, SW, DH, DW) != (1, 1, 1, 1) or PH >= KH or PW >= KW or KH * KW == 1 \
            or C < FLIPPED_DX_MIN_CHANNELS or O > C or O > N * OH * OW:
        return None
    return (KH, KW, 1, 1, KH - 1 - PH, KW - 1 - PW, 1, 1, OH + KH - 1 - 2 * PH, OW + KW - 1 - 2 * PW)


PARALLEL_DW_BYTES = 64 << 20     # largest weight gradient copied per thread (fc6's is 411 MB)


def flipped_transposed(w):
    """w: (O, C, KH, KW) -> (C, O, KH, KW) rotated by 180 degrees: the weights whose
    forward convolution is the input gradient of a convolution with w."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def _thread_partial(partials, lock, shape, dtype):
    """This thread's array of zeros of ``shape`` in ``partials`` (made on first use)."""
    key = threading.get_ident()
    with lock:
        if key not in partials:
            partials[key] = np.zeros(shape, dtype=dtype)
        return partials[key]


# --- transposed convolution ----------------------------------------------------------
# Here the grid of the columns is the input (H, W): g = (KH, KW, SH, SW, PH, PW, DH, DW, H, W),
# and the image they are summed into is the output.

def banded_transposed_conv(x, w, b, g, out_size):
    """Per band of input rows, cols = w^T x and y += col2im(cols).  Returns (y, None).

    x: (N, C, H, W), w: (C, O, KH, KW) -> y: (N, O, OH, OW) with (OH, OW) = out_size.
    """
    N, C, H, W = x.shape
    _, O, KH, KW = w.shape
    OKK = O * KH * KW
    w2t = w.reshape(C, OKK).T
    x3 = x.reshape(N, C, H * W)
    y = np.zeros((N, O, *out_size), dtype=x.dtype)
    for r0, r1 in bands.band_ranges(H, OKK * N * W * x.itemsize):
        x_band = _batch_columns(x3, r0 * W, r1 * W, "x")                  # (C, N*band)
        cols = workspace.get("cols", (OKK, x_band.shape[1]), x.dtype)
        np.matmul(w2t, x_band, out=cols)
        bands.col2im_bands(cols, y, g, (r0, r1))
    return add_bias_and_relu(y, b, False), None


def banded_transposed_conv_grads(dy, x, w, has_bias, g, saved, dw2):
    """Per band: dcols = im2col(dy), dx = w dcols, dw2 += x dcols^T.  Returns (dx, db)."""
    N, C, H, W = x.shape
    _, O, KH, KW = w.shape
    OKK = O * KH * KW
    w2 = w.reshape(C, OKK)
    x3 = x.reshape(N, C, H * W)
    dx = np.empty((N, C, H * W), dtype=x.dtype)
    for r0, r1 in bands.band_ranges(H, OKK * N * W * x.itemsize):
        dcols = workspace.get("dcols", (OKK, N * (r1 - r0) * W), x.dtype)
        bands.im2col_bands(dy, g, (r0, r1), dcols)                          # (OKK, N*band)
        _matmul_into(w2, dcols, dx, r0 * W, r1 * W)
        _add_outer(dw2, _batch_columns(x3, r0 * W, r1 * W, "x"), dcols)
    return dx.reshape(N, C, H, W), channel_sums(dy) if has_bias else None
