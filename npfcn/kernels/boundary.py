"""The one check every array passes before C reads or writes it.

The C kernels (``csrc/``) trust what they are given: a buffer one element too
short, a float64 array passed as float, a stride-2 view or an index past the end
of its plane would be read or written out of bounds.  So every wrapper in
``npfcn.kernels`` calls ``check`` with each array and the exact shape C will
assume, and takes its pointers from ``pointer``; sizes and coordinates are kept
far inside 64-bit indices by ``check_size`` and ``check_extent``.  These are
explicit checks, not ``assert`` (asserts vanish under ``python -O``).

The public ops (``npfcn.functional``) validate the user's arguments first and
turn bad ones into readable errors; this module is the last gate, the one a
direct call to a kernel cannot skip.
"""
import numpy as np

from . import backend

# Largest element count any array handed to C may have.  The kernels index with
# int64_t; refusing far below 2**63 also means that sizes computed from user-given
# shapes (N*C*KH*KW*OH*OW) cannot wrap around before the check.
MAX_ELEMENTS = 2 ** 40

# Largest pixel coordinate a kernel may compute.  The C loops form coordinates
# such as ``oy*SH - PH + i*DH`` and ``(W - off + SW - 1) / SW`` in int64_t;
# bounding the sum of all the terms that can appear keeps every intermediate far
# from 2**63, so none can wrap around (a wrapped bound once let a stride of
# 2**63-1 write before the output buffer).
MAX_COORDINATE = 2 ** 62

_F32, _F64, _I64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int64)
FLOAT_DTYPES = (_F32, _F64)


def check(what, dtype, arrays, indices=None):
    """Raise ValueError unless every array is exactly what the C function assumes.

    arrays:  ``{name: (array, shape)}``; each must be a C-contiguous ndarray of
             ``dtype`` (float32 or float64) with ``array.shape == shape`` (or, for an
             int ``shape``, that many elements), at most MAX_ELEMENTS of them.  An
             array given as None (an optional argument, NULL in C) is skipped.
    indices: ``(name, array, shape, size)`` or None: an int64 index array of that
             shape whose every entry lies in ``[0, size)``.
    """
    if dtype is not _F32 and dtype is not _F64:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"{what}: the C kernel computes in float32 or float64, not {dtype}")
    for name, (array, shape) in arrays.items():
        # The common case in one test (this runs on every kernel call); the detailed
        # checks below only run to say what is wrong.
        if array is None or (type(array) is np.ndarray and array.dtype is dtype
                             and array.flags.c_contiguous and array.size <= MAX_ELEMENTS
                             and (array.shape == shape if type(shape) is tuple
                                  else array.size == shape)):
            continue
        _check_layout(what, name, array, dtype, shape)
    if indices is not None:
        name, array, shape, size = indices
        if not (type(array) is np.ndarray and array.dtype is _I64 and array.flags.c_contiguous
                and array.shape == tuple(shape)):
            _check_layout(what, name, array, _I64, shape)
        if not indices_in_range(array, size):
            low, high = int(array.min()), int(array.max())
            raise ValueError(f"{what}: {name} holds {low if low < 0 else high}, out of range "
                             f"for a plane of {size} positions")


def _check_layout(what, name, array, dtype, shape):
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{what}: {name} must be a numpy.ndarray, got {type(array).__name__}")
    if array.dtype != dtype:
        raise ValueError(f"{what}: {name} has dtype {array.dtype}, the kernel needs {dtype}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{what}: {name} must be C-contiguous")
    if isinstance(shape, (int, np.integer)):
        if array.size != shape:
            raise ValueError(f"{what}: {name} has {array.size} elements, the kernel needs {shape}")
    elif tuple(array.shape) != tuple(shape):
        raise ValueError(f"{what}: {name} has shape {tuple(array.shape)}, the kernel needs "
                         f"{tuple(shape)}")
    if array.size > MAX_ELEMENTS:
        raise ValueError(f"{what}: {name} has {array.size} elements, more than the supported "
                         f"{MAX_ELEMENTS}")


def indices_in_range(indices, size):
    """True when every entry of the int64 array ``indices`` lies in [0, size).

    One pass instead of min() and max(): seen as unsigned, a negative index
    becomes a number of at least 2**63, so the largest unsigned value alone
    decides.  It is a full read of the indices (a quarter of VGG pool1's
    backward pass): the price of never letting C see a bad one.
    """
    return indices.size == 0 or int(indices.view(np.uint64).max()) < size


def check_size(count, what):
    """Refuse element counts the kernels cannot index (checked before allocating)."""
    if count > MAX_ELEMENTS:
        raise ValueError(
            f"{what} would need {count} elements, more than the supported {MAX_ELEMENTS}; "
            "use a smaller batch or image"
        )


def check_extent(in_size, kernel, stride, padding, dilation, out_size, what):
    """Refuse geometry whose window coordinates would not fit in 64-bit indices.

    All arguments are (h, w) pairs of ints already checked for sign.
    """
    for n, k, s, p, d, o, axis in zip(in_size, kernel, stride, padding, dilation, out_size,
                                      ("height", "width")):
        extent = n + abs(p) + o * s + k * d
        if extent >= MAX_COORDINATE:
            raise ValueError(
                f"{what}: {axis} geometry (size {n}, kernel {k}, stride {s}, padding {p}, "
                f"dilation {d}, {o} outputs) reaches coordinates beyond 2**62; "
                "the kernels index with 64-bit integers"
            )


_CTYPES = {np.dtype(np.float32): "float[]", np.dtype(np.float64): "double[]",
           np.dtype(np.int64): "int64_t[]"}


def pointer(array):
    """A cffi pointer to the data of an array that ``check`` accepted (None: NULL).

    Contiguity is asserted once more: a wrong pointer would let C misread memory.
    """
    ffi = backend.ffi()
    if array is None:
        return ffi.NULL
    flags = array.flags
    if not flags.c_contiguous:
        raise ValueError("arrays must be C-contiguous before they reach C")
    return ffi.from_buffer(_CTYPES[array.dtype], array, require_writable=flags.writeable)


def suffix(dtype):
    """The C functions' name ending for a dtype: ``f32`` or ``f64``."""
    return "f32" if dtype is _F32 or np.dtype(dtype) == _F32 else "f64"
