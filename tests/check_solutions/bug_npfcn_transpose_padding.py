"""Planted bug (npfcn names): the transposed convolution crops its padding from the
top-left only, so the output is shifted whenever padding > 0."""
import numpy as np

from npfcn_im2col import *  # noqa: F401,F403
from npfcn_im2col import conv_transpose2d_forward as _correct


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    y, cache = _correct(x, w, b, stride, 0, output_padding, dilation)
    p = padding if isinstance(padding, int) else padding[0]
    OH, OW = y.shape[2] - 2 * p, y.shape[3] - 2 * p
    return np.ascontiguousarray(y[:, :, :OH, :OW]), cache
