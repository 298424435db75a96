"""The public ops: validate, choose a path, call it, return ``(out, cache)``.

Each ``*_forward`` returns its output and a ``cache``; the matching
``*_backward(dy, cache)`` returns the gradients.  Shapes, argument names, weight
layouts and output-size formulas follow PyTorch:

* conv weight ``(out_channels, in_channels, KH, KW)``
* transposed-conv weight ``(in_channels, out_channels, KH, KW)``
* pooling indices flat within each (n, c) plane

Every function here does three things and nothing else:

1. validate the arguments (a one-line error naming the problem; the dtype of
   ``x`` decides the arithmetic, and weights and gradients must share it);
2. ask ``npfcn.kernels.dispatch`` for the path: ``"reference"`` (the textbook
   functions of ``npfcn.reference``; always with ``NPFCN_BACKEND=numpy``) or one
   of the C backend's fast kernels;
3. call that path, and keep its name in the cache: ``cache = (path, out_shape,
   dtype, inner)``.  The backward pass reads the path from there and never
   chooses again.
"""
import numpy as np

from . import reference
from ._checks import (as_float_tensor, check_output_padding, check_same_shape,
                      check_windows_touch_image, int_pair)
from .kernels import bands, batchnorm as batchnorm_kernel, dispatch, pooling as pool_kernels
from .kernels import relu as relu_kernel
from .kernels.boundary import check_extent, check_size


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


def _grad(dy, cache, name):
    """Check an incoming gradient against a cache: float array of the output's shape
    and dtype.  Returns (path, dy, inner)."""
    path, shape, dtype, inner = cache
    dy = as_float_tensor(dy, f"gradient of {name}", ndim=len(shape))
    check_same_shape(dy, shape, f"gradient of {name}")
    if dy.dtype != dtype:
        raise TypeError(f"gradient of {name} has dtype {dy.dtype} but the output is {dtype}")
    return path, dy, inner


