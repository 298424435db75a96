"""Max pooling with argmax indices, and max unpooling (SegNet's decoder).

Indices follow PyTorch: ``indices[n, c, oy, ox] = iy*W + ix``, the flat position
of the window's maximum inside its own (unpadded) H x W plane of image (n, c).
The padding never wins (every window holds a real pixel), NaN wins over any
number, and ties keep the first position in scan order.

Pooling and unpooling are a pair: unpooling puts each value back where the
pool's maximum came from, which is exactly the pool's backward pass; and the
unpool's backward pass reads the gradient at those places, which is the pool's
forward selection.
"""
import numpy as np

from .im2col import conv_output_size, pair


def _planes(a):
    """(N, C, h, w) -> (N*C, h*w): one row per image plane, the layout the indices address."""
    N, C, h, w = a.shape
    return a.reshape(N * C, h * w)


# --- max pooling ---------------------------------------------------------------------

def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """x: (N, C, H, W) -> (y: (N, C, OH, OW), indices: (N, C, OH, OW) int64, cache).

    ``stride`` defaults to the kernel size; OH, OW as ``conv_output_size``.
    """
    N, C, H, W = x.shape
    (kh, kw), (ph, pw), (dh, dw) = pair(kernel_size), pair(padding), pair(dilation)
    sh, sw = pair(kernel_size if stride is None else stride)
    OH, OW = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode)
    top = np.arange(OH)[:, None] * sh - ph           # first row of each window, (OH, 1)
    left = np.arange(OW)[None, :] * sw - pw          # first column of each window, (1, OW)
    values, positions, inside = [], [], []
    for i in range(kh):
        for j in range(kw):                          # tap (i, j) of every window
            iy, ix = top + i * dh, left + j * dw     # (OH, 1), (1, OW)
            real = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)             # (OH, OW)
            iy, ix = np.clip(iy, 0, H - 1), np.clip(ix, 0, W - 1)
            values.append(np.where(real, x[:, :, iy, ix], -np.inf))        # (N, C, OH, OW)
            positions.append(np.broadcast_to(iy * W + ix, (OH, OW)))
            inside.append(real)
    values, positions, inside = np.stack(values), np.stack(positions), np.stack(inside)
    # np.argmax returns the first NaN if there is one, else the first maximum.
    best = np.argmax(values, axis=0)                                       # (N, C, OH, OW)
    # A window whose real pixels are all -inf ties with its padding: take its first
    # real pixel instead (padding has no index).
    best_is_real = np.take_along_axis(inside[:, None, None], best[None], axis=0)[0]
    best = np.where(best_is_real, best, np.argmax(inside, axis=0))
    y = np.take_along_axis(values, best[None], axis=0)[0].astype(x.dtype)
    indices = np.take_along_axis(positions[:, None, None], best[None], axis=0)[0]
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    return np.ascontiguousarray(y), indices, (x.shape, indices)


def max_pool2d_backward(dy, cache):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W): each gradient goes to its window's maximum.

    Overlapping windows can share a maximum; their gradients add up there.
    """
    shape, indices = cache
    dx = np.zeros(shape, dtype=dy.dtype)
    rows = np.arange(shape[0] * shape[1])[:, None]   # plane of each index
    np.add.at(_planes(dx), (rows, _planes(indices)), _planes(dy))
    return dx


# --- max unpooling -------------------------------------------------------------------

def max_unpool2d_output_size(in_size, kernel_size, stride=None, padding=0, output_size=None):
    """``(OH, OW)``: ``(H-1)*S - 2*P + K`` per axis, or the last two entries of ``output_size``."""
    if output_size is not None:
        return tuple(int(v) for v in tuple(output_size)[-2:])
    (kh, kw), (ph, pw) = pair(kernel_size), pair(padding)
    sh, sw = pair(kernel_size if stride is None else stride)
    return (in_size[0] - 1) * sh - 2 * ph + kh, (in_size[1] - 1) * sw - 2 * pw + kw


def max_unpool2d_forward(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Max unpooling: x, indices: (N, C, H, W) -> y: (N, C, OH, OW), zero except

        y[n, c].flat[indices[n, c, h, w]] = x[n, c, h, w]

    A repeated index keeps the last value in scan order.
    """
    N, C, H, W = x.shape
    OH, OW = max_unpool2d_output_size((H, W), kernel_size, stride, padding, output_size)
    y = np.zeros((N, C, OH, OW), dtype=x.dtype)
    np.put_along_axis(_planes(y), _planes(indices), _planes(x), axis=1)
    return y, (x.shape, indices)


def max_unpool2d_backward(dy, cache):
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W) = dy read at the indices (a gather)."""
    shape, indices = cache
    return np.take_along_axis(_planes(dy), _planes(indices), axis=1).reshape(shape)
