"""Batch normalisation over (N, H, W) per channel (Ioffe & Szegedy, 2015), forward beside backward.

Training mode, per channel c over the M = N*H*W values it has in the batch:

    mean_c = sum x / M          var_c = sum (x - mean_c)^2 / M        (biased: what is divided by)
    xhat   = (x - mean_c) / sqrt(var_c + eps)
    y      = gamma_c * xhat + beta_c

and the running statistics move towards the batch's (PyTorch's convention: the
*unbiased* variance, M / (M - 1) * var_c, goes into the running variance):

    running_mean <- (1 - momentum) * running_mean + momentum * mean_c
    running_var  <- (1 - momentum) * running_var  + momentum * var_c * M / (M - 1)

Eval mode uses the running statistics instead of the batch's, so y is an affine
function of x, channel by channel.

Backward (training mode).  With g = dL/dxhat = dy * gamma, every x_i moves the
mean and the variance, and those move every xhat_j; summing the three paths gives

    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

with the means over the channel's M values.  dgamma = sum(dy * xhat), dbeta = sum(dy).
In eval mode the statistics are constants: dx = g / sqrt(running_var + eps).
"""
import numpy as np


def _channel_sum(a):
    """(N, C, H, W) -> (C,): the sum over the batch and the pixels of each channel."""
    n, c = a.shape[:2]
    # Sum the contiguous pixel axis first (pairwise summation, accurate in float32).
    return a.reshape(n, c, -1).sum(axis=2).sum(axis=0)


def _per_channel(v):
    """(C,) -> (1, C, 1, 1), to broadcast against (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


def check_batch(shape):
    """Refuse a batch of one value per channel: its variance is undefined (PyTorch refuses
    it too).  shape: (N, C, H, W)."""
    if shape[0] * shape[2] * shape[3] < 2:
        raise ValueError(f"batch norm in training mode needs more than one value per "
                         f"channel, got input of shape {tuple(shape)}")


def update_running_statistics(running_mean, running_var, mean, var, count, momentum):
    """Move the running statistics (in place) towards the batch's: the running variance
    takes the unbiased variance, M / (M - 1) * var, over the batch's M = count values."""
    m = running_mean.dtype.type(momentum)
    running_mean *= 1 - m
    running_mean += m * mean
    running_var *= 1 - m
    running_var += m * var * (count / (count - 1))


def batch_norm2d_forward(x, gamma, beta, running_mean, running_var, training=True,
                         momentum=0.1, eps=1e-5):
    """x: (N, C, H, W); gamma, beta: (C,) or None (no affine: 1 and 0);
    running_mean, running_var: (C,) or None (no running statistics: always batch statistics).

    Returns (y (N, C, H, W), cache).  In training mode the running statistics, when
    given, are updated in place.  The batch must hold more than one value per channel
    in training mode (as PyTorch requires), since the variance of one value is undefined.
    """
    n, c, h, w = x.shape
    count = n * h * w
    use_batch = training or running_mean is None
    if use_batch:
        check_batch(x.shape)
        mean = _channel_sum(x) / count
        centred = x - _per_channel(mean)
        var = _channel_sum(centred * centred) / count
        if training and running_mean is not None:
            update_running_statistics(running_mean, running_var, mean, var, count, momentum)
    else:
        mean, var = running_mean, running_var
        centred = x - _per_channel(mean)
    inv_std = (1.0 / np.sqrt(var + x.dtype.type(eps))).astype(x.dtype)
    xhat = centred
    xhat *= _per_channel(inv_std)          # centred is a fresh array: normalise in place
    if gamma is None:
        y = xhat.copy()
    else:
        y = xhat * _per_channel(gamma)
        y += _per_channel(beta)
    cache = (xhat, gamma, inv_std, use_batch)
    return y, cache


def batch_norm2d_backward(dy, cache):
    """dy: (N, C, H, W) -> (dx, dgamma, dbeta); dgamma/dbeta are None without affine."""
    xhat, gamma, inv_std, use_batch = cache
    n, c, h, w = dy.shape
    count = n * h * w
    # g = dy * gamma, so mean(g) = gamma * sum(dy) / M and mean(g * xhat) = gamma *
    # sum(dy * xhat) / M: the two sums dgamma and dbeta need give dx's means too.
    sum_dy = _channel_sum(dy)
    sum_dy_xhat = _channel_sum(dy * xhat)
    dgamma, dbeta = (None, None) if gamma is None else (sum_dy_xhat, sum_dy)
    scale = inv_std if gamma is None else gamma * inv_std
    if not use_batch:
        return dy * _per_channel(scale), dgamma, dbeta
    dx = xhat * _per_channel(sum_dy_xhat / count)
    np.subtract(dy, dx, out=dx)
    dx -= _per_channel(sum_dy / count)
    dx *= _per_channel(scale)
    return dx, dgamma, dbeta
