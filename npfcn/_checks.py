"""Argument checks shared by the layers and the kernel dispatch.

Everything that reaches the C kernel passes through here first, so that a bad
argument becomes a ValueError/TypeError naming the problem instead of an
out-of-bounds read or write in C.
"""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Largest element count any array handed to C may have.  The kernels index
# with int64_t; refusing far below 2**63 also means that sizes computed from
# user-given shapes (N*C*KH*KW*OH*OW) cannot wrap around before the check.
MAX_ELEMENTS = 2 ** 40


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


def check_size(count, what):
    """Refuse element counts the kernels cannot index (checked before allocating)."""
    if count > MAX_ELEMENTS:
        raise ValueError(
            f"{what} would need {count} elements, more than the supported {MAX_ELEMENTS}; "
            "use a smaller batch or image"
        )


# Largest pixel coordinate a kernel may compute.  The C loops form coordinates
# such as ``oy*SH - PH + i*DH`` and ``(W - off + SW - 1) / SW`` in int64_t;
# bounding the sum of all the terms that can appear keeps every intermediate
# far from 2**63, so none can wrap around (a wrapped bound once let a stride
# of 2**63-1 write before the output buffer).
MAX_COORDINATE = 2 ** 62


def check_extent(in_size, kernel, stride, padding, dilation, out_size, what):
    """Refuse geometry whose window coordinates would not fit in 64-bit indices.

    All arguments are (h, w) pairs of ints already checked for sign.
    """
    for n, k, s, p, d, o, axis in zip(in_size, kernel, stride, padding, dilation, out_size,
                                      ("height", "width")):
        extent = n + p + o * s + k * d
        if extent >= MAX_COORDINATE:
            raise ValueError(
                f"{what}: {axis} geometry (size {n}, kernel {k}, stride {s}, padding {p}, "
                f"dilation {d}, {o} outputs) reaches coordinates beyond 2**62; "
                "the kernels index with 64-bit integers"
            )


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
