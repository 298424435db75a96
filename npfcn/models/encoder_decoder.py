"""What the encoder-decoder nets of ``segnet.py`` share: layer tables (shapes without
allocating), convolution + batch norm blocks, and ``EncoderDecoderNet``, the base class
with npfcn's model interface (forward/backward, params/grads/trainable, train/eval,
state dicts, config).

A layer table is a list of spec tuples in forward order::

    ("conv", name, in_channels, out_channels, kernel, bias)   padding kernel // 2, He normal
    ("bn",   name, channels)                                  BatchNorm2d
    ("up",   name, channels, learned)                         x2 transposed conv, bilinear start

``params`` also hold every BN layer's running_mean / running_var: not in ``trainable``,
their ``grads`` stay zero (like FCN's frozen upsampling kernels), and so checkpoints,
``state_dict`` and the data-parallel ranks carry them with the weights.
"""
import numpy as np

from ..init import bilinear_kernel, he_normal
from ..layers import (BatchNorm2d, Conv2d, ConvTranspose2d, MaxPool2d, MaxUnpool2d, ReLU,
                      _as_dtype)
from .fcn import FCN, _check_num_classes, _NamedArrays
from .vgg import check_width

BUFFER_KEYS = ("running_mean", "running_var")


# --- layer tables: shapes without allocating anything -----------------------------------

def conv_spec(name, cin, cout, k, bias):
    return ("conv", name, cin, cout, k, bias)


def bn_spec(name, channels):
    return ("bn", name, channels)


def up_spec(name, channels, learned):
    return ("up", name, channels, learned)


def shapes_of(spec):
    """``{param name: shape}`` of one spec (a BN layer's running statistics included)."""
    kind, name = spec[:2]
    if kind == "conv":
        _, _, cin, cout, k, bias = spec
        return {f"{name}.weight": (cout, cin, k, k), **({f"{name}.bias": (cout,)} if bias else {})}
    if kind == "bn":
        c = spec[2]
        return {f"{name}.{key}": (c,) for key in ("weight", "bias") + BUFFER_KEYS}
    c = spec[2]
    return {f"{name}.weight": (c, c, 4, 4)}


def fixed_names_of(specs):
    """Names in ``params`` that are not learned: BN running statistics, fixed upsampling."""
    names = []
    for spec in specs:
        if spec[0] == "bn":
            names += [f"{spec[1]}.{key}" for key in BUFFER_KEYS]
        elif spec[0] == "up" and not spec[3]:
            names.append(f"{spec[1]}.weight")
    return names


def counts_of(specs):
    """``(learned, fixed)`` parameter counts of a table; BN running statistics not counted."""
    shapes = {}
    for spec in specs:
        shapes.update(shapes_of(spec))
    fixed = set(fixed_names_of(specs))
    learned = sum(int(np.prod(s)) for n, s in shapes.items() if n not in fixed)
    frozen = sum(int(np.prod(s)) for n, s in shapes.items()
                 if n in fixed and not n.endswith(BUFFER_KEYS))
    return learned, frozen


