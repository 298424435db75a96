"""A correct CS231n-style solution without Python loops over pixels: windows as strided
views (np.lib.stride_tricks.sliding_window_view) and einsum."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _windows(x, kh, kw, stride):
    """x: (N, C, H, W) -> (N, C, OH, OW, kh, kw) views of every window."""
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]


def conv_forward_naive(x, w, b, conv_param):
    stride, pad = conv_param["stride"], conv_param["pad"]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = _windows(xp, w.shape[2], w.shape[3], stride)
    out = np.einsum("ncijkl,fckl->nfij", win, w) + b[None, :, None, None]
    return out, (x, w, b, conv_param)


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    stride, pad = conv_param["stride"], conv_param["pad"]
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = _windows(xp, kh, kw, stride)
    dw = np.einsum("ncijkl,nfij->fckl", win, dout)
    db = dout.sum(axis=(0, 2, 3))
    dxp = np.zeros_like(xp)
    OH, OW = dout.shape[2:]
    contribution = np.einsum("fckl,nfij->ncijkl", w, dout)
    for k in range(kh):
        for l in range(kw):
            dxp[:, :, k:k + (OH - 1) * stride + 1:stride,
                l:l + (OW - 1) * stride + 1:stride] += contribution[:, :, :, :, k, l]
    return dxp[:, :, pad:pad + H, pad:pad + W], dw, db


def max_pool_forward_naive(x, pool_param):
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    win = _windows(x, ph, pw, s)
    return win.max(axis=(4, 5)), (x, pool_param)


def max_pool_backward_naive(dout, cache):
    x, pool_param = cache
    ph, pw, s = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    win = _windows(x, ph, pw, s)
    N, C, OH, OW = dout.shape
    flat = win.reshape(N, C, OH, OW, ph * pw).argmax(axis=4)
    a, b = np.divmod(flat, pw)
    rows = np.arange(OH)[:, None] * s + a
    cols = np.arange(OW)[None, :] * s + b
    dx = np.zeros_like(x)
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    np.add.at(dx, (n[:, :, None, None], c[:, :, None, None], rows, cols), dout)
    return dx


def relu_forward(x):
    out = x * (x > 0)
    return out, out


def relu_backward(dout, cache):
    return np.where(cache > 0, dout, 0.0)


def softmax_loss(x, y):
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    N = len(y)
    loss = -np.log(p[np.arange(N), y]).sum() / N
    onehot = np.eye(x.shape[1])[y]
    return loss, (p - onehot) / N
