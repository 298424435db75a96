"""ReLU, dropout, the FCN crop and the skip sum: forward beside backward.

Each ``*_forward`` returns ``(out, cache)``; ``*_backward(dy, cache)`` the input gradient.
"""
import numpy as np

from .im2col import pair


def relu_forward(x):
    """y = max(x, 0), any shape; NaN stays NaN.

    The cache is y itself: y > 0 exactly where x > 0.  So y must not be changed in
    place before backward (PyTorch's rule for the outputs it saves).
    """
    y = np.maximum(x, x.dtype.type(0))               # np.maximum propagates NaN
    return y, y


def relu_backward(dy, cache):
    """dx = dy where y > 0, else 0 (0 even where dy is NaN or inf, as PyTorch)."""
    y = cache
    return np.where(y > 0, dy, dy.dtype.type(0))


def dropout_forward(x, p, rng, training=True):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).

    rng: a numpy Generator (the mask is drawn from it).  With ``training=False`` or
    p == 0 it is the identity; the expected output equals x either way.
    """
    if not training or p == 0:
        return x.copy(), None
    keep = rng.random(x.shape) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p)) if p < 1 else np.zeros_like(x)
    return x * mask, mask


def dropout_backward(dy, cache):
    """dx = dy * mask: the same elements are dropped and scaled."""
    mask = cache
    return dy.copy() if mask is None else dy * mask


def crop_forward(x, offset, size):
    """The FCN crop ``x[:, :, oy:oy+H, ox:ox+W]``, from the top-left offset (not centred).

    x: (N, C, Hx, Wx), offset: int or (oy, ox), size: (H, W) or a longer shape ending
    in it -> (N, C, H, W).
    """
    (oy, ox), (h, w) = pair(offset), pair(tuple(size)[-2:])
    return x[:, :, oy:oy + h, ox:ox + w].copy(), (x.shape, oy, ox)


def crop_backward(dy, cache):
    """dx: zeros of x's shape with dy put back where the crop was taken."""
    shape, oy, ox = cache
    h, w = dy.shape[2:]
    dx = np.zeros(shape, dtype=dy.dtype)
    dx[:, :, oy:oy + h, ox:ox + w] = dy
    return dx


def add_forward(a, b):
    """a + b, two tensors of one shape (the FCN skip connection)."""
    return a + b, None


def add_backward(dy, cache):
    """(da, db) = (dy, dy): a sum passes its gradient to both addends."""
    return dy, dy.copy()
