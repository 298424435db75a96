"""Checks of the user's arguments, shared by the public ops, layers and losses.

A bad argument becomes a one-line ValueError/TypeError naming the problem.  (The
last gate before C, which no caller can skip, is ``npfcn.kernels.boundary``.)
"""
import numbers

import numpy as np

from .kernels.boundary import FLOAT_DTYPES, MAX_ELEMENTS


def as_float_tensor(x, name="x", ndim=4, dtype=None):
    """Return ``x`` as a C-contiguous float32/float64 ndarray of rank ``ndim``.

    Non-contiguous (or Fortran-ordered) arrays are copied, not rejected.
    Integer, bool, float16, complex and object arrays raise TypeError: silently
    converting them would hide a bug in the caller (labels passed as images,
    for instance).  ``dtype`` (if given) is the dtype the array must have.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if dtype is not None and x.dtype != np.dtype(dtype):
        raise TypeError(f"{name} has dtype {x.dtype} but {np.dtype(dtype)} was expected")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    if x.size > MAX_ELEMENTS:
        raise ValueError(f"{name} has {x.size} elements, more than the supported {MAX_ELEMENTS}")
    return np.ascontiguousarray(x)


def int_pair(value, name, minimum):
    """``value`` (an int or a pair of ints) as a tuple ``(h, w)``, each >= ``minimum``."""
    # The common case, a pair the library built itself, without the general checks
    # (layers validate their geometry on every call; this keeps small layers cheap).
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int \
            and type(value[1]) is int and value[0] >= minimum and value[1] >= minimum:
        return value
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    for v in pair:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        if v < minimum:
            what = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{name} must be {what}, got {value!r}")
    return (int(pair[0]), int(pair[1]))


def check_same_shape(a, shape, name):
    """Raise ValueError unless ``a.shape == shape``."""
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)} but {tuple(shape)} was expected")


def check_target(target, logits_shape, num_classes, ignore_index):
    """Integer labels of shape (N, *spatial) in [0, C) or equal to ignore_index."""
    if not isinstance(target, np.ndarray):
        raise TypeError(f"target must be a numpy.ndarray of integer labels, got {type(target).__name__}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
    expected = (logits_shape[0],) + tuple(logits_shape[2:])
    if target.shape != expected:
        raise ValueError(f"target has shape {target.shape} but logits {tuple(logits_shape)} "
                         f"need labels of shape {expected}")
    valid = target != ignore_index
    if valid.any():
        labels = target[valid]
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"label {bad} is outside [0, {num_classes}) and is not the "
                             f"ignore_index {ignore_index}")
    return valid


def check_output_padding(padding, output_padding, stride, dilation):
    """PyTorch's rule: output_padding < stride or < dilation (per axis); none with 'same'."""
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"padding must be an int, a pair or 'same', got {padding!r}")
        if tuple(output_padding) != (0, 0):
            raise ValueError("output_padding cannot be combined with padding='same'")
        return
    for op, s, d, axis in zip(output_padding, stride, dilation, ("height", "width")):
        if op >= s and op >= d:
            raise ValueError(
                f"output_padding ({op}) must be smaller than either stride ({s}) or "
                f"dilation ({d}) along the {axis}"
            )


def check_windows_touch_image(in_size, kernel, stride, padding, dilation, out_size):
    """Refuse pooling geometry in which some window sees only padding.

    With dilation, ``padding <= kernel/2`` is not enough: the taps of a window
    can straddle the image (H=1, kernel 2, dilation 2, padding 1 reads rows -1
    and 1).  Such a window has no maximum and no valid index (PyTorch returns
    -inf and an index outside the plane), so it is an error here.
    Per axis, the first tap at or after row 0 is ``i0 = ceil(-start / d)``.
    """
    for n, k, s, p, d, o, axis in zip(in_size, kernel, stride, padding, dilation, out_size,
                                      ("height", "width")):
        start = np.arange(o, dtype=np.int64) * s - p       # first tap of each window
        first_inside = np.maximum(0, -(start // d))        # ceil(-start / d), at least 0
        touches = (first_inside < k) & (start + first_inside * d < n)
        if not touches.all():
            bad = int(np.argmin(touches))
            raise ValueError(
                f"max_pool2d: the window of output {axis} {bad} lies entirely in the padding "
                f"(input {axis} {n}, kernel {k}, padding {p}, dilation {d}); "
                "use less padding or dilation"
            )
