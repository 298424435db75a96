"""Direct stride-1 convolution for layers with few channels (C backend).

With 4 to 32 channels (FCN-8s at width 1/16) the matrix products of the im2col
and Winograd paths are tiny, and what they cost is building their operands:
im2col copies every input pixel KH*KW times, Winograd 4 times.  This path
computes each output row straight from the (at most C*KH) input rows it needs,
staged in a small buffer that stays in cache (``csrc/direct.c``)::

    y[n, o, oy, ox] = sum_{c,i,j} w[o, c, i, j] * x[n, c, oy - PH + i, ox - PW + j]

The backward pass reuses it: the input gradient is the same kind of
convolution of dy with the flipped, transposed weights (padding KH-1-PH, which
is negative for FCN's conv1_1 and then crops), and the weight gradient sums
``dy * x`` over the same staged rows.

Only the output window that can see the image is computed (with FCN's padding
of 100, conv1_1's output is 326x326 for a 128x128 image, and all but the middle
130x130 is zero before the bias): ``window`` finds it.  npfcn.band asks for
several windows instead: the part of a feature map that sees the image and the
thin ring that sees the zero padding.  The C loop works a row at a time in
blocks of 48 columns, so a window a few columns wide (the ring's sides) would cost
a whole block and a staging per row; those go by columns and a matrix product.
"""
import numpy as np

from . import backend
from .workspace import workspace

MAX_CHANNELS = 32   # measured crossover with Winograd/im2col, see applies()
BLOCK = 4           # output channels per register block (NPFCN_OB in direct.c)
NARROW = 16         # windows narrower than this go by columns (see the module docstring)


def applies(kernel_size, stride, dilation, in_channels, out_channels):
    """True when the C backend computes this convolution directly.

    Stride 1, no dilation, kernels up to 5x5 (every VGG16 3x3 layer), and at most
    MAX_CHANNELS channels in and out, where it beat the Winograd and im2col paths
    (``python benchmarks/bench_layers.py --narrow``).
    """
    return (backend.active() == "c" and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and max(kernel_size) <= 5
            and in_channels <= MAX_CHANNELS and out_channels <= MAX_CHANNELS)


def window(size, out_size, kernel, pad):
    """[lo, hi): the outputs along one axis whose receptive field overlaps the input.

    Output o reads inputs o - pad .. o - pad + kernel - 1; it sees the image
    [0, size) when o - pad + kernel - 1 >= 0 and o - pad < size.
    """
    lo = min(max(0, pad - kernel + 1), out_size)
    hi = max(min(out_size, size + pad), lo)
    return lo, hi


def blocked_weight(w):
    """w: (O, C, KH, KW) -> (ceil(O/4), C*KH*KW, 4): the 4 channels of a block side by
    side per tap, zeros past O (the layout direct.c reads)."""
    O = w.shape[0]
    blocks = -(-O // BLOCK)
    wb = np.zeros((blocks * BLOCK, w[0].size), dtype=w.dtype)
    wb[:O] = w.reshape(O, -1)
    return np.ascontiguousarray(wb.reshape(blocks, BLOCK, -1).transpose(0, 2, 1))


def _check(x, w, padding, out_size=None):
    """The sizes direct.c relies on (the callers have checked the user's input).

    out_size: the output's (OH, OW) to check, or None for the one x, w and padding give.
    """
    for name, a in (("input", x), ("weight", w)):
        if not (isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64)
                and a.flags.c_contiguous and a.ndim == 4):
            raise ValueError(f"direct conv: {name} must be a C-contiguous 4-D float array")
    if w.dtype != x.dtype or w.shape[1] != x.shape[1]:
        raise ValueError(f"direct conv: weight {w.shape} {w.dtype} does not fit input "
                         f"{x.shape} {x.dtype}")
    (N, C, H, W), (O, _, KH, KW), (PH, PW) = x.shape, w.shape, padding
    expected = (H + 2 * PH - KH + 1, W + 2 * PW - KW + 1)
    OH, OW = expected if out_size is None else out_size
    if (OH, OW) != expected or OH < 1 or OW < 1:
        raise ValueError(f"direct conv: output {out_size} does not fit input {x.shape}, "
                         f"kernel {KH}x{KW} and padding {padding}")
    return N, C, H, W, O, KH, KW, PH, PW, OH, OW


def _lib(dtype, name):
    suffix = "f32" if dtype == np.float32 else "f64"
    return getattr(backend.kernels()[1], f"direct_conv_{name}_{suffix}")


def _scratch(name, weight_grad, C, O, KH, KW, RX, dtype):
    """Per-thread scratch slices, sized by direct.c itself (direct_conv_scratch)."""
    per_thread = _lib(dtype, "scratch")(int(weight_grad), C, O, KH, KW, RX)
    return workspace.get(name, (backend.num_threads() * per_thread,), dtype)


