"""Direct stride-1 convolution with vectors along the output channels (``csrc/channel_conv.c``).

The same sum as ``npfcn.kernels.direct.correlate``::

    y[n, o, oy, ox] = b[o] + sum_{c,i,j} w[o, c, i, j] * x[n, c, oy - PH + i, ox - PW + j]

for layers of exactly 64 output channels in float32 on CPUs with AVX-512.  direct.c
puts a row of outputs in its vectors, which wastes part of every block on a row of
60 or 30 (SegNet-Basic's small maps); this loop puts the 64 channels of 6
neighbouring pixels in 24 vectors, so that a block is always full and each tap's
weights are loaded once for 6 pixels.  ``applies`` says where it is used.

The input is padded here, once per call, into a zero-framed copy the C loop reads
without edge cases; with a fused ReLU's mask (the input gradient through a ReLU) the
masked input is what is copied.
"""
import numpy as np

from . import backend, boundary
from .workspace import workspace

OUT_CHANNELS = 64           # the C loop's 4 vectors of 16 floats
PIXELS = 6                  # output pixels per block (CHANNEL_CONV_PIXELS)
MIN_CHANNELS_3X3 = 32       # see applies
MIN_WEIGHT_GRAD_CHANNELS = 16


def available():
    """Whether the C loop runs here: the C kernel built, and a CPU with AVX-512."""
    return backend.c_available() and bool(backend.lib().channel_conv_supported())


def applies(dtype, C, O, KH, KW):
    """Whether ``direct.correlate`` (forward pass and input gradient) hands a call of C
    input and O output channels to this loop: float32, 64 outputs, on AVX-512, and a
    7x7 kernel (SegNet-Basic) or a 3x3 one from at least MIN_CHANNELS_3X3 inputs.

    Measured on Zen 4, 2 threads (docs/kernels.md): SegNet-Basic's 64 -> 64 7x7
    forward ran 180-207 GFLOP/s here at every size from 23x30 to 180x240, against
    126-207 in direct.c, whose 48-output blocks fill rows of 60 or 30 badly; 64 -> 64
    3x3 layers trained (forward + backward) faster here than by Winograd from 4 x 32x32
    (6.2-7.0 ms against 8.2-8.4) to 224x224 (73-76 against 83-100).
    """
    if np.dtype(dtype) != np.float32 or O != OUT_CHANNELS or not available():
        return False
    return min(KH, KW) >= 7 or ((KH, KW) == (3, 3) and C >= MIN_CHANNELS_3X3)


def applies_to_weight_grad(dtype, C, O, KH, KW):
    """Whether ``direct.correlate_grads`` takes the weight gradient from this loop: as
    ``applies``, for at least MIN_WEIGHT_GRAD_CHANNELS input channels (with 3, the first
    layer's, direct.c's dw7 loop was faster: 134-168 GFLOP/s against 104)."""
    return C >= MIN_WEIGHT_GRAD_CHANNELS and applies(dtype, C, O, KH, KW)


def correlate(x, w, padding, bias=None, relu=False, x_mask=None, out=None):
    """``direct.correlate`` for 64 output channels: the same arguments and result.

    x: (N, C, H, W) float32, w: (64, C, KH, KW), padding: (PH, PW) (negative crops),
    bias: (64,) or None, x_mask: (N, C, H, W) or None (x read as 0 where mask <= 0)
    -> y: (N, 64, OH, OW), OH = H + 2*PH - KH + 1 (likewise OW).
    """
    (N, C, H, W), (O, _, KH, KW) = x.shape, w.shape
    if O != OUT_CHANNELS or w.shape[1] != C:
        raise ValueError(f"channel conv: weight {w.shape} does not fit input {x.shape}")
    return _correlate(x, _weights(w, flipped=False), KH, KW, padding, bias, relu, x_mask, out)


def input_gradient(dy, w, padding, dy_mask=None):
    """dx of a convolution of 64 input channels: ``correlate`` of dy with the weights
    turned by 180 degrees (``gemm.flipped_transposed(w)``), without that copy of them.

    dy: (N, O, OH, OW) float32, w: (O, 64, KH, KW), padding: the layer's (PH, PW);
    dy_mask: a fused ReLU's output or None -> dx: (N, 64, H, W).
    """
    (N, O, OH, OW), (_, C, KH, KW) = dy.shape, w.shape
    if C != OUT_CHANNELS or w.shape[0] != O:
        raise ValueError(f"channel conv gradient: weight {w.shape} does not fit output "
                         f"gradient {dy.shape}")
    return _correlate(dy, _weights(w, flipped=True), KH, KW,
                      (KH - 1 - padding[0], KW - 1 - padding[1]), None, False, dy_mask, None)


def _weights(w, flipped):
    """The (C*KH*KW, 64) layout the C loop reads: w (64, C, KH, KW) with each tap's 64
    output channels side by side, or (flipped) the layer's w (O, 64, KH, KW) turned by
    180 degrees for its input gradient (csrc/channel_conv.c gives both formulas)."""
    w = np.ascontiguousarray(w)
    rows = w.shape[0] if flipped else w.shape[1]
    wt = workspace.get("channel_conv_weights", (rows * w.shape[2] * w.shape[3], OUT_CHANNELS),
                       w.dtype)
    boundary.check("channel conv weights", w.dtype, {"weight": (w, w.shape),
                                                     "weight layout": (wt, wt.shape)})
    P = boundary.pointer
    backend.lib().channel_conv_weights_f32(P(w), P(wt), rows, w.shape[2] * w.shape[3],
                                           int(flipped))
    return wt


