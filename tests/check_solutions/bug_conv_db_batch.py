"""Planted bug: the bias gradient sums over the first image of the batch only."""
from cs231n_loops import *  # noqa: F401,F403
from cs231n_loops import conv_backward_naive as _correct


def conv_backward_naive(dout, cache):
    dx, dw, _ = _correct(dout, cache)
    return dx, dw, dout[0].sum(axis=(1, 2))