def _windows(windows, size, out_size, kernel, padding):
    """The output rectangles (oy0, oy1, ox0, ox1) to compute, checked to lie in the output.

    None: the one rectangle of outputs that can see the image (``window``).
    """
    if windows is None:
        (oy0, oy1), (ox0, ox1) = (window(size[0], out_size[0], kernel[0], padding[0]),
                                  window(size[1], out_size[1], kernel[1], padding[1]))
        return [(oy0, oy1, ox0, ox1)]
    checked = []
    for rect in windows:
        oy0, oy1, ox0, ox1 = (int(v) for v in rect)
        if not (0 <= oy0 <= oy1 <= out_size[0] and 0 <= ox0 <= ox1 <= out_size[1]):
            raise ValueError(f"direct conv: window {rect} is not inside the output {out_size}")
        checked.append((oy0, oy1, ox0, ox1))
    return checked


def _channel_values(values, O, dtype, what):
    if not (isinstance(values, np.ndarray) and values.shape == (O,) and values.dtype == dtype
            and values.flags.c_contiguous):
        raise ValueError(f"direct conv: {what} must be a C-contiguous {dtype} array of shape ({O},)")
    return values


def _narrow(rect):
    """A window a few columns wide and taller than wide: better done transposed."""
    oy0, oy1, ox0, ox1 = rect
    return ox1 - ox0 < NARROW and oy1 - oy0 > ox1 - ox0


def _transposed_slab(x, kernel, padding, rect):
    """The input columns a window reads, transposed, and the window in that slab.

    y = conv(x, w) is y^T = conv(x^T, w^T) with the paddings swapped, so a window of
    a few columns becomes a few long rows.  x: (N, C, H, W) -> xt: (N, C, s1 - s0, H)
    holding x's columns [s0, s1); the window (oy0, oy1, ox0, ox1) of y is the window
    (ox0 - s0, ox1 - s0, oy0, oy1) of conv(xt, w^T, (PW, PH)).  Outside [s0, s1) that
    convolution sees zeros where x has values, but no output of the window reads there.
    """
    (_, _, _, W), (_, KW), (_, PW) = x.shape, kernel, padding
    oy0, oy1, ox0, ox1 = rect
    s0, s1 = max(ox0 - PW, 0), min(ox1 - PW + KW - 1, W)
    xt = np.ascontiguousarray(x[:, :, :, s0:s1].transpose(0, 1, 3, 2))
    return xt, (ox0 - s0, ox1 - s0, oy0, oy1)


def _transposed_weight(w):
    return np.ascontiguousarray(w.transpose(0, 1, 3, 2))


def conv_forward(x, w, padding, y=None, bias=None, windows=None, fill=None):
    """y = the stride-1 cross-correlation of x and w, plus bias; padding may be negative.

    x: (N, C, H, W), w: (O, C, KH, KW), padding: (PH, PW), bias: (O,) or None
    -> y: (N, O, OH, OW) with OH = H + 2*PH - KH + 1 (likewise OW); writes into ``y``
    when given.  The bias starts each sum (no second pass over y to add it).

    Only the outputs in ``windows`` (disjoint rectangles (oy0, oy1, ox0, ox1)) are
    computed; every other output is set to ``fill`` (O,).  The defaults: the one
    window of outputs that see the image, and fill = the bias (what an output that
    sees only padding is).  npfcn.band passes the few rectangles around FCN's
    constant border and the constant.
    """
    N, C, H, W, O, KH, KW, PH, PW, OH, OW = _check(x, w, padding)
    if y is None:
        y = np.empty((N, O, OH, OW), dtype=x.dtype)
    elif not (y.shape == (N, O, OH, OW) and y.dtype == x.dtype and y.flags.c_contiguous):
        raise ValueError(f"direct conv: out must be a C-contiguous {x.dtype} array {(N, O, OH, OW)}")
    if bias is not None:
        _channel_values(bias, O, x.dtype, "bias")
    if fill is None:
        fill = bias if bias is not None else np.zeros(O, dtype=x.dtype)
    _channel_values(fill, O, x.dtype, "fill")
    rects = _windows(windows, (H, W), (OH, OW), (KH, KW), (PH, PW))
    wb, wb_transposed = blocked_weight(w), None
    for k, rect in enumerate(rects):
        if k > 0 and _narrow(rect):
            xt, rect_t = _transposed_slab(x, (KH, KW), (PH, PW), rect)
            if wb_transposed is None:
                wb_transposed = blocked_weight(_transposed_weight(w))
            yt = np.empty((N, O, xt.shape[2] + 2 * PW - KW + 1, OH), dtype=x.dtype)
            _forward(xt, wb_transposed, bias, None, yt, (PW, PH), rect_t)
            a0, a1, b0, b1 = rect_t
            y[:, :, rect[0]:rect[1], rect[2]:rect[3]] = yt[:, :, a0:a1, b0:b1].transpose(0, 1, 3, 2)
        else:
            # The first call also writes every output outside its window; the later
            # ones (disjoint windows) then overwrite their own part of that fill.
            _forward(x, wb, bias, fill if k == 0 else None, y, (PH, PW), rect)
    return y


