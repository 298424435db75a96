"""Transposed convolution by sub-pixel phases, for kernels that are a multiple of the stride.

Equals ``npfcn.reference.conv.conv_transpose2d_forward`` / ``conv_transpose2d_backward``
(to float rounding) when KH % SH == 0, KW % SW == 0 and there is no dilation.

The im2col route computes a transposed convolution as ``cols = W^T x`` followed
by col2im, which adds every one of the KH*KW*O rows back onto the output: for
FCN-8s's ``upscore8`` (21 channels, kernel 16, stride 8) the columns are four
times the size of the output and the scatter-add is most of the time.

Split the output by phase instead.  Output pixel ``oy`` (top padding PH) sits
in grid row ``qy = (oy + PH) // SH`` at phase ``ry = (oy + PH) % SH``, and the
input rows that reach it are ``qy - a`` for ``a = 0 .. KH/SH - 1``, through
kernel row ``ry + SH*a``.  So, for each of the SH*SW phases, the output is an
ordinary small correlation of the input with a (KH/SH x KW/SW) slice of the
kernel::

    y[n, o, SH*qy + ry - PH, SW*qx + rx - PW]
        = sum_{c, a, b} x[n, c, qy - a, qx - b] * w[c, o, ry + SH*a, rx + SW*b]

All phases are ONE matrix product over an im2col of the input with the small
kernel (rows (c, a, b), padding KH/SH - 1 so that the grid covers every output
pixel)::

    phases (SH*SW*O, N*GH*GW) = Wp (SH*SW*O, C*KqH*KqW) @ cols (C*KqH*KqW, N*GH*GW)

with the same number of multiplications as before, but an output-sized result
that is moved (not added) into place: ``phases_to_image`` in csrc/subpixel.c.
Backward is the transpose of each step: gather dy into phases, then
``dcols = Wp^T dphases`` (col2im gives dx) and ``dWp = dphases cols^T``
(rearranged back into dw).

FCN's bilinear upsampling layers (kernel 2s, stride s) all go this way.
"""
import numpy as np

from . import backend, boundary
from .bands import col2im_bands, im2col_bands
from .gemm import channel_sums
from .workspace import workspace


def _geometry(x_shape, w_shape, stride):
    """Taps per phase (KqH, KqW), grid (GH, GW) and the small kernel's im2col geometry."""
    _, _, H, W = x_shape
    _, _, KH, KW = w_shape
    SH, SW = stride
    KqH, KqW = KH // SH, KW // SW
    GH, GW = H + KqH - 1, W + KqW - 1
    g = (KqH, KqW, 1, 1, KqH - 1, KqW - 1, 1, 1, GH, GW)
    return KqH, KqW, GH, GW, g


def phase_weights(w, stride):
    """w: (C, O, KH, KW) -> Wp: (SH*SW*O, C*KqH*KqW), Wp[(ry,rx,o), (c,a,b)] =
    w[c, o, ry + SH*(KqH-1-a), rx + SW*(KqW-1-b)].

    (a counts from the top of the im2col window, which reads input row
    qy - (KqH-1) + a: the kernel row index runs the other way, hence the flip.)
    """
    C, O, KH, KW = w.shape
    SH, SW = stride
    KqH, KqW = KH // SH, KW // SW
    w6 = w.reshape(C, O, KqH, SH, KqW, SW)[:, :, ::-1, :, ::-1, :]   # (c, o, a, ry, b, rx)
    return np.ascontiguousarray(w6.transpose(3, 5, 1, 0, 2, 4)).reshape(SH * SW * O, -1)


def add_phase_weight_gradient(dw, dWp, stride):
    """dw (C, O, KH, KW) += dWp rearranged back: the adjoint of ``phase_weights``."""
    C, O, KH, KW = dw.shape
    SH, SW = stride
    KqH, KqW = KH // SH, KW // SW
    d6 = dWp.reshape(SH, SW, O, C, KqH, KqW).transpose(3, 2, 4, 0, 5, 1)  # (c, o, a, ry, b, rx)
    dw.reshape(C, O, KqH, SH, KqW, SW)[...] += d6[:, :, ::-1, :, ::-1, :]