def _gradient_target(dw_into, w):
    """The 2-D (rows, cols) view of the array a weight gradient is added into."""
    rows = w.shape[0]
    if dw_into is None:
        return np.zeros((rows, w.size // rows), dtype=w.dtype)
    if not isinstance(dw_into, np.ndarray) or dw_into.shape != w.shape \
            or dw_into.dtype != w.dtype or not dw_into.flags.c_contiguous:
        raise ValueError(f"dw_into must be a C-contiguous {w.dtype} array of shape {w.shape}")
    return dw_into.reshape(rows, -1)


def _added_into(dw, dw_into):
    """The reference's fresh weight gradient, added into ``dw_into`` when one is given."""
    if dw_into is None:
        return dw
    _gradient_target(dw_into, dw)
    dw_into += dw
    return dw_into


def conv_output_size(in_size, kernel_size, stride=1, padding=0, dilation=1, ceil_mode=False):
    """PyTorch's output size ``(OH, OW)`` of a convolution or pooling window (validated);
    ``floor((H + 2*PH - DH*(KH-1) - 1) / SH) + 1`` per axis, ceil with ``ceil_mode``."""
    return reference.conv_output_size(
        in_size, int_pair(kernel_size, "kernel_size", 1), int_pair(stride, "stride", 1),
        int_pair(padding, "padding", 0), int_pair(dilation, "dilation", 1), ceil_mode)


# --- im2col ------------------------------------------------------------------------

def _grid_geometry(image_size, kernel_size, stride, padding, dilation, out_size, what):
    """Validated ``(KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)``; out_size None: the
    convolution's."""
    kernel_size, stride = int_pair(kernel_size, "kernel_size", 1), int_pair(stride, "stride", 1)
    padding, dilation = int_pair(padding, "padding", 0), int_pair(dilation, "dilation", 1)
    if out_size is None:
        out_size = conv_output_size(image_size, kernel_size, stride, padding, dilation)
    out_size = int_pair(out_size, "out_size", 1)
    check_extent(image_size, kernel_size, stride, padding, dilation, out_size, what)
    return (*kernel_size, *stride, *padding, *dilation, *out_size)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """Columns of every receptive field: x: (N, C, H, W) -> cols: (N, C*KH*KW, OH*OW).

    ``cols[n, (c*KH + i)*KW + j, oy*OW + ox] = x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]``
    (0 in the padding); ``out_size`` (OH, OW) defaults to the convolution's.
    """
    x = as_float_tensor(x, "x")
    N, C, H, W = x.shape
    g = _grid_geometry((H, W), kernel_size, stride, padding, dilation, out_size, "im2col")
    check_size(N * C * g[0] * g[1] * g[8] * g[9], "im2col")
    if dispatch.simple_path() == "reference":
        return reference.im2col(x, g[0:2], g[2:4], g[4:6], g[6:8], g[8:10])
    return bands.im2col_grid(x, g)


def col2im(cols, image_shape, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """Sum columns back into an image (the adjoint of ``im2col``).

    cols: (N, C*KH*KW, OH*OW); image_shape: (N, C, H, W).  Returns x: (N, C, H, W).
    """
    cols = as_float_tensor(cols, "cols", ndim=3)
    if len(image_shape) != 4 or any(int(v) != v or v < 0 for v in image_shape):
        # 0 is allowed: an empty batch goes through forward, so backward must take it too.
        raise ValueError(f"image_shape must be (N, C, H, W) of non-negative ints, got "
                         f"{tuple(image_shape)}")
    N, C, H, W = (int(v) for v in image_shape)
    g = _grid_geometry((H, W), kernel_size, stride, padding, dilation, out_size, "col2im")
    expected = (N, C * g[0] * g[1], g[8] * g[9])
    if cols.shape != expected:
        raise ValueError(f"cols has shape {cols.shape} but image {(N, C, H, W)} with a "
                         f"{g[0]}x{g[1]} kernel on a {g[8]}x{g[9]} grid needs {expected}")
    check_size(N * C * H * W, "col2im output")
    if dispatch.simple_path() == "reference":
        return reference.col2im(cols, (N, C, H, W), g[0:2], g[2:4], g[4:6], g[6:8], g[8:10])
    return bands.col2im_grid(cols, (N, C, H, W), g)


# --- convolution ---------------------------------------------------------------------

def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, relu=False):
    """2-D convolution (cross-correlation, as in PyTorch).

    x: (N, C, H, W), w: (O, C, KH, KW), b: (O,) or None  ->  y: (N, O, OH, OW)
    relu=True: y = max(conv, 0), a ReLU fused into the convolution and its backward
    pass (the direct kernel clamps as it stores; y is the ReLU's mask).
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

    path = dispatch.conv2d_path(x.shape, w.shape, g, x.dtype)
    if path == "reference":
        y, conv_cache = reference.conv2d_forward(x, w, b, stride, padding, dilation)
        relu_cache = None
        if relu:
            y, relu_cache = reference.relu_forward(y)
        return y, (path, y.shape, x.dtype, (conv_cache, relu_cache))
    forward, _ = dispatch.CONV2D[path]
    y = forward(x, w, b, g, relu)
    # Only x is kept, not the columns: rebuilding them in backward is cheap next to
    # the matrix products, and they can be KH*KW times larger than x.
    return y, (path, y.shape, x.dtype, (x, w, b is not None, g, y if relu else None))


def conv2d_backward(dy, cache, dw_into=None, input_gradient=True):
    """dy: (N, O, OH, OW) -> (dx: (N, C, H, W), dw: (O, C, KH, KW), db: (O,) or None).

    With ``input_gradient`` False, dx is None and the fast paths skip it where they
    can (a network's first layer: nothing needs the gradient of the image).
    With ``dw_into`` (a C-contiguous (O, C, KH, KW) array of x's dtype) the weight
    gradient is ADDED into it and it is returned as dw: a layer accumulating its
    gradient saves a temporary the size of the weight and one pass over it.
    """
    path, dy, inner = _grad(dy, cache, "conv2d output")
    if path == "reference":
        conv_cache, relu_cache = inner
        if relu_cache is not None:
            dy = reference.relu_backward(dy, relu_cache)
        dx, dw, db = reference.conv2d_backward(dy, conv_cache)
        return dx if input_gradient else None, _added_into(dw, dw_into), db
    x, w, has_bias, g, relu_y = inner
    dw2 = _gradient_target(dw_into, w)
    _, backward = dispatch.CONV2D[path]
    dx, db = backward(dy, x, w, has_bias, g, relu_y, dw2, input_gradient)
    return dx if input_gradient else None, dw2.reshape(w.shape), db


# --- transposed convolution ----------------------------------------------------------

def conv_transpose2d_geometry(in_size, kernel_size, stride, padding, output_padding, dilation):
    """Output size and top/left padding of a transposed convolution (validated).

    PyTorch: ``OH = (H-1)*SH - 2*PH + DH*(KH-1) + OPH + 1``.
    ``padding="same"`` (TensorFlow's rule): ``OH = H*SH``, with the total padding
    ``max(DH*(KH-1) + 1 - SH, 0)`` split top ``total // 2``, bottom the rest.
    Returns ``((OH, OW), (PH, PW))`` where (PH, PW) is the top/left padding.
    """
    kernel_size = int_pair(kernel_size, "kernel_size", 1)
    stride, dilation = int_pair(stride, "stride", 1), int_pair(dilation, "dilation", 1)
    output_padding = int_pair(output_padding, "output_padding", 0)
    check_output_padding(padding, output_padding, stride, dilation)
    if padding != "same":
        padding = int_pair(padding, "padding", 0)
    out, pad = reference.conv_transpose2d_geometry(in_size, kernel_size, stride, padding,
                                                   output_padding, dilation)
    if out[0] < 1 or out[1] < 1:
        raise ValueError(
            f"conv_transpose2d: input {in_size[0]}x{in_size[1]} with padding {padding} gives "
            f"an empty output {out[0]}x{out[1]}"
        )
    return out, pad


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution (the adjoint of conv2d).

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
    g = (KH, KW, *stride, *pad, *dilation, H, W)

    path = dispatch.conv_transpose2d_path(w.shape, stride, dilation)
    if path == "reference":
        y, inner = reference.conv_transpose2d_forward(x, w, b, stride, padding, output_padding,
                                                      dilation)
        return y, (path, y.shape, x.dtype, inner)
    forward, _ = dispatch.CONV_TRANSPOSE2D[path]
    y, saved = forward(x, w, b, g, (OH, OW))
    return y, (path, y.shape, x.dtype, (x, w, b is not None, g, saved))


def conv_transpose2d_backward(dy, cache, dw_into=None):
    """dy: (N, Cout, OH, OW) -> (dx: (N, Cin, H, W), dw: (Cin, Cout, KH, KW), db or None).

    ``dw_into``: as in ``conv2d_backward``, an array the weight gradient is added into.
    """
    path, dy, inner = _grad(dy, cache, "conv_transpose2d output")
    if path == "reference":
        dx, dw, db = reference.conv_transpose2d_backward(dy, inner)
        return dx, _added_into(dw, dw_into), db
    x, w, has_bias, g, saved = inner
    dw2 = _gradient_target(dw_into, w)
    _, backward = dispatch.CONV_TRANSPOSE2D[path]
    dx, db = backward(dy, x, w, has_bias, g, saved, dw2)
    return dx, dw2.reshape(w.shape), db


# --- max pooling and unpooling -------------------------------------------------------

def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """x: (N, C, H, W) -> (y: (N, C, OH, OW), indices: (N, C, OH, OW) int64, cache)."""
    x = as_float_tensor(x, "max_pool2d input")
    kernel_size = int_pair(kernel_size, "kernel_size", 1)
    stride = int_pair(kernel_size if stride is None else stride, "stride", 1)
    padding, dilation = int_pair(padding, "padding", 0), int_pair(dilation, "dilation", 1)
    if 2 * padding[0] > kernel_size[0] or 2 * padding[1] > kernel_size[1]:
        raise ValueError(f"max_pool2d: padding {padding} must be at most half the kernel "
                         f"size {kernel_size}")
    N, C, H, W = x.shape
    OH, OW = conv_output_size((H, W), kernel_size, stride, padding, dilation, ceil_mode)
    check_windows_touch_image((H, W), kernel_size, stride, padding, dilation, (OH, OW))
    check_extent((H, W), kernel_size, stride, padding, dilation, (OH, OW), "max_pool")
    check_size(N * C * OH * OW, "max_pool output")

    path = dispatch.simple_path()
    if path == "reference":
        y, indices, inner = reference.max_pool2d_forward(x, kernel_size, stride, padding,
                                                         dilation, ceil_mode)
    else:
        y, indices = pool_kernels.pool_with_argmax(
            x, (*kernel_size, *stride, *padding, *dilation, OH, OW))
        inner = (x.shape, indices)
    return y, indices, (path, y.shape, x.dtype, inner)


def max_pool2d_backward(dy, cache):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W); each gradient goes to its window's argmax."""
    path, dy, inner = _grad(dy, cache, "max_pool2d output")
    if path == "reference":
        return reference.max_pool2d_backward(dy, inner)
    image_shape, indices = inner
    return pool_kernels.scatter_to_argmax(dy, indices, image_shape)


def max_unpool2d_output_size(in_size, kernel_size, stride=None, padding=0, output_size=None):
    """Default ``(H-1)*S - 2*P + K`` per axis, or ``output_size`` checked against it."""
    kernel_size = int_pair(kernel_size, "kernel_size", 1)
    stride = int_pair(kernel_size if stride is None else stride, "stride", 1)
    padding = int_pair(padding, "padding", 0)
    default = reference.max_unpool2d_output_size(in_size, kernel_size, stride, padding)
    if output_size is None:
        if default[0] < 1 or default[1] < 1:
            raise ValueError(f"max_unpool2d: padding {padding} leaves an empty output")
        return default
    size = tuple(output_size)[-2:]
    if len(tuple(output_size)) not in (2, 4):
        raise ValueError(f"output_size must be (H, W) or (N, C, H, W), got {output_size!r}")
    for got, d, s, axis in zip(size, default, stride, ("height", "width")):
        if int(got) != got or not (d - s < got < d + s) or got < 1:
            raise ValueError(f"max_unpool2d: output_size {axis} {got} must lie strictly "
                             f"between {d - s} and {d + s}")
    return (int(size[0]), int(size[1]))


def _unpool_indices(indices, shape, plane_size, check_range):
    """indices as a C-contiguous int64 array of ``shape``, after checking type and shape
    (and range when ``check_range``: the C path's boundary checks it itself)."""
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    check_same_shape(indices, shape, "indices")
    # The cast wraps a uint64 index of 2**63 or more to a negative one: still refused.
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    if check_range and indices.size and not 0 <= indices.min() <= indices.max() < plane_size:
        low, high = int(indices.min()), int(indices.max())
        raise ValueError(f"unpooling index {low if low < 0 else high} is out of range for "
                         f"an output plane of {plane_size} pixels")
    return indices


def max_unpool2d_forward(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Place each value at its index in a zero image ("max unpooling").

    x, indices: (N, C, H, W) -> y: (N, C, OH, OW) with
    ``y[n, c].flat[indices[n, c, h, w]] = x[n, c, h, w]``.
    """
    x = as_float_tensor(x, "max_unpool2d input")
    N, C, H, W = x.shape
    OH, OW = max_unpool2d_output_size((H, W), kernel_size, stride, padding, output_size)
    check_size(N * C * OH * OW, "max_unpool2d output")

    path = dispatch.simple_path()
    indices = _unpool_indices(indices, x.shape, OH * OW, check_range=path == "reference")
    if path == "reference":
        y, inner = reference.max_unpool2d_forward(x, indices, kernel_size, stride, padding,
                                                  (OH, OW))
    else:
        y, inner = pool_kernels.unpool(x, indices, (OH, OW)), indices
    return y, (path, y.shape, x.dtype, inner)


def max_unpool2d_backward(dy, cache):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W), gathered at the indices (as PyTorch)."""
    path, dy, inner = _grad(dy, cache, "max_unpool2d output")
    if path == "reference":
        return reference.max_unpool2d_backward(dy, inner)
    return pool_kernels.gather_at_indices(dy, inner)


# --- elementwise ---------------------------------------------------------------------

def relu_forward(x):
    """y = max(x, 0); NaN stays NaN.  x: any shape.

    The cache is y itself (no mask): y > 0 exactly where x > 0, and y is kept
    alive anyway as the next layer's input.  So y must not be changed in place
    before backward (PyTorch's in-place rule for its own saved outputs).
    """
    x = as_float_tensor(x, "relu input", ndim=None)
    path = dispatch.simple_path()
    if path == "reference":
        y, inner = reference.relu_forward(x)
    else:
        y = inner = relu_kernel.clamp(x, np.empty_like(x))
    return y, (path, y.shape, x.dtype, inner)


def relu_backward(dy, cache):
    """dx = dy where y > 0, else 0 (also where dy is NaN or inf, as PyTorch)."""
    path, dy, inner = _grad(dy, cache, "relu output")
    if path == "reference":
        return reference.relu_backward(dy, inner)
    return relu_kernel.masked_gradient(inner, dy)


def batch_norm2d_forward(x, gamma, beta, running_mean, running_var, training=True,
                         momentum=0.1, eps=1e-5):
    """Batch normalisation per channel: x: (N, C, H, W) -> (y, cache); the arguments
    and the math are ``npfcn.reference.batchnorm.batch_norm2d_forward``'s (running
    statistics updated in place in training mode).  x must be a float array (the
    layer ``BatchNorm2d`` checks what the user gives)."""
    path = dispatch.simple_path()
    fn = reference.batch_norm2d_forward if path == "reference" else batchnorm_kernel.forward
    y, inner = fn(x, gamma, beta, running_mean, running_var, training, momentum, eps)
    return y, (path, y.shape, x.dtype, inner)


def batch_norm2d_backward(dy, cache):
    """dy: (N, C, H, W) -> (dx, dgamma, dbeta); dgamma and dbeta None without affine."""
    path, dy, inner = _grad(dy, cache, "batch norm output")
    fn = reference.batch_norm2d_backward if path == "reference" else batchnorm_kernel.backward
    return fn(dy, inner)


def dropout_forward(x, p, rng, training=True):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    In eval mode (``training=False``) or with p == 0 it is the identity.
    """
    x = as_float_tensor(x, "dropout input", ndim=None)
    y, inner = reference.dropout_forward(x, p, rng, training)
    return y, ("reference", y.shape, x.dtype, inner)


def dropout_backward(dy, cache):
    _, dy, inner = _grad(dy, cache, "dropout output")
    return reference.dropout_backward(dy, inner)


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
    y, inner = reference.crop_forward(x, (oy, ox), (h, w))
    return y, ("reference", y.shape, x.dtype, inner)


def crop_backward(dy, cache):
    # The whole shape is checked: a smaller gradient would otherwise be
    # accepted silently and leave part of the crop's gradient at zero.
    _, dy, inner = _grad(dy, cache, "crop output")
    return reference.crop_backward(dy, inner)


def add_forward(a, b):
    """Elementwise sum of two tensors of the same shape and dtype (the FCN skip)."""
    a = as_float_tensor(a, "first addend", ndim=None)
    b = as_float_tensor(b, "second addend", ndim=None, dtype=a.dtype)
    if a.shape != b.shape:
        raise ValueError(f"cannot add tensors of shapes {a.shape} and {b.shape}; crop first")
    y, inner = reference.add_forward(a, b)
    return y, ("reference", y.shape, a.dtype, inner)


def add_backward(dy, cache):
    _, dy, inner = _grad(dy, cache, "add output")
    return reference.add_backward(dy, inner)
