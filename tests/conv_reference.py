"""What the C convolution paths are tested against (tests/test_direct.py,
tests/test_winograd.py, tests/test_fused_relu.py): ``npfcn.reference.conv``, the
textbook im2col convolution, an independent computation."""
import numpy as np

from npfcn import reference


def reference_conv(x, w, padding):
    """y, dy, dx, dw of sum(y * dy) by npfcn.reference, with a fixed dy."""
    y, cache = reference.conv2d_forward(x, w, None, 1, padding)
    dy = np.cos(np.arange(y.size, dtype=x.dtype)).reshape(y.shape)
    dx, dw, _ = reference.conv2d_backward(dy, cache)
    return y, dy, dx, dw


def relative(a, b):
    """Largest absolute difference relative to the largest value of the reference b."""
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)
