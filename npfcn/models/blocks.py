"""Two small modules the FCN head needs besides npfcn.layers: Upsample and Scale."""
import numpy as np

from .. import functional as F
from ..init import bilinear_kernel
from ..layers import Module


class Upsample(Module):
    """Transposed convolution without bias, started as bilinear interpolation.

    weight: (C, C, k, k), the bilinear filter on the channel diagonal.
    forward(x: (N, C, H, W)) -> (N, C, (H-1)*stride + k, (W-1)*stride + k)

    With ``learnable=False`` (the reference FCN's ``lr_mult: 0``) the kernel is
    fixed: backward returns only d/dx - the adjoint of a transposed convolution
    is the ordinary convolution with the same weight - and spends no time on a
    weight gradient nobody uses.  ``grads["weight"]`` then stays zero.
    """

    def __init__(self, channels, kernel_size, stride, learnable=False, dtype=np.float32):
        super().__init__(dtype)
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.learnable = bool(learnable)
        self._add_param("weight", bilinear_kernel(channels, self.kernel_size, self.dtype))

    def forward(self, x):
        y, cache = F.conv_transpose2d_forward(x, self.params["weight"], None, self.stride, 0)
        # A frozen kernel needs nothing from the forward pass but a marker that it ran.
        self._cache = cache if self.learnable else True
        return y

    def backward(self, dy):
        cache = self._take_cache()
        if self.learnable:
            dx, dw, _ = F.conv_transpose2d_backward(dy, cache)
            self._accumulate("weight", dw)
            return dx
        # d/dx of y = W^T-scatter(x) is the convolution of dy with the same weight,
        # read as a conv weight (out=C_in, in=C_out, k, k); it lands exactly on x's size.
        dx, _ = F.conv2d_forward(dy, self.params["weight"], None, self.stride, 0)
        return dx


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