def _build_layer(spec, dtype, rng):
    kind, name = spec[:2]
    if kind == "conv":
        _, _, cin, cout, k, bias = spec
        conv = Conv2d(cin, cout, k, padding=k // 2, bias=bias, dtype=dtype, rng=rng)
        conv.params["weight"][...] = he_normal(conv.params["weight"].shape, rng, dtype)
        if bias:
            conv.params["bias"][...] = 0
        return conv
    if kind == "bn":
        return BatchNorm2d(spec[2], dtype=dtype)
    # x2 upsampling: kernel 4, stride 2, padding 1 gives exactly 2h, started bilinear;
    # a frozen one computes no weight gradient.
    up = ConvTranspose2d(spec[2], spec[2], 4, stride=2, padding=1, bias=False, dtype=dtype,
                         rng=rng, frozen=not spec[3])
    up.params["weight"][...] = bilinear_kernel(spec[2], 4, dtype)
    return up


def fit_window(pool, size):
    """The 2x2 pool window shrinks to 1 along an axis where the map is 1 pixel (stride
    still 2), so that even a 1x1 input passes every pool; returns the pool."""
    pool.kernel_size = (min(2, size[0]), min(2, size[1]))
    return pool


class ConvBN:
    """conv -> BN -> ReLU (optional); forward(x) -> y, backward(dy) -> dx."""

    def __init__(self, conv, bn, relu=True):
        self.conv, self.bn, self.relu = conv, bn, ReLU() if relu else None

    def modules(self):
        return [self.conv, self.bn] + ([self.relu] if self.relu else [])

    def forward(self, x):
        y = self.bn.forward(self.conv.forward(x))
        return self.relu.forward(y) if self.relu else y

    def backward(self, dy):
        if self.relu:
            dy = self.relu.backward(dy)
        return self.conv.backward(self.bn.backward(dy))


class EncoderDecoderNet:
    """What every model here shares: layers built from ``layer_specs``, the ``params``/
    ``grads`` views, train/eval, state dicts (FCN's checks, BN statistics included).

    forward(x: (N, 3, H, W), any H, W >= 1) -> scores (N, num_classes, H, W)
    backward(dscores: (N, num_classes, H, W)) -> dx (N, 3, H, W) (None without
    ``input_gradient``), adding into ``grads``.
    In training mode every BN needs more than one value per channel: N*h*w > 1 at the
    deepest level.
    """

    NAME = None
    batch_norm = True       # the trainer skips LSUV for these nets

    def __init__(self, specs, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        """specs: the layer table (``segnet.layer_specs``) of this architecture."""
        self.num_classes = _check_num_classes(num_classes)
        self.width = check_width(width)
        self.dtype = _as_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        init_seed, other_seed = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(other_seed)   # no dropout here; kept for the trainer
        init_rng = np.random.default_rng(init_seed)
        self._counts = counts_of(specs)
        self._layers = {spec[1]: _build_layer(spec, self.dtype, init_rng) for spec in specs}
        self._buffer_grads = {}
        param_slots, grad_slots = {}, {}
        for lname, layer in self._layers.items():
            for key in layer.params:
                param_slots[f"{lname}.{key}"] = (layer.params, key)
                grad_slots[f"{lname}.{key}"] = (layer.grads, key)
            for key in getattr(layer, "buffers", {}):
                name = f"{lname}.{key}"
                self._buffer_grads[name] = np.zeros_like(layer.buffers[key])
                param_slots[name] = (layer.buffers, key)
                grad_slots[name] = (self._buffer_grads, name)
        self.params, self.grads = _Slots(param_slots), _Slots(grad_slots)
        fixed = set(fixed_names_of(specs))
        self.trainable = [name for name in self.params if name not in fixed]
        self.encoder = _ConvTable({n: m for n, m in self._layers.items()
                                   if isinstance(m, Conv2d) and n.startswith("conv")
                                   and not n.endswith("_D") and "decode" not in n
                                   and n != "conv_classifier"})
        self.training = True
        self._output_shape = None
        self._extra_modules = []

    def _block(self, conv, bn, relu=True):
        block = ConvBN(self._layers[conv], self._layers[bn], relu)
        self._extra_modules += block.modules()
        return block

    def _module(self, module):
        self._extra_modules.append(module)
        return module

    # --- description --------------------------------------------------------------
    @property
    def config(self):
        return {"model": self.NAME, "num_classes": self.num_classes, "width": self.width}

    def num_parameters(self, trainable_only=False):
        """Learned parameters (and with ``trainable_only=False`` fixed kernels too); the
        BN running statistics are state, not parameters, and never counted."""
        learned, fixed = self._counts
        return learned if trainable_only else learned + fixed

    def __repr__(self):
        return f"{type(self).__name__}(num_classes={self.num_classes}, width={self.width:g})"

    # --- forward / backward shared parts ------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    check_input = FCN.check_input

    def forward(self, x):
        x = self.check_input(x)
        scores = self._forward(x)
        self._output_shape = scores.shape
        return scores

    def backward(self, dscores):
        if self._output_shape is None:
            raise ValueError("backward() called before forward() (or twice after one forward)")
        if not isinstance(dscores, np.ndarray) or dscores.shape != self._output_shape:
            raise ValueError(f"gradient of the scores must have shape {self._output_shape}, "
                             f"got {getattr(dscores, 'shape', type(dscores).__name__)}")
        dscores = np.ascontiguousarray(dscores, dtype=self.dtype)
        self._output_shape = None
        return self._backward(dscores)

    input_gradient = FCN.input_gradient   # a property over _first_conv() (see FCN)

    def _first_conv(self):
        """The convolution that reads the image: the first in the layer table."""
        return next(m for m in self._layers.values() if isinstance(m, Conv2d))

    # --- state --------------------------------------------------------------------
    def _modules(self):
        return list(self._layers.values()) + self._extra_modules

    zero_grad = FCN.zero_grad
    state_dict = FCN.state_dict           # every entry of params: BN statistics included
    load_state_dict = FCN.load_state_dict

    train = FCN.train
    eval = FCN.eval


class _Slots(_NamedArrays):
    """``{"layer.key": array}`` over given (dict, key) slots; see fcn._NamedArrays."""

    def __init__(self, slots):  # noqa: super().__init__ builds slots from layers; not here
        self._slots = slots


class _ConvTable:
    """``model.encoder.convs``: the encoder's convolutions by name (the trainer's LARS list)."""

    def __init__(self, convs):
        self.convs = convs


class UnpoolNet(EncoderDecoderNet):
    """Encoder stages of ConvBN blocks, each ended by a 2x2 pool that keeps its indices;
    decoder stages that unpool with those indices (to the size the pool saw) and
    apply ConvBN blocks; a classifier convolution."""

    def _setup(self, encoder, decoder, classifier):
        """encoder / decoder: lists of stages, each a list of ConvBN blocks."""
        self._encoder_stages, self._decoder_stages = encoder, decoder
        self._pools = [self._module(MaxPool2d(2, 2, ceil_mode=True, return_indices=True))
                       for _ in encoder]
        self._unpools = [self._module(MaxUnpool2d(2, 2)) for _ in decoder]
        self._classifier = self._layers[classifier]

    def _forward(self, x):
        self._switches = []     # (indices, size before the pool) per pool: the paper's "switches"
        for stage, pool in zip(self._encoder_stages, self._pools):
            for block in stage:
                x = block.forward(x)
            size = x.shape[2:]
            x, indices = fit_window(pool, size).forward(x)
            self._switches.append((indices, size, pool.kernel_size))
        for stage, unpool, (indices, size, window) in zip(self._decoder_stages, self._unpools,
                                                          reversed(self._switches)):
            unpool.kernel_size = window
            x = unpool.forward(x, indices, size)
            for block in stage:
                x = block.forward(x)
        self._switches = None
        return self._classifier.forward(x)

    def _backward(self, d):
        d = self._classifier.backward(d)
        for stage, unpool in zip(reversed(self._decoder_stages), reversed(self._unpools)):
            for block in reversed(stage):
                d = block.backward(d)
            d = unpool.backward(d)
        for stage, pool in zip(reversed(self._encoder_stages), reversed(self._pools)):
            d = pool.backward(d)
            for block in reversed(stage):
                d = block.backward(d)
        return d
