"""Stateful layers over ``npfcn.functional``, with PyTorch's names and arguments.

Every module has ``params`` and ``grads`` (dicts keyed ``"weight"``/``"bias"``),
``forward``, ``backward(dy)`` (returns d/dx and *adds* parameter gradients into
``grads``, as PyTorch accumulates), ``zero_grad()`` and ``train()``/``eval()``.
In training mode a module keeps what its backward pass needs from the last
``forward`` and frees it after ``backward``.  In eval mode (evaluation,
prediction) it keeps nothing: no inputs, masks or pooling indices stay alive
between layers, and ``backward`` raises.
"""
import math

import numpy as np

from . import functional as F
from ._checks import FLOAT_DTYPES, int_pair


def _as_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _as_rng(rng):
    """A numpy Generator from a Generator, an int seed or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


class Module:
    """Base class: parameter/gradient dicts, the cache, train/eval mode."""

    def __init__(self, dtype=np.float32):
        self.dtype = _as_dtype(dtype)
        self.params = {}
        self.grads = {}
        self.training = True
        self._cache = None

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _add_param(self, name, value):
        self.params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])

    def _accumulate(self, name, grad):
        if grad is not None:
            self.grads[name] += grad

    def _keep(self, cache):
        """Keep a forward pass's cache for backward - in training mode only."""
        self._cache = cache if self.training else None

    def _take_cache(self):
        """The cache of the last forward pass, which backward consumes once."""
        if self._cache is None:
            if not self.training:
                raise ValueError(f"{type(self).__name__}.backward() in eval mode: eval mode keeps "
                                 "nothing for backward; call .train() before the forward pass")
            raise ValueError(f"{type(self).__name__}.backward() called before forward() "
                             "(or twice after one forward)")
        cache, self._cache = self._cache, None
        return cache

    def zero_grad(self):
        for grad in self.grads.values():
            grad[...] = 0

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def forward(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - interface
        raise NotImplementedError


class Conv2d(Module):
    """2-D convolution. weight: (out_channels, in_channels, KH, KW), bias: (out_channels,).

    forward(x: (N, in_channels, H, W)) -> (N, out_channels, OH, OW) with
    ``OH = floor((H + 2*padding - dilation*(KH-1) - 1) / stride) + 1``.
    Initialised as PyTorch does: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, dtype=np.float32, rng=None):
        super().__init__(dtype)
        in_channels, out_channels = _positive(in_channels, "in_channels"), _positive(out_channels, "out_channels")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1)
        self.stride = int_pair(stride, "stride", 1)
        self.padding = int_pair(padding, "padding", 0)
        self.dilation = int_pair(dilation, "dilation", 1)
        rng = _as_rng(rng)
        bound = 1.0 / math.sqrt(in_channels * self.kernel_size[0] * self.kernel_size[1])
        self._add_param("weight", rng.uniform(-bound, bound,
                                              (out_channels, in_channels, *self.kernel_size)))
        if bias:
            self._add_param("bias", rng.uniform(-bound, bound, out_channels))

    relu = False    # ConvReLU2d: a ReLU fused after the convolution
    input_gradient = True   # False: backward returns None (a network's first layer)

    def forward(self, x):
        y, cache = F.conv2d_forward(x, self.params["weight"], self.params.get("bias"),
                                    self.stride, self.padding, self.dilation, self.relu)
        self._keep(cache)
        return y

    def backward(self, dy):
        # The weight gradient is added straight into grads["weight"] (no temporary).
        dx, _, db = F.conv2d_backward(dy, self._take_cache(), dw_into=self.grads["weight"],
                                      input_gradient=self.input_gradient)
        if "bias" in self.params:
            self._accumulate("bias", db)
        return dx


class ConvReLU2d(Conv2d):
    """Conv2d followed by ReLU, as one module (PyTorch's ``ConvReLU2d``): the same
    numbers as ``ReLU()(Conv2d(...)(x))``, but on the C backend's direct path the
    ReLU costs no pass of its own - the sums are clamped as they are stored, and the
    backward pass reads dy through the mask y > 0 as it stages it.  VGG puts a ReLU
    after every convolution.
    """

    relu = True


class ConvTranspose2d(Module):
    """Transposed convolution (learnable upsampling). weight: (in_channels, out_channels, KH, KW).

    forward(x: (N, in_channels, H, W)) -> (N, out_channels, OH, OW) with PyTorch's
    ``OH = (H-1)*stride - 2*padding + dilation*(KH-1) + output_padding + 1``, or
    ``OH = H*stride`` with ``padding="same"`` (TensorFlow's rule).

    ``frozen=True``: the parameters are not learned (FCN's bilinear upsampling, the
    reference's ``lr_mult: 0``).  backward then returns only d/dx - the convolution
    of dy with the same weight, read as a conv weight - and spends no time on
    gradients nobody uses; ``grads`` stay zero.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, dilation=1, bias=True, dtype=np.float32, rng=None,
                 frozen=False):
        super().__init__(dtype)
        in_channels, out_channels = _positive(in_channels, "in_channels"), _positive(out_channels, "out_channels")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1)
        self.stride = int_pair(stride, "stride", 1)
        self.padding = padding if padding == "same" else int_pair(padding, "padding", 0)
        self.output_padding = int_pair(output_padding, "output_padding", 0)
        self.dilation = int_pair(dilation, "dilation", 1)
        F.check_output_padding(self.padding, self.output_padding, self.stride, self.dilation)
        rng = _as_rng(rng)
        # PyTorch computes fan_in from weight.shape[1] * KH * KW for transposed convs.
        bound = 1.0 / math.sqrt(out_channels * self.kernel_size[0] * self.kernel_size[1])
        self._add_param("weight", rng.uniform(-bound, bound,
                                              (in_channels, out_channels, *self.kernel_size)))
        if bias:
            self._add_param("bias", rng.uniform(-bound, bound, out_channels))
        self.frozen = bool(frozen)

    def forward(self, x):
        y, cache = F.conv_transpose2d_forward(
            x, self.params["weight"], self.params.get("bias"), self.stride, self.padding,
            self.output_padding, self.dilation)
        self._keep(cache)
        self._output_shape = y.shape
        return y

    def backward(self, dy):
        cache = self._take_cache()
        if np.shape(dy) != self._output_shape:
            raise ValueError(f"gradient of conv_transpose2d output has shape {np.shape(dy)} "
                             f"but {self._output_shape} was expected")
        if self.frozen and self.padding != "same" and all(
                op < s for op, s in zip(self.output_padding, self.stride)):
            # The adjoint of the transposed convolution is the convolution with the same
            # weight and geometry; it lands exactly on x's size unless output_padding
            # reaches the stride or "same" pads asymmetrically (then the full pass below).
            dx, _ = F.conv2d_forward(dy, self.params["weight"], None, self.stride,
                                     self.padding, self.dilation)
            return dx
        dx, dw, db = F.conv_transpose2d_backward(
            dy, cache, dw_into=None if self.frozen else self.grads["weight"])
        if "bias" in self.params and not self.frozen:
            self._accumulate("bias", db)
        return dx


class MaxPool2d(Module):
    """Max pooling. forward(x: (N, C, H, W)) -> y (and int64 indices with return_indices).

    Indices are flat positions within each (n, c) plane, as in PyTorch, so they
    can be handed to ``MaxUnpool2d``.  ``ceil_mode=True`` is what FCN uses.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False):
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1)
        self.stride = int_pair(self.kernel_size if stride is None else stride, "stride", 1)
        self.padding = int_pair(padding, "padding", 0)
        self.dilation = int_pair(dilation, "dilation", 1)
        self.ceil_mode = bool(ceil_mode)
        self.return_indices = bool(return_indices)

    def forward(self, x):
        # The indices are an output when asked for (SegNet's unpooling needs them in
        # eval mode too); otherwise they live only in the cache, kept in training mode.
        y, indices, cache = F.max_pool2d_forward(x, self.kernel_size, self.stride,
                                                 self.padding, self.dilation, self.ceil_mode)
        self._keep(cache)
        return (y, indices) if self.return_indices else y

    def backward(self, dy):
        return F.max_pool2d_backward(dy, self._take_cache())


class MaxUnpool2d(Module):
    """Max unpooling: forward(x, indices, output_size=None) puts each value back at its index.

    x, indices: (N, C, H, W) -> (N, C, OH, OW), ``OH = (H-1)*stride - 2*padding + KH``
    unless ``output_size`` says otherwise.  Positions no index names are zero.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = int_pair(kernel_size, "kernel_size", 1)
        self.stride = int_pair(self.kernel_size if stride is None else stride, "stride", 1)
        self.padding = int_pair(padding, "padding", 0)

    def forward(self, x, indices, output_size=None):
        y, cache = F.max_unpool2d_forward(x, indices, self.kernel_size, self.stride,
                                          self.padding, output_size)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.max_unpool2d_backward(dy, self._take_cache())


class ReLU(Module):
    """y = max(x, 0), any shape."""

    def forward(self, x):
        y, cache = F.relu_forward(x)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.relu_backward(dy, self._take_cache())


class Dropout(Module):
    """Inverted dropout with probability ``p`` of zeroing; the identity in eval mode.

    The mask comes from ``self.rng`` (a numpy Generator), so seeding it makes
    training reproducible.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = _as_rng(rng)

    def forward(self, x):
        y, cache = F.dropout_forward(x, self.p, self.rng, self.training)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.dropout_backward(dy, self._take_cache())


class Crop(Module):
    """The FCN crop: forward(x, size) = x[:, :, o:o+H, o:o+W] with size = (H, W).

    ``size`` may also be a reference array whose last two axes give (H, W).
    """

    def __init__(self, offset):
        super().__init__()
        self.offset = int_pair(offset, "offset", 0)

    def forward(self, x, size):
        if isinstance(size, np.ndarray):
            size = size.shape[-2:]
        y, cache = F.crop_forward(x, self.offset, size)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.crop_backward(dy, self._take_cache())


class Add(Module):
    """Elementwise a + b (the FCN skip connection); backward returns (da, db)."""

    def forward(self, a, b):
        y, cache = F.add_forward(a, b)
        self._keep(cache)
        return y

    def backward(self, dy):
        return F.add_backward(dy, self._take_cache())


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)



class BatchNorm2d(Module):
    """Batch normalisation per channel, with PyTorch's semantics and names.

    forward(x: (N, num_features, H, W)) -> y of the same shape.  Training mode:
    normalised by the batch's mean and biased variance, and ``running_mean`` /
    ``running_var`` (the unbiased variance) move towards them by ``momentum``;
    eval mode: normalised by the running statistics.  ``params``: weight (gamma,
    started at 1) and bias (beta, at 0) when ``affine``; ``buffers``: running_mean
    (0) and running_var (1) when ``track_running_stats`` - state, not learned, but
    saved with the weights.  The math is in ``npfcn.reference.batchnorm``; the C
    backend makes its passes over the data in ``npfcn.kernels.batchnorm``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__(dtype)
        self.num_features = _positive(num_features, "num_features")
        for name, value in (("eps", eps), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if momentum > 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if self.affine:
            self._add_param("weight", np.ones(self.num_features))
            self._add_param("bias", np.zeros(self.num_features))
        self.buffers = {}
        if self.track_running_stats:
            self.buffers["running_mean"] = np.zeros(self.num_features, dtype=self.dtype)
            self.buffers["running_var"] = np.ones(self.num_features, dtype=self.dtype)

    def forward(self, x):
        from ._checks import as_float_tensor
        from . import functional

        x = as_float_tensor(x, "batch norm input", ndim=4, dtype=self.dtype)
        if x.shape[1] != self.num_features:
            raise ValueError(f"batch norm over {self.num_features} channels got input of "
                             f"shape {x.shape}")
        y, cache = functional.batch_norm2d_forward(
            x, self.params.get("weight"), self.params.get("bias"),
            self.buffers.get("running_mean"), self.buffers.get("running_var"),
            self.training, self.momentum, self.eps)
        self._keep(cache)
        return y

    def backward(self, dy):
        from . import functional

        dx, dgamma, dbeta = functional.batch_norm2d_backward(dy, self._take_cache())
        if self.affine:
            self._accumulate("weight", dgamma)
            self._accumulate("bias", dbeta)
        return dx
