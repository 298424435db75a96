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
MIN_KERNEL = 7              # where it beat direct.c (see applies)


def available():
    """Whether the C loop runs here: the C kernel built, and a CPU with AVX-512."""
    return backend.c_available() and bool(backend.lib().channel_conv_supported())


def applies(dtype, O, KH, KW):
    """Whether ``direct.correlate`` hands a call of O output channels to this loop.

    Measured on Zen 4 (docs/kernels.md): SegNet-Basic's 64 -> 64 7x7 layers ran
    faster here at every size from 23x30 to 180x240.
    """
    return (np.dtype(dtype) == np.float32 and O == OUT_CHANNELS and min(KH, KW) >= MIN_KERNEL
            and available())


def correlate(x, w, padding, bias=None, relu=False, x_mask=None, out=None):
    """``direct.correlate`` for 64 output channels: the same arguments and result.

    x: (N, C, H, W) float32, w: (64, C, KH, KW), padding: (PH, PW) (negative crops),
    bias: (64,) or None, x_mask: (N, C, H, W) or None (x read as 0 where mask <= 0)
    -> y: (N, 64, OH, OW), OH = H + 2*PH - KH + 1 (likewise OW).
    """
    (N, C, H, W), (O, _, KH, KW), (PH, PW) = x.shape, w.shape, padding
    OH, OW = H + 2 * PH - KH + 1, W + 2 * PW - KW + 1
    if O != OUT_CHANNELS or w.shape[1] != C or OH < 1 or OW < 1:
        raise ValueError(f"channel conv: weight {w.shape} and padding {padding} do not "
                         f"fit input {x.shape}")
    HP, WP = OH + KH - 1, -(-OW // PIXELS) * PIXELS + KW - 1
    xp = workspace.get("channel_conv_input", (N, C, HP, WP), x.dtype)
    xp.fill(0)
    # input rows/columns [lo, hi) land at padded offset lo + P (P < 0: a crop)
    ry0, ry1 = max(0, -PH), min(H, HP - PH)
    rx0, rx1 = max(0, -PW), min(W, WP - PW)
    if ry1 > ry0 and rx1 > rx0:
        inner = xp[:, :, ry0 + PH:ry1 + PH, rx0 + PW:rx1 + PW]
        if x_mask is None:
            inner[...] = x[:, :, ry0:ry1, rx0:rx1]
        else:
            np.copyto(inner, x[:, :, ry0:ry1, rx0:rx1], where=x_mask[:, :, ry0:ry1, rx0:rx1] > 0)
    wt = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(C * KH * KW, O))
    y = np.empty((N, O, OH, OW), dtype=x.dtype) if out is None else out
    boundary.check("channel conv", x.dtype, {
        "padded input": (xp, (N, C, HP, WP)), "weight": (wt, (C * KH * KW, O)),
        "bias": (bias, (O,)), "output": (y, (N, O, OH, OW))})
    P = boundary.pointer
    if backend.lib().channel_conv_forward_f32(P(xp), P(wt), P(bias), P(y), int(bool(relu)),
                                              N, C, HP, WP, KH, KW, OH, OW) != 0:
        raise RuntimeError("channel conv: this CPU has no AVX-512 (check available() first)")
    return y