def _correlate(x, wt, KH, KW, padding, bias, relu, x_mask, out):
    """y (N, 64, OH, OW) from x (N, C, H, W) and the weight layout wt (C*KH*KW, 64)."""
    (N, C, H, W), (PH, PW) = x.shape, padding
    OH, OW = H + 2 * PH - KH + 1, W + 2 * PW - KW + 1
    if wt.shape != (C * KH * KW, OUT_CHANNELS) or OH < 1 or OW < 1:
        raise ValueError(f"channel conv: a {KH}x{KW} kernel and padding {padding} do not "
                         f"fit input {x.shape}")
    xp = _padded_input(x, x_mask, KH, KW, padding, OH, OW)
    HP, WP = xp.shape[2:]
    y = np.empty((N, OUT_CHANNELS, OH, OW), dtype=x.dtype) if out is None else out
    boundary.check("channel conv", x.dtype, {
        "padded input": (xp, (N, C, HP, WP)), "weight": (wt, (C * KH * KW, OUT_CHANNELS)),
        "bias": (bias, (OUT_CHANNELS,)), "output": (y, (N, OUT_CHANNELS, OH, OW))})
    P = boundary.pointer
    if backend.lib().channel_conv_forward_f32(P(xp), P(wt), P(bias), P(y), int(bool(relu)),
                                              N, C, HP, WP, KH, KW, OH, OW) != 0:
        raise RuntimeError("channel conv: this CPU has no AVX-512 (check available() first)")
    return y


def weight_grad(dy, x, KH, KW, padding, dw2, dy_mask=None, db=None):
    """ADDS the weight gradient of ``correlate`` into dw2 (and the bias gradient into db).

    dy: (N, 64, OH, OW), x: (N, C, H, W) float32, padding: (PH, PW); dw2: the caller's
    O*C*KH*KW array (zeros or an accumulator), (O, C, KH, KW) in order; dy_mask: the
    output of a fused ReLU or None (dy counts where it is > 0); db: (64,) or None.
    """
    (N, O, OH, OW), (_, C, H, W) = dy.shape, x.shape
    if O != OUT_CHANNELS or x.shape[0] != N or OH != H + 2 * padding[0] - KH + 1 \
            or OW != W + 2 * padding[1] - KW + 1:
        raise ValueError(f"channel conv gradient: output gradient {dy.shape} does not fit "
                         f"input {x.shape}, kernel {KH}x{KW} and padding {padding}")
    xp = _padded_input(x, None, KH, KW, padding, OH, OW)
    HP, WP = xp.shape[2:]
    lib, threads = backend.lib(), backend.num_threads()
    partial = workspace.get("channel_conv_dw", (threads, C * KH * KW * O + O), np.float64)
    dy_band = workspace.get("channel_conv_dy", (threads, lib.channel_conv_dw_band_floats(OW)),
                            x.dtype)
    boundary.check("channel conv gradient", x.dtype, {
        "padded input": (xp, (N, C, HP, WP)), "output gradient": (dy, (N, O, OH, OW)),
        "output mask": (dy_mask, (N, O, OH, OW)), "weight gradient": (dw2, O * C * KH * KW),
        "bias gradient": (db, (O,)), "dy band": (dy_band, dy_band.shape)})
    boundary.check("channel conv gradient", np.float64, {"partial sums": (partial, partial.shape)})
    P = boundary.pointer
    if lib.channel_conv_weight_grad_f32(P(xp), P(dy), P(dy_mask), P(dw2), P(db), N, C, HP, WP,
                                        KH, KW, OH, OW, P(partial), P(dy_band)) != 0:
        raise RuntimeError("channel conv: this CPU has no AVX-512 (check available() first)")


def _padded_input(x, x_mask, KH, KW, padding, OH, OW):
    """The zero-framed copy of x the C loops read: (N, C, OH + KH - 1, WP) with
    WP = round_up(OW, 6) + KW - 1; x placed at offset padding (a negative one crops),
    read as 0 where x_mask <= 0 when a mask is given (csrc/channel_conv.c)."""
    (N, C, H, W), (PH, PW) = x.shape, padding
    HP, WP = OH + KH - 1, -(-OW // PIXELS) * PIXELS + KW - 1
    xp = workspace.get("channel_conv_input", (N, C, HP, WP), x.dtype)
    x = np.ascontiguousarray(x)
    x_mask = None if x_mask is None else np.ascontiguousarray(x_mask)
    boundary.check("channel conv padding", x.dtype, {
        "input": (x, (N, C, H, W)), "input mask": (x_mask, (N, C, H, W)),
        "padded input": (xp, (N, C, HP, WP))})
    P = boundary.pointer
    backend.lib().channel_conv_pad_f32(P(x), P(x_mask), P(xp), N, C, H, W, HP, WP, PH, PW)
    return xp
