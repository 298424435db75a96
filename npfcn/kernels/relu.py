"""ReLU in C (``csrc/relu.c``): one pass over contiguous arrays.

Equals ``npfcn.reference.elementwise.relu_forward`` / ``relu_backward``: NaN stays
NaN going forward, and the gradient is 0 wherever y <= 0 (also where dy is NaN or
inf there, as PyTorch).  NumPy's ``np.maximum`` / ``np.where`` make temporaries and
two passes; these write the result in one.
"""
import numpy as np

from . import backend, boundary


def clamp(x, out):
    """out = max(x, 0); ``out`` may be ``x`` itself (a ReLU fused after another layer)."""
    boundary.check("relu", x.dtype, {"x": (x, x.shape), "out": (out, x.shape)})
    fn = getattr(backend.lib(), f"relu_forward_{boundary.suffix(x.dtype)}")
    fn(boundary.pointer(x), boundary.pointer(out), x.size)
    return out


def masked_gradient(y, dy):
    """dx = dy where y > 0, else 0: the gradient through a ReLU whose output was y."""
    boundary.check("relu gradient", y.dtype, {"y": (y, y.shape), "dy": (dy, y.shape)})
    dx = np.empty_like(dy)
    fn = getattr(backend.lib(), f"relu_backward_{boundary.suffix(y.dtype)}")
    fn(boundary.pointer(y), boundary.pointer(dy), boundary.pointer(dx), dx.size)
    return dx
