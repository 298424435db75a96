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

from . import pooling
from ._checks import as_float_tensor, check_same_shape, check_size, int_pair
from .im2col import col2im, conv_output_size, im2col


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


# --- convolution ---------------------------------------------------------------------

def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + matmul.

    x: (N, C, H, W), w: (O, C, KH, KW), b: (O,) or None  ->  y: (N, O, OH, OW)
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
    cols = im2col(x, (KH, KW), stride, padding, dilation, (OH, OW))      # (N, C*KH*KW, OH*OW)
    y = np.matmul(w.reshape(O, -1), cols)                                 # (N, O, OH*OW)
    if b is not None:
        y += b.reshape(1, O, 1)
    # Only x is kept, not cols: recomputing im2col in backward is cheap next to the
    # matmuls, and cols can be KH*KW times larger than x.
    cache = (x, w, b is not None, stride, padding, dilation)
    return y.reshape(N, O, OH, OW), cache


def conv2d_backward(dy, cache):
    """dy: (N, O, OH, OW) -> (dx: (N, C, H, W), dw: (O, C, KH, KW), db: (O,) or None)."""
    x, w, has_bias, stride, padding, dilation = cache
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    OH, OW = conv_output_size((H, W), (KH, KW), stride, padding, dilation)
    dy = _grad(dy, (N, O, OH, OW), x.dtype, "conv2d output")
    dy3 = dy.reshape(N, O, OH * OW)
    cols = im2col(x, (KH, KW), stride, padding, dilation, (OH, OW))
    # dw = sum over images of dy_n @ cols_n^T
    dw = np.zeros((O, C * KH * KW), dtype=x.dtype)
    for n in range(N):
        dw += dy3[n] @ cols[n].T
    dcols = np.matmul(w.reshape(O, -1).T, dy3)                            # (N, C*KH*KW, OH*OW)
    dx = col2im(dcols, (N, C, H, W), (KH, KW), stride, padding, dilation, (OH, OW))
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
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
    cols = np.matmul(w.reshape(C, -1).T, x.reshape(N, C, H * W))         # (N, O*KH*KW, H*W)
    y = col2im(cols, (N, O, OH, OW), (KH, KW), stride, pad, dilation, (H, W))
    if b is not None:
        y += b.reshape(1, O, 1, 1)
    cache = (x, w, b is not None, stride, pad, dilation, (OH, OW))
    return y, cache


def conv_transpose2d_backward(dy, cache):
    """dy: (N, Cout, OH, OW) -> (dx: (N, Cin, H, W), dw: (Cin, Cout, KH, KW), db or None)."""
    x, w, has_bias, stride, pad, dilation, (OH, OW) = cache
    N, C, H, W = x.shape
    _, O, KH, KW = w.shape
    dy = _grad(dy, (N, O, OH, OW), x.dtype, "conv_transpose2d output")
    dcols = im2col(dy, (KH, KW), stride, pad, dilation, (H, W))           # (N, O*KH*KW, H*W)
    x3 = x.reshape(N, C, H * W)
    dw = np.zeros((C, O * KH * KW), dtype=x.dtype)
    for n in range(N):
        dw += x3[n] @ dcols[n].T
    dx = np.matmul(w.reshape(C, -1), dcols).reshape(N, C, H, W)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw.reshape(w.shape), db


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
    indices = _check_indices(indices, x.shape, OH * OW)
    check_size(N * C * OH * OW, "max_unpool2d output")
    y = np.zeros((N * C, OH * OW), dtype=x.dtype)
    np.put_along_axis(y, indices.reshape(N * C, H * W), x.reshape(N * C, H * W), axis=1)
    return y.reshape(N, C, OH, OW), (x.shape, x.dtype, indices, (OH, OW))


def max_unpool2d_backward(dy, cache):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W), gathered at the indices (as PyTorch)."""
    shape, dtype, indices, (OH, OW) = cache
    N, C, H, W = shape
    dy = _grad(dy, (N, C, OH, OW), dtype, "max_unpool2d output")
    dx = np.take_along_axis(dy.reshape(N * C, OH * OW), indices.reshape(N * C, H * W), axis=1)
    return dx.reshape(shape)


def _check_indices(indices, shape, plane_size):
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype.kind not in "iu" :
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    check_same_shape(indices, shape, "indices")
    if indices.size:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= plane_size:
            bad = low if low < 0 else high
            raise ValueError(f"unpooling index {bad} is out of range for an output plane of "
                             f"{plane_size} pixels")
    return np.ascontiguousarray(indices, dtype=np.int64)


# --- elementwise ---------------------------------------------------------------------

def relu_forward(x):
    """y = max(x, 0); NaN stays NaN.  x: any shape."""
    x = as_float_tensor(x, "relu input", ndim=None)
    positive = x > 0
    y = np.where(positive | np.isnan(x), x, 0).astype(x.dtype, copy=False)
    return y, (positive, x.dtype)


def relu_backward(dy, cache):
    positive, dtype = cache
    dy = _grad(dy, positive.shape, dtype, "relu output")
    return np.where(positive, dy, 0).astype(dtype, copy=False)


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
