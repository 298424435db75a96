"""Max pooling with argmax indices, and unpooling: NumPy reference and dispatch to C.

Indices follow PyTorch: ``indices[n, c, oy, ox] = iy*W + ix``, the flat
position of the maximum inside its own (unpadded) H x W plane.  Padding never
wins (every window holds at least one real pixel), NaN wins over any number,
and ties keep the first position in scan order.

Callers (``npfcn.functional``) validate shapes and sizes.  The dispatch
functions check again what the C kernel relies on (dtype, contiguity, shapes,
geometry, index range), because they are the last gate before C: a direct
call with bad arguments must raise, not write out of bounds.
"""
import numpy as np

from . import backend
from ._checks import as_float_tensor, check_extent, check_same_shape, check_size, int_pair


def max_pool_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """x: (N, C, H, W) -> (y: (N, C, OH, OW), indices: (N, C, OH, OW) int64)."""
    x = as_float_tensor(x, "max_pool input")
    kh, kw = int_pair((kh, kw), "kernel_size", 1)
    sh, sw = int_pair((sh, sw), "stride", 1)
    ph, pw = int_pair((ph, pw), "padding", 0)
    dh, dw = int_pair((dh, dw), "dilation", 1)
    oh, ow = int_pair((oh, ow), "output size", 1)
    N, C, H, W = x.shape
    check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), "max_pool")
    check_size(N * C * oh * ow, "max_pool output")
    if backend.active() == "c":
        y = np.empty((N, C, oh, ow), dtype=x.dtype)
        indices = np.empty((N, C, oh, ow), dtype=np.int64)
        _, lib = backend.kernels()
        fn = lib.maxpool_forward_f32 if x.dtype == np.float32 else lib.maxpool_forward_f64
        fn(backend.pointer(x), backend.pointer(y), backend.pointer(indices),
           N * C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        return y, indices
    return max_pool_forward_numpy(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)


def max_pool_backward(dy, indices, image_shape):
    """Route each output gradient to its argmax: dy, indices: (N, C, OH, OW) -> dx: image_shape."""
    dy = as_float_tensor(dy, "max_pool output gradient")
    N, C, H, W = image_shape = _checked_backward_args(dy, indices, image_shape)
    if backend.active() == "c":
        dx = np.empty(image_shape, dtype=dy.dtype)   # the kernel writes every element
        _, lib = backend.kernels()
        fn = lib.maxpool_backward_f32 if dy.dtype == np.float32 else lib.maxpool_backward_f64
        fn(backend.pointer(dy), backend.pointer(indices), backend.pointer(dx),
           N * C, H * W, dy.shape[2] * dy.shape[3])
        return dx
    return scatter_add_planes(dy, indices, image_shape)


def _checked_backward_args(dy, indices, image_shape):
    """(N, C, H, W) after checking that every index points into its H x W plane."""
    # 0 is allowed (an empty batch): the forward pass accepts it.
    if len(tuple(image_shape)) != 4 or any(int(v) != v or v < 0 for v in image_shape):
        raise ValueError(f"image_shape must be 4 non-negative ints (N, C, H, W), got {image_shape!r}")
    N, C, H, W = (int(v) for v in image_shape)
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        raise TypeError("max_pool indices must be an int64 numpy.ndarray, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    if not indices.flags.c_contiguous:
        raise ValueError("max_pool indices must be C-contiguous")
    if tuple(dy.shape[:2]) != (N, C):
        raise ValueError(f"max_pool output gradient has shape {dy.shape}, "
                         f"expected (N, C, OH, OW) with (N, C) = {(N, C)}")
    check_same_shape(indices, dy.shape, "max_pool indices")
    if not indices_in_range(indices, H * W):
        raise ValueError(f"max_pool index out of range for an {H}x{W} plane")
    return N, C, H, W


def indices_in_range(indices, size):
    """True when every entry of the int64 array ``indices`` lies in [0, size).

    One pass instead of min() and max(): seen as unsigned, a negative index
    becomes a number of at least 2**63, so the largest unsigned value alone
    decides.  It is still a full read of the indices (0.2 ms for VGG's pool1,
    a quarter of its backward pass): the price of never letting C see a bad one.
    """
    return indices.size == 0 or int(indices.view(np.uint64).max()) < size


# --- max unpooling --------------------------------------------------------------------

def max_unpool_forward(x, indices, out_size):
    """Place each value at its index in a zero image ("max unpooling").

    x, indices: (N, C, H, W) -> y: (N, C, OH, OW) with
    ``y[n, c].flat[indices[n, c, h, w]] = x[n, c, h, w]``.  A repeated index keeps
    the last value in scan order (PyTorch leaves that case unspecified: its
    threads split a plane, so it may keep another one).
    """
    x = as_float_tensor(x, "max_unpool2d input")
    oh, ow = int_pair(out_size, "output size", 1)
    N, C, H, W = x.shape
    indices = checked_unpool_indices(indices, x.shape, oh * ow)
    check_size(N * C * oh * ow, "max_unpool2d output")
    if backend.active() == "c":
        y = np.empty((N, C, oh, ow), dtype=x.dtype)   # the kernel writes every element
        _, lib = backend.kernels()
        fn = lib.max_unpool_forward_f32 if x.dtype == np.float32 else lib.max_unpool_forward_f64
        fn(backend.pointer(x), backend.pointer(indices), backend.pointer(y),
           N * C, H * W, oh * ow)
        return y
    return max_unpool_forward_numpy(x, indices, (oh, ow))


def max_unpool_backward(dy, indices):
    """The gradient of unpooling, a gather: dy: (N, C, OH, OW), indices: (N, C, H, W) -> dx.

    ``dx[n, c, h, w] = dy[n, c].flat[indices[n, c, h, w]]``.
    """
    dy = as_float_tensor(dy, "max_unpool2d output gradient")
    N, C, OH, OW = dy.shape
    if isinstance(indices, np.ndarray) and (indices.ndim != 4 or indices.shape[:2] != (N, C)):
        raise ValueError(f"max_unpool2d indices must have shape (N, C, H, W) with "
                         f"(N, C) = {(N, C)}, got {indices.shape}")
    indices = checked_unpool_indices(indices, getattr(indices, "shape", None), OH * OW)
    if backend.active() == "c":
        dx = np.empty(indices.shape, dtype=dy.dtype)
        _, lib = backend.kernels()
        fn = lib.max_unpool_backward_f32 if dy.dtype == np.float32 else lib.max_unpool_backward_f64
        fn(backend.pointer(dy), backend.pointer(indices), backend.pointer(dx),
           N * C, indices.shape[2] * indices.shape[3], OH * OW)
        return dx
    return max_unpool_backward_numpy(dy, indices)


def checked_unpool_indices(indices, shape, plane_size):
    """indices as a C-contiguous int64 array, after checking type, shape and range.

    Every index must lie in [0, plane_size): the C kernels write (forward) or
    read (backward) at it without further checks.
    """
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    check_same_shape(indices, shape, "indices")
    # The cast wraps a uint64 index of 2**63 or more to a negative one: still refused.
    as_int64 = np.ascontiguousarray(indices, dtype=np.int64)
    if not indices_in_range(as_int64, plane_size):
        low, high = int(indices.min()), int(indices.max())
        bad = low if low < 0 else high
        raise ValueError(f"unpooling index {bad} is out of range for an output plane of "
                         f"{plane_size} pixels")
    return as_int64


# --- the NumPy reference -------------------------------------------------------------

def max_pool_forward_numpy(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """Reference: gather every window offset, take the argmax over offsets."""
    N, C, H, W = x.shape
    rows = np.arange(oh)[:, None] * sh - ph   # top row of each window, (OH, 1)
    colz = np.arange(ow)[None, :] * sw - pw   # left column of each window, (1, OW)
    values, positions, valid = [], [], []
    for i in range(kh):
        for j in range(kw):
            iy, ix = rows + i * dh, colz + j * dw
            inside = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)   # (OH, OW)
            iy_c, ix_c = np.clip(iy, 0, H - 1), np.clip(ix, 0, W - 1)
            values.append(np.where(inside, x[:, :, iy_c, ix_c], -np.inf))
            positions.append(np.broadcast_to(iy_c * W + ix_c, (oh, ow)))
            valid.append(np.broadcast_to(inside, (oh, ow)))
    values = np.stack(values)            # (KH*KW, N, C, OH, OW)
    positions = np.stack(positions)      # (KH*KW, OH, OW)
    valid = np.stack(valid)              # (KH*KW, OH, OW)
    # np.argmax returns the first NaN if there is one, else the first maximum.
    best = np.argmax(values, axis=0)     # (N, C, OH, OW)
    # A window whose real pixels are all -inf ties with the padding: use its
    # first real pixel instead, as the C kernel does.
    first_valid = np.argmax(valid, axis=0)                       # (OH, OW)
    picked_valid = np.take_along_axis(valid[:, None, None], best[None], axis=0)[0]
    best = np.where(picked_valid, best, first_valid)
    y = np.take_along_axis(values, best[None], axis=0)[0].astype(x.dtype)
    indices = np.take_along_axis(positions[:, None, None], best[None], axis=0)[0]
    return np.ascontiguousarray(y), np.ascontiguousarray(indices.astype(np.int64))


def scatter_add_planes(values, indices, image_shape):
    """out[n, c].flat[indices[n, c]] += values[n, c] (duplicates add up).

    values, indices: (N, C, h, w); returns (N, C, H, W) of values' dtype.
    """
    N, C, H, W = image_shape
    plane = np.arange(N * C).reshape(N, C, 1, 1) * (H * W)
    flat = np.bincount((plane + indices).ravel(), weights=values.ravel().astype(np.float64),
                       minlength=N * C * H * W)
    return flat.astype(values.dtype).reshape(image_shape)


def max_unpool_forward_numpy(x, indices, out_size):
    """Reference: a zero image, then each plane's values put at their indices."""
    N, C, H, W = x.shape
    y = np.zeros((N * C, out_size[0] * out_size[1]), dtype=x.dtype)
    np.put_along_axis(y, indices.reshape(N * C, H * W), x.reshape(N * C, H * W), axis=1)
    return y.reshape(N, C, *out_size)


def max_unpool_backward_numpy(dy, indices):
    """Reference: each plane of dy read at the indices."""
    N, C, OH, OW = dy.shape
    H, W = indices.shape[2:]
    dx = np.take_along_axis(dy.reshape(N * C, OH * OW), indices.reshape(N * C, H * W), axis=1)
    return dx.reshape(indices.shape)
