"""Planted bug: the weight gradient is summed over the wrong axes (the input channels
collapsed instead of kept, then broadcast back)."""
from cs231n_loops import *  # noqa: F401,F403
from cs231n_loops import conv_backward_naive as _correct


def conv_backward_naive(dout, cache):
    dx, dw, db = _correct(dout, cache)
    return dx, dw.sum(axis=1, keepdims=True) + 0 * dw, db
