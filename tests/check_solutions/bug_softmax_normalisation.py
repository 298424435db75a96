"""Planted bug: softmax_loss forgets to divide the gradient by the batch size."""
import numpy as np

from cs231n_loops import *  # noqa: F401,F403


def softmax_loss(x, y):
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    N = x.shape[0]
    loss = -np.log(p[np.arange(N), y]).mean()
    p[np.arange(N), y] -= 1
    return loss, p                              # missing / N
