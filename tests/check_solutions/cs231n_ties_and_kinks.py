"""Correct, but sensitive to what npfcn check promises never to draw: a ReLU gradient that
passes 0 through (x >= 0) and a max-pool gradient that picks the LAST maximum of a window.
Both are right whenever no input sits at the kink or ties in a window."""
import numpy as np

from cs231n_loops import *  # noqa: F401,F403


def relu_backward(dout, cache):
    return dout * (cache >= 0)


def max_pool_backward_naive(dout, cache):
    x, pool_param = cache
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H_out, W_out = dout.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            for i in range(H_out):
                for j in range(W_out):
                    window = x[n, c, i * stride:i * stride + ph, j * stride:j * stride + pw]
                    flat = window.size - 1 - int(np.argmax(window.ravel()[::-1]))
                    a, b = divmod(flat, pw)
                    dx[n, c, i * stride + a, j * stride + b] += dout[n, c, i, j]
    return dx
