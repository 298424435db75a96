"""Direct stride-1 convolution for layers with few channels (``csrc/direct.c``).

Equals ``npfcn.reference.conv.conv2d_forward`` / ``conv2d_backward`` for stride 1
and no dilation (to float rounding; a fused ReLU equals the reference's
``relu_forward`` after it).

With 4 to 32 channels (FCN-8s at width 1/16) the matrix products of the im2col
and Winograd paths are tiny, and what they cost is building their operands:
im2col copies every input pixel KH*KW times, Winograd 4 times.  This path
computes each output row straight from the (at most C*KH) input rows it needs,
staged in a small buffer that stays in cache::

    y[n, o, oy, ox] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, oy - PH + i, ox - PW + j]

The backward pass reuses it: the input gradient is the same kind of
convolution of dy with the flipped, transposed weights (padding KH-1-PH, which
is negative for FCN's conv1_1 and then crops), and the weight gradient sums
``dy * x`` over the same staged rows.

Only the output window that can see the image is computed (with FCN's padding
of 100, conv1_1's output is 326x326 for a 128x128 image, and all but the middle
130x130 is its bias): ``window`` finds it.
"""
import numpy as np

from . import backend, boundary, channel
from .gemm import channel_sums, flipped_transposed, grad_bands, through_relu
from .workspace import workspace

CHANNEL_GROUP = 4   # output channels computed together in registers (NPFCN_OB in direct.c)


def window(size, out_size, kernel, pad):
    """[lo, hi): the outputs along one axis whose receptive field overlaps the input.

    Output o reads inputs o - pad .. o - pad + kernel - 1; it sees the image
    [0, size) when o - pad + kernel - 1 >= 0 and o - pad < size.
    """
    lo = min(max(0, pad - kernel + 1), out_size)
    hi = max(min(out_size, size + pad), lo)
    return lo, hi


