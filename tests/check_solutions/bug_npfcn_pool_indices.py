"""Planted bug (npfcn names): pooling indices counted from the start of the padded
image instead of the image itself."""
from npfcn_im2col import *  # noqa: F401,F403
from npfcn_im2col import max_pool2d_forward as _correct


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    y, indices, cache = _correct(x, kernel_size, stride, padding)
    W = x.shape[3]
    p = padding if isinstance(padding, int) else padding[0]
    indices = indices + p * (W + 1)
    return y, indices, cache
