"""Softmax cross-entropy in C (``csrc/softmax.c``), float32: one pass for the loss (it
keeps exp(s - max) and each pixel's sum of them), one for the gradient.

Equals ``npfcn.reference.softmax.softmax_cross_entropy_forward`` / ``_backward`` (the
math is written out there) to float32 rounding: the exponentials come from a
polynomial of C's own (csrc/softmax.c says why and how accurate), the sums run in
double.  The cache differs from the reference's, so ``npfcn.losses`` keeps the path
with it.
"""
import numpy as np

from . import backend, boundary


def cross_entropy_forward(logits, target, weight=None, ignore_index=255, reduction="mean",
                          denominator=None):
    """logits: (N, C, ...) float32, target: (N, ...) labels in [0, C) or ignore_index,
    weight: (C,) or None -> (loss: float, cache), as the reference's."""
    N, C = logits.shape[:2]
    P = int(np.prod(logits.shape[2:], dtype=np.int64))
    labels = np.ascontiguousarray(target, dtype=np.int64).reshape(N, P)
    # C reads weight[t] and the score of class t wherever t is not the ignore label
    if not boundary.indices_in_range(labels[labels != ignore_index], C):
        raise ValueError(f"cross-entropy: labels must lie in [0, {C}) or be {ignore_index}")
    logits = np.ascontiguousarray(logits)
    w = None if weight is None else np.ascontiguousarray(weight, dtype=np.float32)
    exps = np.empty_like(logits)
    pixel_sum = np.empty((N, P), dtype=np.float32)
    pixel_weight = np.empty((N, P), dtype=np.float32)
    sums = np.zeros(2, dtype=np.float64)
    boundary.check("cross-entropy", np.float32, {
        "logits": (logits, logits.shape), "class weight": (w, (C,)),
        "exponentials": (exps, logits.shape), "pixel sum": (pixel_sum, (N, P)),
        "pixel weight": (pixel_weight, (N, P))})
    boundary.check("cross-entropy", np.float64, {"sums": (sums, (2,))})
    P_ = boundary.pointer
    backend.lib().softmax_xent_forward_f32(
        P_(logits), P_(labels), P_(w),
        int(ignore_index), N, C, P, P_(exps), P_(pixel_sum), P_(pixel_weight), P_(sums))
    total, weight_sum = float(sums[0]), float(sums[1])
    if reduction == "mean":
        if denominator is None:
            denominator = weight_sum
        scale = 1.0 / denominator if denominator > 0 else 0.0
    else:
        scale = 1.0
    return total * scale, (exps, labels, pixel_sum, pixel_weight, int(ignore_index), scale)


def cross_entropy_backward(dloss, cache):
    """d loss / d logits, built in the cache's exponentials (use a cache once)."""
    exps, labels, pixel_sum, pixel_weight, ignore_index, scale = cache
    N, C = exps.shape[:2]
    P = labels.shape[1]
    boundary.check("cross-entropy gradient", np.float32, {
        "exponentials": (exps, exps.shape), "pixel sum": (pixel_sum, (N, P)),
        "pixel weight": (pixel_weight, (N, P))})
    if labels.dtype != np.int64 or labels.shape != (N, P) or not labels.flags.c_contiguous:
        raise ValueError("cross-entropy gradient: the cache's labels are not (N, P) int64")
    backend.lib().softmax_xent_backward_f32(
        boundary.pointer(exps), boundary.pointer(labels),
        boundary.pointer(pixel_sum), boundary.pointer(pixel_weight), ignore_index,
        float(np.float32(scale * dloss)), N, C, P)
    return exps
