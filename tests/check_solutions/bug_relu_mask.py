"""Planted bug: the ReLU gradient is masked by the sign of the incoming gradient."""
from cs231n_loops import *  # noqa: F401,F403


def relu_backward(dout, cache):
    return dout * (dout > 0)
