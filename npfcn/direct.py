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
130x130 is zero before the bias): ``window`` finds it.
"""
import numpy as np

from . import backend
from .workspace import workspace

MAX_CHANNELS = 32   # measured crossover with Winograd/im2col, see applies()
BLOCK = 4           # output channels per register block (NPFCN_OB in direct.c)


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


def vector_bytes(request=0):
    """The vector width, in bytes, of the C forward pass: 64 (AVX-512) or 32 (AVX2 and
    the rest; twelve 64-byte accumulators do not fit AVX2's sixteen registers).

    request 0 only reports it; 32 or 64 chooses it where the CPU can run it (tests run
    both builds on a CPU that has AVX-512).  None without the C kernel.
    """
    if not backend.c_available():
        return None
    if request not in (0, 32, 64):
        raise ValueError(f"vector width must be 0, 32 or 64 bytes, got {request!r}")
    return int(backend.kernels()[1].direct_conv_vector_bytes(request))


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


def _check_mask(mask, like, what):
    """A ReLU mask must have exactly the shape, dtype and layout of what it masks."""
    if mask is not None and not (isinstance(mask, np.ndarray) and mask.shape == like.shape
                                 and mask.dtype == like.dtype and mask.flags.c_contiguous):
        raise ValueError(f"direct conv: the mask of the {what} must be a C-contiguous "
                         f"{like.dtype} array of shape {like.shape}")
    return mask


def _channel_values(values, O, dtype, what):
    if not (isinstance(values, np.ndarray) and values.shape == (O,) and values.dtype == dtype
            and values.flags.c_contiguous):
        raise ValueError(f"direct conv: {what} must be a C-contiguous {dtype} array of shape ({O},)")
    return values


def _pointer_or_null(array):
    return backend.kernels()[0].NULL if array is None else backend.pointer(array)


def conv_forward(x, w, padding, y=None, bias=None, relu=False, x_mask=None):
    """y = the stride-1 cross-correlation of x and w, plus bias; padding may be negative.

    x: (N, C, H, W), w: (O, C, KH, KW), padding: (PH, PW), bias: (O,) or None
    -> y: (N, O, OH, OW) with OH = H + 2*PH - KH + 1 (likewise OW); writes into ``y``
    when given.  The bias starts each sum (no second pass over y to add it).
    relu: store max(y, 0) (a fused ReLU).  x_mask: (N, C, H, W) or None; the input is
    read as x where x_mask > 0, else 0 (the input gradient through a fused ReLU).
    """
    N, C, H, W, O, KH, KW, PH, PW, OH, OW = _check(x, w, padding)
    if y is None:
        y = np.empty((N, O, OH, OW), dtype=x.dtype)
    elif not (y.shape == (N, O, OH, OW) and y.dtype == x.dtype and y.flags.c_contiguous):
        raise ValueError(f"direct conv: out must be a C-contiguous {x.dtype} array {(N, O, OH, OW)}")
    if bias is not None:
        _channel_values(bias, O, x.dtype, "bias")
    _check_mask(x_mask, x, "input")
    (oy0, oy1), (ox0, ox1) = window(H, OH, KH, PH), window(W, OW, KW, PW)
    scratch = _scratch("direct_stage", False, C, O, KH, KW, ox1 - ox0, x.dtype)
    wb = blocked_weight(w)
    _lib(x.dtype, "forward")(backend.pointer(x), _pointer_or_null(x_mask), backend.pointer(wb),
                             _pointer_or_null(bias), backend.pointer(y), int(bool(relu)),
                             N, C, H, W, O, KH, KW, PH, PW, OH, OW, oy0, oy1, ox0, ox1,
                             backend.pointer(scratch))
    return y


def _outside_window_sums(dy, dy_mask, rect):
    """The bias gradient of the outputs outside the window (the kernel adds the window's).

    Those outputs see only padding: each is its channel's bias, and so is its ReLU
    mask - one value per channel, read at one such output.  (FCN's conv1_1, padded by
    100, is the layer with such outputs: 84 % of them for a 128x128 image.)
    """
    (N, O, OH, OW), (oy0, oy1, ox0, ox1) = dy.shape, rect
    total = dy.reshape(N * O, OH * OW) @ np.ones(OH * OW, dtype=dy.dtype)
    inside = dy[:, :, oy0:oy1, ox0:ox1].sum(axis=(2, 3))
    outside = (total.reshape(N, O) - inside).sum(axis=0)
    if dy_mask is not None:
        row, col = (0, 0) if oy0 > 0 or ox0 > 0 else (OH - 1, 0) if oy1 < OH else (0, OW - 1)
        outside = np.where(dy_mask[0, :, row, col] > 0, outside, 0).astype(dy.dtype)
    return outside


def flipped_transposed(w):
    """w: (O, C, KH, KW) -> (C, O, KH, KW) rotated by 180 degrees: the weights whose
    forward convolution is the input gradient of a convolution with w."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


def conv_backward(dy, x, w, padding, dw2, dy_mask=None, db=None):
    """Gradients of conv_forward: returns dx and ADDS the weight gradient into dw2.

    dy: (N, O, OH, OW) C-contiguous; x, w, padding as in forward; dw2: a C-contiguous
    array of O*C*KH*KW elements (the caller's zeros or accumulator).  dy_mask: the
    output of a fused ReLU, (N, O, OH, OW), or None: dy counts only where it is > 0.
    db: an (O,) array to ADD the bias gradient into, or None.
    """
    N, C, H, W, O, KH, KW, PH, PW, OH, OW = _check(x, w, padding, dy.shape[2:])
    if not (isinstance(dy, np.ndarray) and dy.dtype == x.dtype and dy.flags.c_contiguous
            and dy.shape == (N, O, OH, OW)):
        raise ValueError("direct conv: the output gradient must be C-contiguous, of x's dtype")
    if not (isinstance(dw2, np.ndarray) and dw2.dtype == x.dtype and dw2.flags.c_contiguous
            and dw2.size == w.size):
        raise ValueError(f"direct conv: dw must be a C-contiguous array of {w.size} values")
    _check_mask(dy_mask, dy, "output gradient")
    if db is not None:
        _channel_values(db, O, x.dtype, "db")
    (oy0, oy1), (ox0, ox1) = window(H, OH, KH, PH), window(W, OW, KW, PW)
    scratch = _scratch("direct_stage_dw", True, C, O, KH, KW, ox1 - ox0, x.dtype)
    _lib(x.dtype, "weight_grad")(backend.pointer(x), backend.pointer(dy),
                                 _pointer_or_null(dy_mask), backend.pointer(dw2),
                                 _pointer_or_null(db),
                                 N, C, H, W, O, KH, KW, PH, PW, OH, OW, oy0, oy1, ox0, ox1,
                                 backend.pointer(scratch))
    if db is not None and N > 0 and (oy0, oy1, ox0, ox1) != (0, OH, 0, OW):
        db += _outside_window_sums(dy, dy_mask, (oy0, oy1, ox0, ox1))
    # dx[c, iy, ix] = sum w[o, c, i, j] dy[o, iy + PH - i, ix + PW - j]: a convolution of
    # dy with the flipped weights and padding KH-1-PH (negative: a crop).
    return conv_forward(dy, flipped_transposed(w), (KH - 1 - PH, KW - 1 - PW), x_mask=dy_mask)
