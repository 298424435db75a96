"""Forward and backward passes as pure functions (CS231n style).

Each ``*_forward`` returns its output and a ``cache``; the matching
``*_backward(dy, cache)`` returns the gradients.  Shapes, argument names,
weight layouts and output-size formulas follow PyTorch:

* conv weight ``(out_channels, in_channels, KH, KW)``
* transposed-conv weight ``(in_channels, out_channels, KH, KW)``
* pooling indices flat within each (n, c) plane

Every function validates its arguments before any kernel runs; see
``npfcn._checks``.  The dtype of ``x`` decides the arithmetic, and weights and
gradients must have that same dtype (no silent up- or down-casts).
"""
import numpy as np

from . import backend, direct, pooling, subpixel, winograd
from ._checks import as_float_tensor, check_extent, check_same_shape, check_size, int_pair
from .im2col import col2im_rows, conv_output_size, im2col_rows
from .workspace import WORKSPACE_BYTES, workspace


def _weights(w, b, x, name):
    """Check that weight/bias share x's dtype; return them contiguous."""
    w = as_float_tensor(w, f"{name} weight", ndim=4)
    if w.dtype != x.dtype:
        raise TypeError(
            f"{name}: input has dtype {x.dtype} but the weight has dtype {w.dtype}; "
            f"build the layer with dtype=np.{x.dtype} or cast the input"
        )
    if b is not None:
        b = as_float_tensor(b, f"{name} bias", ndim=1, dtype=x.dtype)
    return w, b


def _grad(dy, shape, dtype, name):
    """Check an incoming gradient: float array of the output's shape and dtype."""
    dy = as_float_tensor(dy, f"gradient of {name}", ndim=len(shape))
    check_same_shape(dy, shape, f"gradient of {name}")
    if dy.dtype != dtype:
        raise TypeError(f"gradient of {name} has dtype {dy.dtype} but the output is {dtype}")
    return dy


# --- the shared machinery of the matrix-product layers --------------------------------
# Convolution and transposed convolution are matrix products over im2col columns.
# The columns of a whole layer can be KH*KW times larger than its input (410 MB for
# FCN-8s's conv1_2 on a 224x224 image), so they are built a block of grid rows at a
# time, all images side by side (im2col_rows), into a workspace reused from call to
# call: memory stays bounded, a fresh buffer's page faults are paid once, and each
# block is ONE GEMM for the whole batch instead of one skinny GEMM per image.

_workspace = workspace        # reusable scratch, see npfcn.workspace


