"""Planted bug: an index error on strided cases (a student's off-by-one)."""
import numpy as np

from cs231n_loops import *  # noqa: F401,F403


def max_pool_forward_naive(x, pool_param):
    ph, pw, stride = pool_param["pool_height"], pool_param["pool_width"], pool_param["stride"]
    N, C, H, W = x.shape
    H_out, W_out = 1 + (H - ph) // stride, 1 + (W - pw) // stride
    out = np.zeros((N, C, H_out, W_out))
    for i in range(H_out):
        for j in range(W_out):
            for a in range(ph):
                for b in range(pw):
                    out[:, :, i, j] = np.maximum(out[:, :, i, j] if a + b else -np.inf,
                                                 x[:, :, i * stride + a + stride - 1, j * stride + b])
    return out, (x, pool_param)
