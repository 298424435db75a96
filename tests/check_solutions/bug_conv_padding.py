"""Planted bug: the backward pass crops the padded gradient at the wrong offset."""
from cs231n_loops import *  # noqa: F401,F403
from cs231n_loops import conv_backward_naive as _correct


def conv_backward_naive(dout, cache):
    x, w, b, conv_param = cache
    pad = conv_param["pad"]
    H, W = x.shape[2:]
    shifted = dict(conv_param, pad=0)
    import numpy as np
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw, db = _correct(dout, (xp, w, b, shifted))
    return dxp[:, :, :H, :W], dw, db          # should start at pad, not 0