def _row_blocks(rows, row_bytes):
    """Split ``rows`` grid rows into blocks of about WORKSPACE_BYTES of columns.

    The NumPy reference path does the whole grid at once (it is the readable one).
    """
    if backend.active() != "c":
        return [(0, rows)]
    step = max(1, WORKSPACE_BYTES // max(1, row_bytes))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def _batch_rows(a, p0, p1, name):
    """Columns [p0, p1) of every image of a: (N, C, P) as one (C, N*(p1-p0)) matrix.

    With one image that is a view (BLAS takes the row stride); otherwise a copy
    into a workspace.
    """
    N, C, _ = a.shape
    if N == 1:
        return a[0, :, p0:p1]
    out = _workspace.get(name, (C, N * (p1 - p0)), a.dtype)
    out.reshape(C, N, p1 - p0)[...] = a[:, :, p0:p1].transpose(1, 0, 2)
    return out


def _matmul_to_rows(a, b, y, p0, p1):
    """y[:, :, p0:p1] = a @ b per image, where b: (K, N*(p1-p0)) is batched (see above).

    One image: the product is written straight into y (BLAS takes the row stride).
    Several: one product for the whole batch, then each image's block is copied to
    its place; the copy moves contiguous runs of p1-p0 values.  (The product is never
    computed transposed and copied back: NumPy's transposing copy of a tall matrix is
    slower than the GEMM itself - 20 ms for 64 x 50176 floats.)
    """
    N, O, _ = y.shape
    block = p1 - p0
    if N == 1:
        np.matmul(a, b, out=y[0, :, p0:p1])
    else:
        product = _workspace.get("product", (O, N * block), y.dtype)
        np.matmul(a, b, out=product)
        y[:, :, p0:p1] = product.reshape(O, N, block).transpose(1, 0, 2)


def _add_outer(dw, a, b):
    """dw += a @ b.T for a: (O, P), b: (K, P) - a weight gradient summed over pixels.

    A big result (fc6's is 4096 x 25088, 411 MB) is done a block of columns at a
    time through a workspace: no parameter-sized temporary per step, and each
    addition runs over contiguous rows.
    """
    O, K = dw.shape
    step = max(1, WORKSPACE_BYTES // (O * dw.itemsize))
    for k0 in range(0, K, step):
        k1 = min(K, k0 + step)
        part = _workspace.get("outer", (O, k1 - k0), dw.dtype)
        np.matmul(a, b[k0:k1].T, out=part)
        dw[:, k0:k1] += part


def _channel_sums(dy):
    """dy: (N, C, H, W) -> (C,): sum over everything but the channel - a bias gradient.

    As a matrix-vector product with ones: BLAS streams the rows with vector loads
    on every core, 3-4x faster than ``dy.sum(axis=(0, 2, 3))`` (which walks the
    planes with strides) on FCN's 326x326 maps.
    """
    N, C, H, W = dy.shape
    ones = np.ones(H * W, dtype=dy.dtype)
    return (dy.reshape(N * C, H * W) @ ones).reshape(N, C).sum(axis=0)


def _gradient_target(dw_into, w):
    """The 2-D (rows, cols) view of the array a weight gradient is added into."""
    rows = w.shape[0]
    if dw_into is None:
        return np.zeros((rows, w.size // rows), dtype=w.dtype)
    if not isinstance(dw_into, np.ndarray) or dw_into.shape != w.shape \
            or dw_into.dtype != w.dtype or not dw_into.flags.c_contiguous:
        raise ValueError(f"dw_into must be a C-contiguous {w.dtype} array of shape {w.shape}")
    return dw_into.reshape(rows, -1)


def _is_pointwise(g, H, W):
    """A 1x1 kernel at stride 1 without padding: the columns are the image itself."""
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    return (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0) and (oh, ow) == (H, W)


# --- convolution ---------------------------------------------------------------------

def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, relu=False):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + matmul.

    x: (N, C, H, W), w: (O, C, KH, KW), b: (O,) or None  ->  y: (N, O, OH, OW)
    On the C backend, stride-1 convolutions with at most 32 channels in and out go
    by a direct loop (``npfcn.direct``: no column matrix at all), and the other 3x3
    stride-1 ones by Winograd (``npfcn.winograd``): the same result with 2.25x
    fewer multiplications.  relu=True: y = max(conv, 0), the ReLU fused into the
    convolution (the direct loop stores the maximum; the other paths clamp y in place)
    and into its backward pass.
    """
    x = as_float_tensor(x, "conv2d input")
    w, b = _weights(w, b, x, "conv2d")
    N, C, H, W = x.shape
    O, Cw, KH, KW = w.shape
    if C != Cw:
        raise ValueError(f"conv2d: input has {C} channels but the weight expects {Cw}")
    if b is not None and b.shape != (O,):
        raise ValueError(f"conv2d: bias has shape {b.shape}, expected ({O},)")
    stride, padding, dilation = (int_pair(stride, "stride", 1), int_pair(padding, "padding", 0),
                                 int_pair(dilation, "dilation", 1))
    OH, OW = conv_output_size((H, W), (KH, KW), stride, padding, dilation)
    check_extent((H, W), (KH, KW), stride, padding, dilation, (OH, OW), "conv2d")
    check_size(N * O * OH * OW, "conv2d output")
    g = (KH, KW, *stride, *padding, *dilation, OH, OW)
    K = C * KH * KW
    w2 = w.reshape(O, K)
    y = np.empty((N, O, OH * OW), dtype=x.dtype)
    b_added = relu_done = False     # the direct kernel adds the bias and clamps itself
    if _is_pointwise(g, H, W):
        np.matmul(w2, x.reshape(N, C, H * W), out=y)       # fc7 and the score layers
    elif direct.applies((KH, KW), stride, dilation, C, O):   # few channels (narrow FCNs)
        direct.conv_forward(x, w, padding, y.reshape(N, O, OH, OW),
                            None if b is None else np.ascontiguousarray(b), relu=relu)
        b_added = relu_done = True
    elif winograd.applies((KH, KW), stride, dilation, C, O,
                              winograd.tile_count(N, OH, OW)):    # every VGG16 3x3 convolution
        winograd.conv3x3_forward(x, w, padding, y.reshape(N, O, OH, OW))
    else:
        for r0, r1 in _row_blocks(OH, K * N * OW * x.itemsize):
            cols = _workspace.get("cols", (K, N * (r1 - r0) * OW), x.dtype)
            im2col_rows(x, g, (r0, r1), cols)
            _matmul_to_rows(w2, cols, y, r0 * OW, r1 * OW)
    if b is not None and not b_added:
        y += b.reshape(1, O, 1)
    if relu and not relu_done:
        _relu_in_place(y)
    y = y.reshape(N, O, OH, OW)
    # Only x is kept, not the columns: rebuilding them in backward is cheap next to
    # the matrix products, and they can be KH*KW times larger than x.  With the ReLU
    # fused, y is its mask (y > 0 exactly where the sum was), as ReLU keeps it.
    cache = (x, w, b is not None, stride, padding, dilation, y if relu else None)
    return y, cache


def conv2d_backward(dy, cache, dw_into=None):
    """dy: (N, O, OH, OW) -> (dx: (N, C, H, W), dw: (O, C, KH, KW), db: (O,) or None).

    With ``dw_into`` (a C-contiguous (O, C, KH, KW) array of x's dtype) the weight
    gradient is ADDED into it and it is returned as dw: a layer accumulating its
    gradient saves a temporary the size of the weight and one pass over it.
    """
    x, w, has_bias, stride, padding, dilation, relu_output = cache
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    OH, OW = conv_output_size((H, W), (KH, KW), stride, padding, dilation)
    dy = _grad(dy, (N, O, OH, OW), x.dtype, "conv2d output")
    g = (KH, KW, *stride, *padding, *dilation, OH, OW)
    pointwise = _is_pointwise(g, H, W)
    direct_path = not pointwise and direct.applies((KH, KW), stride, dilation, C, O)
    if relu_output is not None and not direct_path:
        dy = relu_backward(dy, (relu_output, x.dtype))      # the direct loop masks as it reads
    K = C * KH * KW
    w2 = w.reshape(O, K)
    dy3 = dy.reshape(N, O, OH * OW)
    dw = _gradient_target(dw_into, w)
    if pointwise:
        x3 = x.reshape(N, C, H * W)
        for n in range(N):
            _add_outer(dw, dy3[n], x3[n])
        dx = np.matmul(w2.T, dy3).reshape(N, C, H, W)
    elif direct_path:
        db = np.zeros(O, dtype=x.dtype) if has_bias else None
        dx = direct.conv_backward(np.ascontiguousarray(dy), x, w, padding, dw,
                                  dy_mask=relu_output, db=db)
        return dx, dw.reshape(w.shape), db
    elif winograd.applies((KH, KW), stride, dilation, C, O,
                              winograd.tile_count(N, OH, OW)):
        dx = winograd.conv3x3_backward(np.ascontiguousarray(dy), x, w, padding, dw)
    else:
        dx = np.zeros((N, C, H, W), dtype=x.dtype)
        for r0, r1 in _row_blocks(OH, K * N * OW * x.itemsize):
            cols = _workspace.get("cols", (K, N * (r1 - r0) * OW), x.dtype)
            im2col_rows(x, g, (r0, r1), cols)
            dy_block = _batch_rows(dy3, r0 * OW, r1 * OW, "dy")          # (O, N*block)
            _add_outer(dw, dy_block, cols)
            dcols = _workspace.get("dcols", cols.shape, x.dtype)
            np.matmul(w2.T, dy_block, out=dcols)
            col2im_rows(dcols, dx, g, (r0, r1))
    db = _channel_sums(dy) if has_bias else None
    return dx, dw.reshape(w.shape), db


# --- transposed convolution ----------------------------------------------------------

def conv_transpose2d_geometry(in_size, kernel_size, stride, padding, output_padding, dilation):
    """Output size and top/left padding of a transposed convolution.

    PyTorch: ``OH = (H-1)*SH - 2*PH + DH*(KH-1) + OPH + 1``.
    ``padding="same"`` (TensorFlow's rule): ``OH = H*SH``, with the total padding
    ``max(DH*(KH-1) + 1 - SH, 0)`` split top ``total // 2``, bottom the rest.
    Returns ``((OH, OW), (PH, PW))`` where (PH, PW) is the top/left padding.
    """
    kh, kw = int_pair(kernel_size, "kernel_size", 1)
    sh, sw = int_pair(stride, "stride", 1)
    dh, dw = int_pair(dilation, "dilation", 1)
    oph, opw = int_pair(output_padding, "output_padding", 0)
    check_output_padding(padding, (oph, opw), (sh, sw), (dh, dw))
    if padding == "same":
        out = (in_size[0] * sh, in_size[1] * sw)
        top = tuple(max(d * (k - 1) + 1 - s, 0) // 2 for k, s, d in ((kh, sh, dh), (kw, sw, dw)))
        return out, top
    ph, pw = int_pair(padding, "padding", 0)
    out = ((in_size[0] - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1,
           (in_size[1] - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1)
    if out[0] < 1 or out[1] < 1:
        raise ValueError(
            f"conv_transpose2d: input {in_size[0]}x{in_size[1]} with padding {padding} gives "
            f"an empty output {out[0]}x{out[1]}"
        )
    return out, (ph, pw)


def check_output_padding(padding, output_padding, stride, dilation):
    """PyTorch's rule: output_padding < stride or < dilation (per axis); none with 'same'."""
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair or 'same', got {padding!r}")
        if tuple(output_padding) != (0, 0):
            raise ValueError("output_padding cannot be combined with padding='same'")
        return
    for op, s, d, axis in zip(output_padding, stride, dilation, ("height", "width")):
        if op >= s and op >= d:
            raise ValueError(
                f"output_padding ({op}) must be smaller than either stride ({s}) or "
                f"dilation ({d}) along the {axis}"
            )


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution (the adjoint of conv2d) by matmul + col2im.

    On the C backend a kernel that is a multiple of the stride goes by sub-pixel
    phases instead (``npfcn.subpixel``): one matmul and no scatter-add.

    x: (N, Cin, H, W), w: (Cin, Cout, KH, KW), b: (Cout,) or None -> y: (N, Cout, OH, OW)
    Every input pixel scatters ``x[n, c, h, w] * w[c, :, :, :]`` onto the output
    at ``(h*SH - PH, w*SW - PW)``, summing where the stamps overlap.
    """
    x = as_float_tensor(x, "conv_transpose2d input")
    w, b = _weights(w, b, x, "conv_transpose2d")
    N, C, H, W = x.shape
    Cw, O, KH, KW = w.shape
    if C != Cw:
        raise ValueError(f"conv_transpose2d: input has {C} channels but the weight expects {Cw}")
    if b is not None and b.shape != (O,):
        raise ValueError(f"conv_transpose2d: bias has shape {b.shape}, expected ({O},)")
    stride, dilation = int_pair(stride, "stride", 1), int_pair(dilation, "dilation", 1)
    (OH, OW), pad = conv_transpose2d_geometry((H, W), (KH, KW), stride, padding,
                                              output_padding, dilation)
    check_size(N * O * KH * KW * H * W, "conv_transpose2d columns")
    check_size(N * O * OH * OW, "conv_transpose2d output")
    # The grid of the columns is the input (H, W); the image they sum into is y.
    check_extent((OH, OW), (KH, KW), stride, pad, dilation, (H, W), "conv_transpose2d")
    cache = (x, w, b is not None, stride, pad, dilation, (OH, OW))
    if subpixel.applies((KH, KW), stride, dilation):     # FCN's upsampling layers
        check_size(C * KH * KW * N * (H + KH) * (W + KW), "conv_transpose2d phase columns")
        y, phase_weights = subpixel.conv_transpose2d_forward(x, w, stride, pad, (OH, OW))
        if b is not None:
            y += b.reshape(1, O, 1, 1)
        return y, cache + (phase_weights,)
    g = (KH, KW, *stride, *pad, *dilation, H, W)
    OKK = O * KH * KW
    w2t = w.reshape(C, OKK).T
    x3 = x.reshape(N, C, H * W)
    y = np.zeros((N, O, OH, OW), dtype=x.dtype)
    for r0, r1 in _row_blocks(H, OKK * N * W * x.itemsize):
        x_block = _batch_rows(x3, r0 * W, r1 * W, "x")                   # (C, N*block)
        cols = _workspace.get("cols", (OKK, x_block.shape[1]), x.dtype)
        np.matmul(w2t, x_block, out=cols)
        col2im_rows(cols, y, g, (r0, r1))
    if b is not None:
        y += b.reshape(1, O, 1, 1)
    return y, cache


def conv_transpose2d_backward(dy, cache, dw_into=None):
    """dy: (N, Cout, OH, OW) -> (dx: (N, Cin, H, W), dw: (Cin, Cout, KH, KW), db or None).

    ``dw_into``: as in ``conv2d_backward``, an array the weight gradient is added into.
    """
    x, w, has_bias, stride, pad, dilation, (OH, OW) = cache[:7]
    N, C, H, W = x.shape
    _, O, KH, KW = w.shape
    dy = _grad(dy, (N, O, OH, OW), x.dtype, "conv_transpose2d output")
    dw = _gradient_target(dw_into, w)
    db = _channel_sums(dy) if has_bias else None
    if len(cache) == 8:                  # the forward pass went by sub-pixel phases
        dx = subpixel.conv_transpose2d_backward(np.ascontiguousarray(dy), x, cache[7], stride,
                                                pad, dw.reshape(w.shape))
        return dx, dw.reshape(w.shape), db
    g = (KH, KW, *stride, *pad, *dilation, H, W)
    OKK = O * KH * KW
    w2 = w.reshape(C, OKK)
    x3 = x.reshape(N, C, H * W)
    dx = np.empty((N, C, H * W), dtype=x.dtype)
    for r0, r1 in _row_blocks(H, OKK * N * W * x.itemsize):
        dcols = _workspace.get("dcols", (OKK, N * (r1 - r0) * W), x.dtype)
        im2col_rows(dy, g, (r0, r1), dcols)                                # (OKK, N*block)
        _matmul_to_rows(w2, dcols, dx, r0 * W, r1 * W)
        _add_outer(dw, _batch_rows(x3, r0 * W, r1 * W, "x"), dcols)
    return dx.reshape(N, C, H, W), dw.reshape(w.shape), db


# --- max pooling and unpooling -------------------------------------------------------

def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """x: (N, C, H, W) -> (y: (N, C, OH, OW), indices: (N, C, OH, OW) int64, cache)."""
    x = as_float_tensor(x, "max_pool2d input")
    kh, kw = int_pair(kernel_size, "kernel_size", 1)
    sh, sw = int_pair(kernel_size if stride is None else stride, "stride", 1)
    ph, pw = int_pair(padding, "padding", 0)
    dh, dw = int_pair(dilation, "dilation", 1)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"max_pool2d: padding {padding} must be at most half the kernel "
                         f"size {kernel_size}")
    N, C, H, W = x.shape
    OH, OW = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    _check_windows_touch_image((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (OH, OW))
    y, indices = pooling.max_pool_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
    return y, indices, (x.shape, x.dtype, indices)


def _check_windows_touch_image(in_size, kernel, stride, padding, dilation, out_size):
    """Refuse pooling geometry in which some window sees only padding.

    With dilation, ``padding <= kernel/2`` is not enough: the taps of a window
    can straddle the image (H=1, kernel 2, dilation 2, padding 1 reads rows -1
    and 1).  Such a window has no maximum and no valid index (PyTorch returns
    -inf and an index outside the plane), so it is an error here.
    Per axis, the first tap at or after row 0 is ``i0 = ceil(-start / d)``.
    """
    for n, k, s, p, d, o, axis in zip(in_size, kernel, stride, padding, dilation, out_size,
                                      ("height", "width")):
        start = np.arange(o, dtype=np.int64) * s - p       # first tap of each window
        first_inside = np.maximum(0, -(start // d))        # ceil(-start / d), at least 0
        touches = (first_inside < k) & (start + first_inside * d < n)
        if not touches.all():
            bad = int(np.argmin(touches))
            raise ValueError(
                f"max_pool2d: the window of output {axis} {bad} lies entirely in the padding "
                f"(input {axis} {n}, kernel {k}, padding {p}, dilation {d}); "
                "use less padding or dilation"
            )


def max_pool2d_backward(dy, cache):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W); each gradient goes to its window's argmax."""
    shape, dtype, indices = cache
    dy = _grad(dy, indices.shape, dtype, "max_pool2d output")
    return pooling.max_pool_backward(dy, indices, shape)


def max_unpool2d_output_size(in_size, kernel_size, stride=None, padding=0, output_size=None):
    """Default ``(H-1)*S - 2*P + K`` per axis, or ``output_size`` checked against it."""
    kh, kw = int_pair(kernel_size, "kernel_size", 1)
    sh, sw = int_pair(kernel_size if stride is None else stride, "stride", 1)
    ph, pw = int_pair(padding, "padding", 0)
    default = ((in_size[0] - 1) * sh - 2 * ph + kh, (in_size[1] - 1) * sw - 2 * pw + kw)
    if output_size is None:
        if default[0] < 1 or default[1] < 1:
            raise ValueError(f"max_unpool2d: padding {padding} leaves an empty output")
        return default
    size = tuple(output_size)[-2:]
    if len(tuple(output_size)) not in (2, 4):
        raise ValueError(f"output_size must be (H, W) or (N, C, H, W), got {output_size!r}")
    for got, d, s, axis in zip(size, default, (sh, sw), ("height", "width")):
        if int(got) != got or not (d - s < got < d + s) or got < 1:
            raise ValueError(f"max_unpool2d: output_size {axis} {got} must lie strictly "
                             f"between {d - s} and {d + s}")
    return (int(size[0]), int(size[1]))


def max_unpool2d_forward(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Place each value at its index in a zero image ("max unpooling").

    x, indices: (N, C, H, W) -> y: (N, C, OH, OW) with
    ``y[n, c].flat[indices[n, c, h, w]] = x[n, c, h, w]``.
    """
    x = as_float_tensor(x, "max_unpool2d input")
    N, C, H, W = x.shape
    OH, OW = max_unpool2d_output_size((H, W), kernel_size, stride, padding, output_size)
    # Indices are checked (type, shape, range) where C uses them, in pooling; the
    # backward pass checks them again, so changing them in between cannot reach C.
    y = pooling.max_unpool_forward(x, indices, (OH, OW))
    return y, (x.shape, x.dtype, indices, (OH, OW))


def max_unpool2d_backward(dy, cache):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W), gathered at the indices (as PyTorch)."""
    shape, dtype, indices, (OH, OW) = cache
    dy = _grad(dy, (*shape[:2], OH, OW), dtype, "max_unpool2d output")
    return pooling.max_unpool_backward(dy, indices)


# --- elementwise ---------------------------------------------------------------------

def _relu_in_place(y):
    """y = max(y, 0) in place, NaN kept (a ReLU fused after another layer's output)."""
    if backend.active() == "c":
        _relu_kernel("forward", y.dtype)(backend.pointer(y), backend.pointer(y), y.size)
    else:
        np.maximum(y, y.dtype.type(0), out=y)


def relu_forward(x):
    """y = max(x, 0); NaN stays NaN.  x: any shape.

    The cache is y itself (no mask): y > 0 exactly where x > 0, and y is kept
    alive anyway as the next layer's input.  So y must not be changed in place
    before backward (PyTorch's in-place rule for its own saved outputs).
    """
    x = as_float_tensor(x, "relu input", ndim=None)
    if backend.active() == "c":
        y = np.empty_like(x)
        _relu_kernel("forward", x.dtype)(backend.pointer(x), backend.pointer(y), x.size)
    else:
        y = np.maximum(x, x.dtype.type(0))   # np.maximum propagates NaN
    return y, (y, x.dtype)


def relu_backward(dy, cache):
    """dx = dy where y > 0, else 0 (also where dy is NaN or inf, as PyTorch)."""
    y, dtype = cache
    dy = _grad(dy, y.shape, dtype, "relu output")
    if backend.active() == "c":
        dx = np.empty_like(dy)
        _relu_kernel("backward", dtype)(backend.pointer(y), backend.pointer(dy),
                                        backend.pointer(dx), dx.size)
        return dx
    return np.where(y > 0, dy, dtype.type(0))


def _relu_kernel(direction, dtype):
    """csrc/relu.c: one pass over contiguous arrays of one dtype (checked by the callers)."""
    suffix = "f32" if dtype == np.float32 else "f64"
    return getattr(backend.kernels()[1], f"relu_{direction}_{suffix}")


def dropout_forward(x, p, rng, training=True):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    In eval mode (``training=False``) or with p == 0 it is the identity.
    """
    x = as_float_tensor(x, "dropout input", ndim=None)
    if not training or p == 0:
        # mask None: the identity, but backward still checks the gradient's shape.
        return x.copy(), (None, x.shape, x.dtype)
    keep = rng.random(x.shape) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p)) if p < 1 else np.zeros_like(x)
    return x * mask, (mask, x.shape, x.dtype)


def dropout_backward(dy, cache):
    mask, shape, dtype = cache
    dy = _grad(dy, shape, dtype, "dropout output")
    return dy.copy() if mask is None else dy * mask


def crop_forward(x, offset, size):
    """The FCN crop: ``x[:, :, oy:oy+H, ox:ox+W]`` (from the top-left offset, not centred).

    x: (N, C, Hx, Wx), offset: int or (oy, ox), size: (H, W) -> (N, C, H, W)
    """
    x = as_float_tensor(x, "crop input")
    oy, ox = int_pair(offset, "offset", 0)
    h, w = int_pair(tuple(size)[-2:], "crop size", 1)
    if oy + h > x.shape[2] or ox + w > x.shape[3]:
        raise ValueError(f"crop of {h}x{w} at offset ({oy}, {ox}) does not fit in the "
                         f"{x.shape[2]}x{x.shape[3]} input")
    return x[:, :, oy:oy + h, ox:ox + w].copy(), (x.shape, x.dtype, oy, ox, h, w)


def crop_backward(dy, cache):
    shape, dtype, oy, ox, h, w = cache
    # The whole shape is checked: a smaller gradient would otherwise be
    # accepted silently and leave part of the crop's gradient at zero.
    dy = _grad(dy, (shape[0], shape[1], h, w), dtype, "crop output")
    dx = np.zeros(shape, dtype=dtype)
    dx[:, :, oy:oy + h, ox:ox + w] = dy
    return dx


def add_forward(a, b):
    """Elementwise sum of two tensors of the same shape and dtype (the FCN skip)."""
    a = as_float_tensor(a, "first addend", ndim=None)
    b = as_float_tensor(b, "second addend", ndim=None, dtype=a.dtype)
    if a.shape != b.shape:
        raise ValueError(f"cannot add tensors of shapes {a.shape} and {b.shape}; crop first")
    return a + b, (a.shape, a.dtype)


def add_backward(dy, cache):
    shape, dtype = cache
    dy = _grad(dy, shape, dtype, "add output")
    return dy, dy.copy()