def grouped_weight(w):
    """w: (O, C, KH, KW) -> (ceil(O/4), C*KH*KW, 4): the 4 channels of a group side by
    side per tap, zeros past O (the layout direct.c reads)."""
    O = w.shape[0]
    groups = -(-O // CHANNEL_GROUP)
    wg = np.zeros((groups * CHANNEL_GROUP, w[0].size), dtype=w.dtype)
    wg[:O] = w.reshape(O, -1)
    return np.ascontiguousarray(wg.reshape(groups, CHANNEL_GROUP, -1).transpose(0, 2, 1))


def vector_bytes(request=0):
    """The widest vector, in bytes, the C forward pass may use: 64 (AVX-512) or 32 (AVX2
    and the rest; twelve 64-byte accumulators do not fit AVX2's sixteen registers).
    Each call then takes the width ``forward_layout`` says, at most this one.

    request 0 only reports it; 32 or 64 chooses it where the CPU can run it (tests run
    both builds on a CPU that has AVX-512).  None without the C kernel.
    """
    if not backend.c_available():
        return None
    if request not in (0, 32, 64):
        raise ValueError(f"vector width must be 0, 32 or 64 bytes, got {request!r}")
    return int(backend.lib().direct_conv_vector_bytes(request))


L1_BYTES = 32 << 10
WIDE_SPEED_IN_L1, WIDE_SPEED_BEYOND_L1 = 1.12, 0.85
ROWS_MIN_FILL = 0.95            # the row layout's blocks must be this full ...
ROWS_MIN_CHANNEL_PAIRS = 128    # ... and the layer this wide (in x out) to beat flat


def forward_layout(C, O, KH, KW, RX, itemsize):
    """(vector width in bytes, flat) for a forward call whose output window is RX wide.

    Two layouts (csrc/direct.c).  Rows: each output row is a task, computed in blocks
    of 3 vectors (48 floats in 64-byte vectors, 24 in 32-byte ones), the last block
    whole: 30 outputs fill 62 % of a 48-wide block.  Flat: a band of rows is one
    sequence, its blocks run across row ends (30 of every 36 positions are outputs),
    and a task is a band, not a row.  Flat beat rows on every narrow layer measured
    (16 -> 16 @82: 141 against 102 GFLOP/s; 4 -> 4 @328: 92 against 78) and on rows
    that fill their blocks badly (64 -> 64 7x7 @23x30: 137 against 114); rows won on
    wide layers whose rows fill their blocks (64 -> 64 7x7 @90x120: 193 against 176;
    3 -> 64 7x7 @180x240: 156 against 145), where staging a band costs more than the
    waste it saves (Zen 4, docs/kernels.md).

    The width, in the row layout: a wide block wastes more of a short row, and the wide
    build pays for its loads: every tap but the first reads at an unaligned offset, a
    64-byte load then spans two cache lines, and once the staged rows (C*KH of them)
    outgrow the L1 cache that costs more than the wider arithmetic gains; the two speeds
    per useful output (WIDE_SPEED_*) are Zen 4's.  The flat layout wastes no block on a
    row's end, and there 64 bytes was as fast or faster on every layer measured on a
    quiet Zen 4 (64 -> 64 7x7 @23x30: 127-135 GFLOP/s against 108-112; 16 -> 16 @82:
    92-115 against 87-96).
    """
    rows = block_fill(RX, itemsize, 32) >= ROWS_MIN_FILL and C * O >= ROWS_MIN_CHANNEL_PAIRS
    if not rows:
        return vector_bytes() or 32, True
    if vector_bytes() != 64:
        return 32, False
    stage_bytes = C * KH * (RX + KW - 1 + 3 * 64 // itemsize) * itemsize
    wide = WIDE_SPEED_IN_L1 if stage_bytes <= L1_BYTES else WIDE_SPEED_BEYOND_L1
    return (64 if block_fill(RX, itemsize, 64) * wide > block_fill(RX, itemsize, 32) else 32), False


def block_fill(RX, itemsize, width=32):
    """The share of the blocks of 3 vectors of ``width`` bytes that a row of RX outputs
    fills (its last block is computed whole)."""
    block = 3 * width // itemsize
    return RX / (-(-RX // block) * block)


def _lib(dtype, name):
    return getattr(backend.lib(), f"direct_conv_{name}_{boundary.suffix(dtype)}")


def _scratch(name, weight_grad, C, O, KH, KW, RX, dtype):
    """Per-thread scratch slices, sized by direct.c itself (direct_conv_scratch)."""
    per_thread = _lib(dtype, "scratch")(int(weight_grad), C, O, KH, KW, RX)
    return workspace.get(name, (backend.num_threads() * per_thread,), dtype)


def _geometry(x, w, padding):
    """(N, C, H, W, O, KH, KW, PH, PW, OH, OW) of a stride-1 convolution; ValueError
    when the output would be empty."""
    if getattr(x, "ndim", 0) != 4 or getattr(w, "ndim", 0) != 4 or w.shape[1] != x.shape[1]:
        raise ValueError(f"direct conv: weight {getattr(w, 'shape', w)} does not fit input "
                         f"{getattr(x, 'shape', x)}")
    (N, C, H, W), (O, _, KH, KW), (PH, PW) = x.shape, w.shape, padding
    OH, OW = H + 2 * PH - KH + 1, W + 2 * PW - KW + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"direct conv: input {x.shape}, kernel {KH}x{KW} and padding "
                         f"{padding} give no output")
    return N, C, H, W, O, KH, KW, PH, PW, OH, OW


def correlate(x, w, padding, bias=None, relu=False, x_mask=None, out=None):
    """y = the stride-1 cross-correlation of x and w, plus bias; padding may be negative.

    x: (N, C, H, W), w: (O, C, KH, KW), padding: (PH, PW), bias: (O,) or None
    -> y: (N, O, OH, OW) with OH = H + 2*PH - KH + 1 (likewise OW), written into
    ``out`` when given.  The bias starts each sum (no second pass over y to add it).
    relu: store max(y, 0) (a fused ReLU).  x_mask: (N, C, H, W) or None; the input is
    read as x where x_mask > 0, else 0 (the input gradient through a fused ReLU).
    """
    N, C, H, W, O, KH, KW, PH, PW, OH, OW = _geometry(x, w, padding)
    if channel.applies(x.dtype, C, O, KH, KW):      # 64 outputs: see npfcn.kernels.channel
        return channel.correlate(x, w, padding, bias=bias, relu=relu, x_mask=x_mask, out=out)
    y = np.empty((N, O, OH, OW), dtype=x.dtype) if out is None else out
    wg = grouped_weight(w)
    boundary.check("direct conv", x.dtype, {
        "input": (x, (N, C, H, W)), "input mask": (x_mask, (N, C, H, W)),
        "grouped weight": (wg, (-(-O // CHANNEL_GROUP), C * KH * KW, CHANNEL_GROUP)),
        "bias": (bias, (O,)), "output": (y, (N, O, OH, OW))})
    (oy0, oy1), (ox0, ox1) = window(H, OH, KH, PH), window(W, OW, KW, PW)
    scratch = _scratch("direct_stage", False, C, O, KH, KW, ox1 - ox0, x.dtype)
    P = boundary.pointer
    width, flat = forward_layout(C, O, KH, KW, ox1 - ox0, x.itemsize)
    _lib(x.dtype, "forward")(P(x), P(x_mask), P(wg), P(bias), P(y), int(bool(relu)),
                             N, C, H, W, O, KH, KW, PH, PW, OH, OW, oy0, oy1, ox0, ox1,
                             P(scratch), width, int(flat))
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


def correlate_grads(dy, x, w, padding, dw2, dy_mask=None, db=None, input_gradient=True):
    """Gradients of ``correlate``: returns dx and ADDS the weight gradient into dw2.

    dy: (N, O, OH, OW); x, w, padding as in forward; dw2: an array of O*C*KH*KW
    elements (the caller's zeros or accumulator).  dy_mask: the output of a fused
    ReLU, (N, O, OH, OW), or None: dy counts only where it is > 0.
    db: an (O,) array to ADD the bias gradient into, or None.
    """
    N, C, H, W, O, KH, KW, PH, PW, OH, OW = _geometry(x, w, padding)
    boundary.check("direct conv gradient", x.dtype, {
        "input": (x, (N, C, H, W)), "output gradient": (dy, (N, O, OH, OW)),
        "output mask": (dy_mask, (N, O, OH, OW)), "weight gradient": (dw2, O * C * KH * KW),
        "bias gradient": (db, (O,))})
    if channel.applies_to_weight_grad(x.dtype, C, O, KH, KW):     # see npfcn.kernels.channel
        channel.weight_grad(dy, x, KH, KW, padding, dw2, dy_mask=dy_mask, db=db)
    else:
        (oy0, oy1), (ox0, ox1) = window(H, OH, KH, PH), window(W, OW, KW, PW)
        scratch = _scratch("direct_stage_dw", True, C, O, KH, KW, ox1 - ox0, x.dtype)
        P = boundary.pointer
        _lib(x.dtype, "weight_grad")(P(x), P(dy), P(dy_mask), P(dw2), P(db),
                                     N, C, H, W, O, KH, KW, PH, PW, OH, OW, oy0, oy1, ox0, ox1,
                                     P(scratch))
        if db is not None and N > 0 and (oy0, oy1, ox0, ox1) != (0, OH, 0, OW):
            db += _outside_window_sums(dy, dy_mask, (oy0, oy1, ox0, ox1))
    if not input_gradient:
        return None
    # dx[c, iy, ix] = sum w[o, c, i, j] dy[o, iy + PH - i, ix + PW - j]: a convolution of
    # dy with the flipped weights and padding KH-1-PH (negative: a crop).
    if channel.applies(x.dtype, O, C, KH, KW):      # its weight layout straight from w
        return channel.input_gradient(dy, w, padding, dy_mask=dy_mask)
    return correlate(dy, flipped_transposed(w), (KH - 1 - PH, KW - 1 - PW), x_mask=dy_mask)


# --- the signatures npfcn.kernels.dispatch expects (see npfcn.kernels.gemm) ----------

def direct_conv(x, w, b, g, relu):
    """The stride-1 convolution of geometry g with bias and fused ReLU done in C."""
    return correlate(x, w, (g[4], g[5]), bias=b, relu=relu)


def direct_conv_grads(dy, x, w, has_bias, g, relu_y, dw2, input_gradient=True):
    """(dx, db): the fused ReLU's mask is read as dy is staged, db summed alongside."""
    db = np.zeros(w.shape[0], dtype=x.dtype) if has_bias else None
    dx = correlate_grads(dy, x, w, (g[4], g[5]), dw2, dy_mask=relu_y, db=db,
                         input_gradient=input_gradient)
    return dx, db


def large_kernel_grads(dy, x, w, has_bias, g, relu_y, dw2, input_gradient=True):
    """(dx, db) for kernels larger than 5x5 (``dispatch``'s path ``direct_large``): dx
    from the direct forward pass; the weight gradient from ``correlate_grads`` where it
    has a register-blocked loop for the kernel (7 wide, with AVX-512's 32 vector
    registers: channel.py for 64 outputs, else direct.c's dw7), else by im2col + matmul
    in bands (``gemm.grad_bands``), which beats direct.c's one dot product per weight."""
    if g[1] == 7 and vector_bytes() == 64:
        return direct_conv_grads(dy, x, w, has_bias, g, relu_y, dw2, input_gradient)
    dy = through_relu(dy, relu_y)
    KH, KW, PH, PW = g[0], g[1], g[4], g[5]
    grad_bands(dy, x, g, dw2)
    dx = correlate(dy, flipped_transposed(w), (KH - 1 - PH, KW - 1 - PW)) if input_gradient else None
    return dx, channel_sums(dy) if has_bias else None
