"""Batch normalisation with its passes over the data in C (``csrc/batchnorm.c``).

Equals ``npfcn.reference.batchnorm.batch_norm2d_forward`` / ``batch_norm2d_backward``
(same arguments, results to float rounding; the statistics are summed in double
here).  The cache differs: it keeps the input x and the per-channel scale and shift
that normalise it, and the backward pass recomputes xhat = x * scale + shift where it
needs it, so the forward pass writes one array (y), not two.  The per-channel
arithmetic between the passes - the inverse standard deviation, the running
statistics (the reference's own functions), the two means of the backward pass - is
(C,) arrays and stays in NumPy; what moves to C is every pass over the (N, C, H, W) data,
which NumPy made one temporary array at a time.
"""
import numpy as np

from . import backend, boundary
from ..reference.batchnorm import check_batch, update_running_statistics


def _fn(name, dtype):
    return getattr(backend.lib(), f"batch_norm_{name}_{boundary.suffix(dtype)}")


def forward(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1, eps=1e-5):
    """As ``reference.batchnorm.batch_norm2d_forward``: x: (N, C, H, W) -> (y, cache)."""
    N, C, H, W = x.shape
    count, dtype = N * H * W, x.dtype
    use_batch = training or running_mean is None
    P = boundary.pointer
    if use_batch:
        check_batch(x.shape)
        mean64, var64 = np.empty(C), np.empty(C)
        boundary.check("batch norm", dtype, {"input": (x, (N, C, H, W))})
        boundary.check("batch norm", np.float64, {"mean": (mean64, (C,)), "var": (var64, (C,))})
        _fn("stats", dtype)(P(x), N, C, H * W, P(mean64), P(var64))
        mean, var = mean64.astype(dtype), var64.astype(dtype)
        if training and running_mean is not None:
            update_running_statistics(running_mean, running_var, mean, var, count, momentum)
    else:
        mean, var = running_mean.astype(dtype), running_var.astype(dtype)
    inv_std = (1.0 / np.sqrt(var + dtype.type(eps))).astype(dtype)
    shift = (-mean * inv_std).astype(dtype)
    y = np.empty_like(x)
    gamma = None if gamma is None else np.ascontiguousarray(gamma, dtype=dtype)
    beta = None if beta is None else np.ascontiguousarray(beta, dtype=dtype)
    boundary.check("batch norm", dtype, {
        "input": (x, (N, C, H, W)), "output": (y, (N, C, H, W)), "scale": (inv_std, (C,)),
        "shift": (shift, (C,)), "gamma": (gamma, (C,)), "beta": (beta, (C,))})
    _fn("apply", dtype)(P(x), P(y), P(inv_std), P(shift), P(gamma), P(beta), N, C, H * W)
    return y, (x, shift, gamma, inv_std, use_batch)


def backward(dy, cache):
    """As ``reference.batchnorm.batch_norm2d_backward``: dy -> (dx, dgamma, dbeta)."""
    x, shift, gamma, inv_std, use_batch = cache
    N, C, H, W = dy.shape
    count, dtype = N * H * W, dy.dtype
    sum_dy, sum_dy_xhat = np.empty(C), np.empty(C)
    P = boundary.pointer
    boundary.check("batch norm gradient", dtype, {
        "output gradient": (dy, (N, C, H, W)), "input": (x, (N, C, H, W)),
        "scale": (inv_std, (C,)), "shift": (shift, (C,))})
    boundary.check("batch norm gradient", np.float64, {
        "sum dy": (sum_dy, (C,)), "sum dy xhat": (sum_dy_xhat, (C,))})
    _fn("grad_sums", dtype)(P(dy), P(x), P(inv_std), P(shift), N, C, H * W, P(sum_dy),
                            P(sum_dy_xhat))
    sum_dy, sum_dy_xhat = sum_dy.astype(dtype), sum_dy_xhat.astype(dtype)
    dgamma, dbeta = (None, None) if gamma is None else (sum_dy_xhat, sum_dy)
    scale = (inv_std if gamma is None else gamma * inv_std).astype(dtype)
    # dx = (dy - xhat * mean(dy * xhat) - mean(dy)) * scale; in eval mode dy * scale
    if use_batch:
        a, b = (sum_dy_xhat / count).astype(dtype), (sum_dy / count).astype(dtype)
    else:
        a, b = np.zeros(C, dtype), np.zeros(C, dtype)
    dx = np.empty_like(dy)
    boundary.check("batch norm gradient", dtype, {
        "input gradient": (dx, (N, C, H, W)), "a": (a, (C,)), "b": (b, (C,)),
        "out scale": (scale, (C,))})
    _fn("grad_input", dtype)(P(dy), P(x), P(dx), P(inv_std), P(shift), P(a), P(b), P(scale),
                             N, C, H * W)
    return dx, dgamma, dbeta
