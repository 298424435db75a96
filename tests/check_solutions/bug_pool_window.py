"""Planted bug: the max-pool gradient goes to the wrong place in the window (the flat
argmax unravelled with the window's height instead of its width)."""
import numpy as np

from cs231n_loops import *  # noqa: F401,F403


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
                    a, b = divmod(int(np.argmax(window)), ph)
                    a, b = min(a, ph - 1), min(b, pw - 1)
                    dx[n, c, i * stride + a, j * stride + b] += dout[n, c, i, j]
    return dx
