"""Two small modules the FCN head needs besides npfcn.layers: Upsample and Scale."""
import numpy as np

from .. import functional as F
from .._checks import as_float_tensor
from ..init import bilinear_kernel
from ..layers import Module


class Upsample(Module):
    """Transposed convolution without bias, started as bilinear interpolation.

    weight: (C, C, k, k), the bilinear filter on the channel diagonal.
    forward(x: (N, C, H, W)) -> (N, C, (H-1)*stride + k, (W-1)*stride + k)

    With ``learnable=False`` (the reference FCN's ``lr_mult: 0``) the kernel is
    fixed: backward returns only d/dx - the adjoint of a transposed convolution
    is the ordinary convolution with the same weight - and spends no time on a
    weight gradient nobody uses; ``grads["weight"]`` stays zero.  A fixed kernel
    that is one filter on the channel diagonal (the bilinear start) upsamples
    every channel on its own: the N*C planes go through a 1-channel transposed
    convolution, C times fewer multiplications than the full (C, C) product.
    """

    def __init__(self, channels, kernel_size, stride, learnable=False, dtype=np.float32):
        super().__init__(dtype)
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.learnable = bool(learnable)
        self._add_param("weight", bilinear_kernel(channels, self.kernel_size, self.dtype))

    def forward(self, x):
        weight = self.params["weight"]
        if self.learnable:
            y, self._cache = F.conv_transpose2d_forward(x, weight, None, self.stride, 0)
            return y
        x = as_float_tensor(x, "upsampling input")
        N, C, H, W = x.shape
        planes = shared_diagonal_filter(weight)
        if planes is None:
            y, _ = F.conv_transpose2d_forward(x, weight, None, self.stride, 0)
        else:
            y, _ = F.conv_transpose2d_forward(x.reshape(N * C, 1, H, W), planes, None, self.stride, 0)
            y = y.reshape(N, C, *y.shape[2:])
        self._cache = (x.shape, planes)
        return y

    def backward(self, dy):
        cache = self._take_cache()
        if self.learnable:
            dx, dw, _ = F.conv_transpose2d_backward(dy, cache)
            self._accumulate("weight", dw)
            return dx
        shape, planes = cache
        dy = as_float_tensor(dy, "gradient of the upsampling", dtype=self.dtype)
        if dy.shape[:2] != shape[:2]:
            raise ValueError(f"gradient of the upsampling has shape {dy.shape}, expected "
                             f"{shape[:2]} in its first two axes")
        # d/dx of the scatter is the convolution of dy with the same weight (read as a conv
        # weight: out = C_in, in = C_out); it lands exactly on x's size.
        if planes is None:
            dx, _ = F.conv2d_forward(dy, self.params["weight"], None, self.stride, 0)
        else:
            N, C = shape[:2]
            dx, _ = F.conv2d_forward(dy.reshape(N * C, 1, *dy.shape[2:]), planes, None,
                                     self.stride, 0)
        dx = dx.reshape(shape)
        return dx


def shared_diagonal_filter(weight):
    """The (1, 1, k, k) filter if ``weight`` (C, C, k, k) is that filter on the diagonal, else None."""
    channels = weight.shape[0]
    flat = weight.reshape(channels * channels, -1)
    diagonal = flat[::channels + 1]                      # rows (c, c)
    if not (diagonal == diagonal[0]).all():
        return None
    if np.count_nonzero(flat) != np.count_nonzero(diagonal):   # anything off the diagonal
        return None
    return np.ascontiguousarray(weight[:1, :1])


class Scale(Module):
    """y = factor * x with a fixed factor (the "at-once" FCN's pool4/pool3 scaling)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        self._cache = True
        return x * x.dtype.type(self.factor)

    def backward(self, dy):
        self._take_cache()
        return dy * dy.dtype.type(self.factor)
