"""Convolution and transposed convolution: im2col + matmul, and matmul + col2im.

Shapes and weight layouts follow PyTorch::

    conv2d:            x (N, C, H, W),  w (O, C, KH, KW)  ->  y (N, O, OH, OW)
    conv_transpose2d:  x (N, C, H, W),  w (C, O, KH, KW)  ->  y (N, O, OH, OW)

The convolution gathers (im2col), then multiplies.  The transposed convolution
is its adjoint: it multiplies by the transposed weight, then scatters (col2im).
So the forward pass of one is the input-gradient of the other, and the two
backward passes below are the two forward passes read the other way round.

Each ``*_forward`` returns ``(y, cache)``; ``*_backward(dy, cache)`` returns
``(dx, dw, db)`` with ``db`` None when there was no bias.
"""
import numpy as np

from .im2col import col2im, conv_output_size, im2col, pair


def _over_all_pixels(a):
    """a: (N, R, P) -> (R, N*P): every image's pixels side by side, for sums over the batch."""
    N, R, P = a.shape
    return a.transpose(1, 0, 2).reshape(R, N * P)


# --- convolution ---------------------------------------------------------------------

def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + matmul:

        y[n, o, oy, ox] = b[o] + sum over c, i, j of
                          w[o, c, i, j] * x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]

    x: (N, C, H, W), w: (O, C, KH, KW), b: (O,) or None -> y: (N, O, OH, OW).
    The cache keeps x, not the columns: they are KH*KW times larger and cheap to rebuild.
    """
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    OH, OW = conv_output_size((H, W), (KH, KW), stride, padding, dilation)
    cols = im2col(x, (KH, KW), stride, padding, dilation)          # (N, C*KH*KW, OH*OW)
    y = w.reshape(O, -1) @ cols                                     # (N, O, OH*OW)
    if b is not None:
        y += b.reshape(1, O, 1)
    cache = (x, w, b is not None, stride, padding, dilation)
    return y.reshape(N, O, OH, OW), cache


def conv2d_backward(dy, cache):
    """dy: (N, O, OH, OW) -> (dx: (N, C, H, W), dw: (O, C, KH, KW), db: (O,) or None).

    With cols = im2col(x) and y = W @ cols:  dW = dy @ cols^T (summed over the batch),
    dcols = W^T @ dy, and dx = col2im(dcols) adds each column back onto its pixels.
    """
    x, w, has_bias, stride, padding, dilation = cache
    N, O, OH, OW = dy.shape
    KH, KW = w.shape[2:]
    dy = dy.reshape(N, O, OH * OW)
    cols = im2col(x, (KH, KW), stride, padding, dilation)
    dw = _over_all_pixels(dy) @ _over_all_pixels(cols).T           # (O, C*KH*KW)
    dcols = w.reshape(O, -1).T @ dy                                 # (N, C*KH*KW, OH*OW)
    dx = col2im(dcols, x.shape, (KH, KW), stride, padding, dilation)
    db = dy.sum(axis=(0, 2)) if has_bias else None
    return dx, dw.reshape(w.shape), db


# --- transposed convolution ----------------------------------------------------------

def conv_transpose2d_geometry(in_size, kernel_size, stride, padding, output_padding, dilation):
    """``((OH, OW), (PH, PW))``: the output size and the top/left padding.

    PyTorch: ``OH = (H-1)*SH - 2*PH + DH*(KH-1) + OPH + 1``.
    ``padding="same"`` (TensorFlow's rule): ``OH = H*SH``; the total padding
    ``max(DH*(KH-1) + 1 - SH, 0)`` is split top ``total // 2``, bottom the rest.
    """
    (kh, kw), (sh, sw), (dh, dw) = pair(kernel_size), pair(stride), pair(dilation)
    if padding == "same":
        top = tuple(max(d * (k - 1) + 1 - s, 0) // 2 for k, s, d in ((kh, sh, dh), (kw, sw, dw)))
        return (in_size[0] * sh, in_size[1] * sw), top
    (ph, pw), (oph, opw) = pair(padding), pair(output_padding)
    return (((in_size[0] - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1,
             (in_size[1] - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1), (ph, pw))


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Every input pixel stamps ``x[n, c, h, w] * w[c]`` onto the output at (h*SH - PH, w*SW - PW).

    x: (N, C, H, W), w: (C, O, KH, KW), b: (O,) or None -> y: (N, O, OH, OW).
    The stamps are the columns ``w^T @ x``, one per input pixel; col2im adds them
    up on an (OH, OW) image, with the input's (H, W) as its grid.
    """
    N, C, H, W = x.shape
    _, O, KH, KW = w.shape
    stride, dilation = pair(stride), pair(dilation)
    (OH, OW), pad = conv_transpose2d_geometry((H, W), (KH, KW), stride, padding,
                                              output_padding, dilation)
    cols = w.reshape(C, -1).T @ x.reshape(N, C, H * W)              # (N, O*KH*KW, H*W)
    y = col2im(cols, (N, O, OH, OW), (KH, KW), stride, pad, dilation, out_size=(H, W))
    if b is not None:
        y += b.reshape(1, O, 1, 1)
    cache = (x, w, b is not None, stride, pad, dilation)
    return y, cache


def conv_transpose2d_backward(dy, cache):
    """dy: (N, O, OH, OW) -> (dx: (N, C, H, W), dw: (C, O, KH, KW), db: (O,) or None).

    The adjoint of col2im is im2col: dcols = im2col(dy) on the input's grid; then
    dx = W @ dcols (a convolution of dy) and dW = x @ dcols^T summed over the batch.
    """
    x, w, has_bias, stride, pad, dilation = cache
    N, C, H, W = x.shape
    KH, KW = w.shape[2:]
    dcols = im2col(dy, (KH, KW), stride, pad, dilation, out_size=(H, W))   # (N, O*KH*KW, H*W)
    dx = w.reshape(C, -1) @ dcols                                    # (N, C, H*W)
    dw = _over_all_pixels(x.reshape(N, C, H * W)) @ _over_all_pixels(dcols).T
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx.reshape(x.shape), dw.reshape(w.shape), db
