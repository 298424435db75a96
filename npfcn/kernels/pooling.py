"""Max pooling with argmax indices, and max unpooling, in C (``csrc/maxpool.c``,
``csrc/unpool.c``).

Equal ``npfcn.reference.pooling``: ``pool_with_argmax`` its ``max_pool2d_forward``,
``scatter_to_argmax`` its ``max_pool2d_backward``, ``unpool`` its
``max_unpool2d_forward`` and ``gather_at_indices`` its ``max_unpool2d_backward``,
exactly (no arithmetic but the sums of repeated indices).  Indices follow PyTorch:
``indices[n, c, oy, ox] = iy*W + ix``, the flat position of the maximum inside
its own H x W plane.

``npfcn.functional`` validates the user's arguments; every array still passes
``npfcn.kernels.boundary`` here, indices included (each must lie in its plane),
because C reads and writes at them without further checks.
"""
import numpy as np

from . import backend, boundary
from .bands import check_geometry


def _fn(name, dtype):
    return getattr(backend.lib(), f"{name}_{boundary.suffix(dtype)}")


def pool_with_argmax(x, g):
    """x: (N, C, H, W) -> (y: (N, C, OH, OW), indices: (N, C, OH, OW) int64).

    g = (KH, KW, SH, SW, PH, PW, DH, DW, OH, OW), every window touching the image.
    """
    check_geometry("max_pool", g)
    N, C, H, W = x.shape
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = g
    boundary.check_extent((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow), "max_pool")
    boundary.check_size(N * C * oh * ow, "max_pool output")
    y = np.empty((N, C, oh, ow), dtype=x.dtype)
    indices = np.empty((N, C, oh, ow), dtype=np.int64)
    boundary.check("max_pool", x.dtype, {"input": (x, (N, C, H, W)), "output": (y, y.shape)})
    P = boundary.pointer
    _fn("maxpool_forward", x.dtype)(P(x), P(y), P(indices), N * C, H, W, *g)
    return y, indices


def scatter_to_argmax(dy, indices, image_shape):
    """dx: image_shape, each dy added at its window's argmax.  dy, indices: (N, C, OH, OW)."""
    if len(image_shape) != 4 or min(image_shape) < 0:
        raise ValueError(f"max_pool gradient: image_shape must be (N, C, H, W), got {image_shape}")
    N, C, H, W = image_shape
    boundary.check_size(N * C * H * W, "max_pool gradient")
    dx = np.empty(image_shape, dtype=dy.dtype)   # the kernel writes every element
    boundary.check("max_pool gradient", dy.dtype,
                   {"output gradient": (dy, (N, C, *dy.shape[2:])), "input gradient": (dx, dx.shape)},
                   indices=("indices", indices, dy.shape, H * W))
    P = boundary.pointer
    _fn("maxpool_backward", dy.dtype)(P(dy), P(indices), P(dx), N * C, H * W,
                                      dy.shape[2] * dy.shape[3])
    return dx


def unpool(x, indices, out_size):
    """y: (N, C, OH, OW) zeros, with ``y[n, c].flat[indices[n, c, h, w]] = x[n, c, h, w]``.

    x, indices: (N, C, H, W).  A repeated index keeps the last value in scan order.
    """
    N, C, H, W = x.shape
    OH, OW = out_size
    boundary.check_size(N * C * OH * OW, "max_unpool2d output")
    y = np.empty((N, C, OH, OW), dtype=x.dtype)   # the kernel writes every element
    boundary.check("max_unpool", x.dtype, {"input": (x, x.shape), "output": (y, y.shape)},
                   indices=("indices", indices, x.shape, OH * OW))
    P = boundary.pointer
    _fn("max_unpool_forward", x.dtype)(P(x), P(indices), P(y), N * C, H * W, OH * OW)
    return y


def gather_at_indices(dy, indices):
    """dx[n, c, h, w] = dy[n, c].flat[indices[n, c, h, w]].  dy: (N, C, OH, OW)."""
    N, C, OH, OW = dy.shape
    if len(getattr(indices, "shape", ())) != 4:
        raise ValueError("max_unpool gradient: indices must be (N, C, H, W)")
    dx = np.empty(indices.shape, dtype=dy.dtype)
    boundary.check("max_unpool gradient", dy.dtype,
                   {"output gradient": (dy, dy.shape), "input gradient": (dx, (N, C, *dx.shape[2:]))},
                   indices=("indices", indices, dx.shape, OH * OW))
    P = boundary.pointer
    _fn("max_unpool_backward", dy.dtype)(P(dy), P(indices), P(dx), N * C,
                                         indices.shape[2] * indices.shape[3], OH * OW)
    return dx
