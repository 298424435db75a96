"""Softmax cross-entropy per pixel, with an ignore label and class weights.

For scores s: (N, C, H, W) and labels t: (N, H, W), at every pixel

    q = softmax(s) over the C classes,    loss = -w[t] * log q[t]

and the mean divides the summed loss by the summed weights of the counted pixels
(PyTorch's weighted mean).  Pixels labelled ``ignore_index`` count for nothing.
The gradient is the famous one line: d loss / d s = (q - onehot(t)) * w[t] / total.

Any (N, C, *spatial) scores work; the labels are then (N, *spatial).
"""
import numpy as np


def _true_class_index(shape, target):
    """Flat positions of ``s[n, target[n, ...], ...]`` in a C-contiguous (N, C, ...) array.

    shape: (N, C, *spatial); target: (N, *spatial) in [0, C) -> (N, *spatial).
    ``s.reshape(-1)[index]`` reads each pixel's true-class score (one 1-D gather,
    several times faster than np.take_along_axis, which builds an index per axis).
    """
    N, C = shape[:2]
    P = int(np.prod(shape[2:], dtype=np.int64))      # pixels per image
    pixel = np.arange(P, dtype=np.intp).reshape(shape[2:])
    image = np.arange(N, dtype=np.intp).reshape((N,) + (1,) * (len(shape) - 2))
    return (image * C + target) * P + pixel


def softmax_cross_entropy_forward(logits, target, weight=None, ignore_index=255,
                                  reduction="mean", denominator=None):
    """logits: (N, C, ...), target: (N, ...) integers -> (loss: float, cache).

    weight: (C,) class weights or None.  reduction: "mean" or "sum".
    denominator: with "mean", divide by this instead of the batch's own weight total
    (a shard of a larger batch divides by the whole batch's).  When nothing is
    counted the mean is 0, not NaN.
    """
    counted = target != ignore_index
    safe_target = np.where(counted, target, 0).astype(np.intp)   # any class; weight 0 below
    # Stable log-softmax: subtract each pixel's maximum before exponentiating.
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    true_class = _true_class_index(logits.shape, safe_target)
    log_prob_true = shifted.reshape(-1)[true_class] - np.log(sum_exp[:, 0])  # (N, ...)

    pixel_weight = counted.astype(logits.dtype)
    if weight is not None:
        pixel_weight *= np.asarray(weight).astype(logits.dtype)[safe_target]
    total = float(np.sum(pixel_weight * -log_prob_true, dtype=np.float64))
    if reduction == "mean":
        if denominator is None:
            denominator = float(np.sum(pixel_weight, dtype=np.float64))
        scale = 1.0 / denominator if denominator > 0 else 0.0
    else:
        scale = 1.0
    cache = (exp / sum_exp, true_class, pixel_weight, scale)
    return total * scale, cache


def softmax_cross_entropy_backward(dloss, cache):
    """dloss: d(anything)/d loss, a number -> d/d logits: (N, C, ...) of the logits' dtype.

    (softmax - onehot(target)) * pixel weight * scale * dloss.  The cache's
    probabilities become the result (no copy): use a cache once.
    """
    prob, true_class, pixel_weight, scale = cache
    dlogits = prob
    dlogits.reshape(-1)[true_class] -= 1             # each index once: no repeats to add up
    dlogits *= (pixel_weight * dlogits.dtype.type(scale * dloss))[:, None]
    return dlogits