def _move(name, src, dst, N, O, stride, GH, GW, out_size, pad):
    """Call phases_to_image / image_to_phases (see csrc/subpixel.c) after checking sizes."""
    (SH, SW), (OH, OW), (PH, PW) = stride, out_size, pad
    if min(PH, PW) < 0:
        raise ValueError(f"subpixel: padding {pad} must not be negative")
    shapes = {"phases": SH * SW * O * N * GH * GW, "image": N * O * OH * OW}
    phases, image = (src, dst) if name == "phases_to_image" else (dst, src)
    boundary.check("subpixel", src.dtype, {"phases": (phases, shapes["phases"]),
                                           "image": (image, shapes["image"])})
    fn = getattr(backend.lib(), f"{name}_{boundary.suffix(src.dtype)}")
    fn(boundary.pointer(src), boundary.pointer(dst), N, O, SH, SW, GH, GW, OH, OW, PH, PW)


def upsample(x, w, stride, pad, out_size):
    """x: (N, C, H, W), w: (C, O, KH, KW) -> (y: (N, O, OH, OW), Wp), no bias.

    pad: the top/left padding (PH, PW); out_size: (OH, OW).  Callers have checked
    the geometry (npfcn.functional.conv_transpose2d_forward).  Wp, the phase
    weights, is returned for the backward pass (it is as small as w).
    """
    N, C, H, W = x.shape
    O = w.shape[1]
    KqH, KqW, GH, GW, g = _geometry(x.shape, w.shape, stride)
    boundary.check_size(C * KqH * KqW * N * GH * GW, "conv_transpose2d phase columns")
    boundary.check_size(stride[0] * stride[1] * O * N * GH * GW, "conv_transpose2d phases")
    cols = workspace.get("subpixel_cols", (C * KqH * KqW, N * GH * GW), x.dtype)
    im2col_bands(x, g, (0, GH), cols)
    phases = workspace.get("subpixel_phases", (stride[0] * stride[1] * O, N * GH * GW), x.dtype)
    Wp = phase_weights(w, stride)
    np.matmul(Wp, cols, out=phases)
    y = np.empty((N, O, *out_size), dtype=x.dtype)
    _move("phases_to_image", phases, y, N, O, stride, GH, GW, out_size, pad)
    return y, Wp


def upsample_grads(dy, x, Wp, stride, pad, dw):
    """Returns dx: (N, C, H, W) and ADDS the weight gradient into dw: (C, O, KH, KW).

    dy: (N, O, OH, OW) C-contiguous, of x's dtype; Wp: the forward pass's phase weights.
    """
    N, C, H, W = x.shape
    O = dw.shape[1]
    KqH, KqW, GH, GW, g = _geometry(x.shape, dw.shape, stride)
    dphases = workspace.get("subpixel_phases", (stride[0] * stride[1] * O, N * GH * GW), x.dtype)
    _move("image_to_phases", dy, dphases, N, O, stride, GH, GW, dy.shape[2:], pad)
    dcols = workspace.get("subpixel_dcols", (C * KqH * KqW, N * GH * GW), x.dtype)
    np.matmul(Wp.T, dphases, out=dcols)
    dx = np.zeros((N, C, H, W), dtype=x.dtype)
    col2im_bands(dcols, dx, g, (0, GH))
    cols = workspace.get("subpixel_cols", dcols.shape, x.dtype)
    im2col_bands(x, g, (0, GH), cols)
    add_phase_weight_gradient(dw, dphases @ cols.T, stride)
    return dx


# --- the signatures npfcn.kernels.dispatch expects (see npfcn.kernels.gemm) ----------

def subpixel_transposed_conv(x, w, b, g, out_size):
    """(y, Wp): the transposed convolution of geometry g by phases, plus the bias."""
    y, Wp = upsample(x, w, (g[2], g[3]), (g[4], g[5]), out_size)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y, Wp


def subpixel_transposed_conv_grads(dy, x, w, has_bias, g, Wp, dw2):
    """(dx, db); the weight gradient is added into dw2 (w's (C, O*KH*KW) view)."""
    dx = upsample_grads(dy, x, Wp, (g[2], g[3]), (g[4], g[5]), dw2.reshape(w.shape))
    return dx, channel_sums(dy) if has_bias else None