def _forward(x, wb, bias, fill, y, padding, rect):
    """y's window rect = conv(x) + bias (direct.c); the rest = fill, or left alone if None."""
    (N, C, H, W), (_, O, OH, OW) = x.shape, y.shape
    KH, KW = H + 2 * padding[0] - OH + 1, W + 2 * padding[1] - OW + 1
    oy0, oy1, ox0, ox1 = rect
    null = backend.kernels()[0].NULL
    scratch = _scratch("direct_stage", False, C, O, KH, KW, ox1 - ox0, x.dtype)
    _lib(x.dtype, "forward")(backend.pointer(x), backend.pointer(wb),
                             null if bias is None else backend.pointer(bias),
                             null if fill is None else backend.pointer(fill), backend.pointer(y),
                             N, C, H, W, O, KH, KW, *padding, OH, OW, oy0, oy1, ox0, ox1,
                             backend.pointer(scratch))


def _weight_grad(x, dy, dw, padding, rect):
    """dw (O, C, KH, KW) += the weight gradient of the outputs in rect (direct.c)."""
    (N, C, H, W), (O, _, KH, KW), (_, _, OH, OW) = x.shape, dw.shape, dy.shape
    oy0, oy1, ox0, ox1 = rect
    scratch = _scratch("direct_stage_dw", True, C, O, KH, KW, ox1 - ox0, x.dtype)
    _lib(x.dtype, "weight_grad")(backend.pointer(x), backend.pointer(dy), backend.pointer(dw),
                                 N, C, H, W, O, KH, KW, *padding, OH, OW, oy0, oy1, ox0, ox1,
                                 backend.pointer(scratch))


def flipped_transposed(w):
    """w: (O, C, KH, KW) -> (C, O, KH, KW) rotated by 180 degrees: the weights whose
    forward convolution is the input gradient of a convolution with w."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def conv_backward(dy, x, w, padding, dw2, windows=None):
    """Gradients of conv_forward: returns dx and ADDS the weight gradient into dw2.

    dy: (N, O, OH, OW) C-contiguous; x, w, padding as in forward; dw2: a C-contiguous
    array of O*C*KH*KW elements (the caller's zeros or accumulator).  The weight
    gradient sums over the outputs in ``windows`` only (as conv_forward: by default
    those that see the image; the others contribute nothing there).  dx is complete.
    """
    N, C, H, W, O, KH, KW, PH, PW, OH, OW = _check(x, w, padding, dy.shape[2:])
    if not (isinstance(dy, np.ndarray) and dy.dtype == x.dtype and dy.flags.c_contiguous
            and dy.shape == (N, O, OH, OW)):
        raise ValueError("direct conv: the output gradient must be C-contiguous, of x's dtype")
    if not (isinstance(dw2, np.ndarray) and dw2.dtype == x.dtype and dw2.flags.c_contiguous
            and dw2.size == w.size):
        raise ValueError(f"direct conv: dw must be a C-contiguous array of {w.size} values")
    for oy0, oy1, ox0, ox1 in _windows(windows, (H, W), (OH, OW), (KH, KW), (PH, PW)):
        if _narrow((oy0, oy1, ox0, ox1)):
            xt, (a0, a1, b0, b1) = _transposed_slab(x, (KH, KW), (PH, PW), (oy0, oy1, ox0, ox1))
            dyt = np.zeros((N, O, xt.shape[2] + 2 * PW - KW + 1, OH), dtype=x.dtype)
            dyt[:, :, a0:a1, b0:b1] = dy[:, :, oy0:oy1, ox0:ox1].transpose(0, 1, 3, 2)
            dwt = np.zeros((O, C, KW, KH), dtype=x.dtype)
            _weight_grad(xt, dyt, dwt, (PW, PH), (a0, a1, b0, b1))
            dw2.reshape(O, C, KH, KW)[...] += dwt.transpose(0, 1, 3, 2)
            continue
        _weight_grad(x, dy, dw2.reshape(w.shape), (PH, PW), (oy0, oy1, ox0, ox1))
    # dx[c, iy, ix] = sum w[o, c, i, j] dy[o, iy + PH - i, ix + PW - j]: a convolution of
    # dy with the flipped weights and padding KH-1-PH (negative: a crop).
    return conv_forward(dy, flipped_transposed(w), (KH - 1 - PH, KW - 1 - PW))
