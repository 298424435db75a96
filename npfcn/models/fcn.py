"""FCN-32s, FCN-16s and FCN-8s: the Caffe reference nets of Long, Shelhamer & Darrell.

    encoder (VGG16, conv1_1 padded by 100)  ->  score_fr (1x1 conv to the classes)
    FCN-32s: upscore (k64 s32)                                       -> crop 19
    FCN-16s: upscore2 (k4 s2) + crop5(score_pool4(pool4))
             -> upscore16 (k32 s16)                                  -> crop 27
    FCN-8s:  upscore2 (k4 s2) + crop5(score_pool4(pool4))
             -> upscore_pool4 (k4 s2) + crop9(score_pool3(pool3))
             -> upscore8 (k16 s8)                                    -> crop 31

Every crop starts at its offset (top-left) and keeps the size of the other
operand; the final one keeps the input's height and width.  The offsets are
those Caffe's ``coord_map`` derives: following a pixel through the padding of
100, the pools and the transposed convolutions, the feature maps are shifted
against each other by exactly these amounts (see tests/test_models.py).

The upsampling layers are bias-free transposed convolutions (``ConvTranspose2d``)
started as bilinear interpolation and, as in the reference (``lr_mult: 0``),
frozen unless ``learn_upsampling=True``.  The score layers start at zero, as in the
reference; training still starts because their weight gradients are not zero.
"""
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import numpy as np

from .._checks import as_float_tensor
from ..init import bilinear_kernel
from ..layers import Conv2d, ConvTranspose2d, Crop, Module, _as_dtype
from .vgg import FC_CHANNELS, VGG16Encoder, check_width, encoder_conv_specs, scaled_channels

MODEL_NAMES = ("fcn8s", "fcn16s", "fcn32s")


@dataclass(frozen=True)
class Skip:
    """One skip connection: upsample the running score x2, add the cropped score of a pool."""
    tap: str            # encoder feature it scores ("pool4" / "pool3")
    upsample: str       # name of the x2 transposed convolution before the sum
    score: str          # name of the 1x1 scoring convolution
    channels: int       # the tap's channel count at full width
    offset: int         # crop offset of the scored tap against the upsampled score
    scale: float        # factor applied to the tap with scale_skips=True ("at-once" net)


@dataclass(frozen=True)
class FinalUpsample:
    name: str
    kernel_size: int
    stride: int
    offset: int         # crop offset against the input image


_POOL4 = Skip("pool4", "upscore2", "score_pool4", 512, 5, 1e-2)
_POOL3 = Skip("pool3", "upscore_pool4", "score_pool3", 256, 9, 1e-4)
ARCHITECTURES = {
    "fcn32s": ((), FinalUpsample("upscore", 64, 32, 19)),
    "fcn16s": ((_POOL4,), FinalUpsample("upscore16", 32, 16, 27)),
    "fcn8s": ((_POOL4, _POOL3), FinalUpsample("upscore8", 16, 8, 31)),
}


def _check_model_name(model):
    key = str(model).lower()
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    return key


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def parameter_shapes(model="fcn8s", num_classes=21, width=1.0):
    """``{name: shape}`` of every parameter, in the model's order, without allocating them.

    Returns a dict; the upsampling kernels (learned or not) are included.
    """
    model, num_classes = _check_model_name(model), _check_num_classes(num_classes)
    skips, final = ARCHITECTURES[model]
    shapes = {}
    for name, cin, cout, k, _ in encoder_conv_specs(width):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)
        fc_channels = cout
    shapes["score_fr.weight"], shapes["score_fr.bias"] = (num_classes, fc_channels, 1, 1), (num_classes,)
    for skip in skips:
        shapes[f"{skip.upsample}.weight"] = (num_classes, num_classes, 4, 4)
        cin = scaled_channels(skip.channels, width)
        shapes[f"{skip.score}.weight"], shapes[f"{skip.score}.bias"] = (num_classes, cin, 1, 1), (num_classes,)
    k = final.kernel_size
    shapes[f"{final.name}.weight"] = (num_classes, num_classes, k, k)
    return shapes


def upsampling_names(model="fcn8s"):
    """Names of the transposed-convolution weights of a model (frozen by default)."""
    skips, final = ARCHITECTURES[_check_model_name(model)]
    return [f"{s.upsample}.weight" for s in skips] + [f"{final.name}.weight"]


def count_parameters(model="fcn8s", num_classes=21, width=1.0):
    """``(learned, fixed_upsampling)`` parameter counts, from the shapes alone."""
    shapes = parameter_shapes(model, num_classes, width)
    frozen = set(upsampling_names(model))
    learned = sum(int(np.prod(s)) for n, s in shapes.items() if n not in frozen)
    fixed = sum(int(np.prod(s)) for n, s in shapes.items() if n in frozen)
    return learned, fixed


def physical_memory_bytes():
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def check_fits_in_memory(model, num_classes, width, dtype):
    """Refuse, before allocating anything, a model whose weights and gradients alone
    exceed the machine's RAM (a width of 64, or 100000 classes with their C x C
    upsampling kernels, would otherwise allocate until the OOM killer strikes)."""
    learned, fixed = count_parameters(model, num_classes, width)
    needed = 2 * (learned + fixed) * np.dtype(dtype).itemsize
    available = physical_memory_bytes()
    if available and needed > available:
        raise ValueError(
            f"{model} with {num_classes} classes and width {width:g} has {learned + fixed:,} "
            f"parameters: {needed >> 30:,} GiB for weights and gradients, more than this "
            f"machine's {available >> 30:,} GiB of memory")


class _NamedArrays(MutableMapping):
    """``{"layer.key": array}`` over the layers' own dicts (``params`` or ``grads``).

    Reading gives the layer's array itself (no copy), so in-place updates reach
    the layer.  Assigning replaces it in the layer too, after checking shape and dtype.
    """

    def __init__(self, layers, attribute):
        self._slots = {f"{lname}.{key}": (getattr(layer, attribute), key)
                       for lname, layer in layers.items() for key in getattr(layer, attribute)}

    def __getitem__(self, name):
        table, key = self._slots[name]
        return table[key]

    def __setitem__(self, name, value):
        if name not in self._slots:
            raise KeyError(f"no parameter named {name!r}")
        table, key = self._slots[name]
        old = table[key]
        if not isinstance(value, np.ndarray) or value.shape != old.shape or value.dtype != old.dtype:
            raise ValueError(f"{name} must be a {old.dtype} array of shape {old.shape}, got "
                             f"{getattr(value, 'dtype', type(value).__name__)} "
                             f"{getattr(value, 'shape', '')}")
        table[key] = np.ascontiguousarray(value)

    def __delitem__(self, name):
        raise TypeError("parameters cannot be removed from a model")

    def __iter__(self):
        return iter(self._slots)

    def __len__(self):
        return len(self._slots)

    def __repr__(self):
        return "{" + ", ".join(f"{k!r}: array{self[k].shape}" for k in self) + "}"


class FCN:
    """Base class of FCN8s/FCN16s/FCN32s; ``ARCH`` names the variant.

    forward(x: (N, 3, H, W), any H, W >= 1) -> scores (N, num_classes, H, W)
    backward(dscores: (N, num_classes, H, W)) -> dx (N, 3, H, W), adding into ``grads``.

    ``params``/``grads`` are keyed ``"conv1_1.weight"`` ... ``"upscore8.weight"``;
    ``trainable`` lists what an optimizer updates.  ``width`` scales every VGG
    and fc channel count to ``max(1, round(c * width))``.  ``seed`` fixes the
    initial weights and the dropout masks (``rng``, shared by drop6 and drop7).
    """

    ARCH = None

    def __init__(self, num_classes=21, width=1.0, dtype=np.float32, learn_upsampling=False,
                 scale_skips=False, dropout=0.5, seed=0):
        if self.ARCH is None:
            raise TypeError("FCN is the base class; build FCN8s, FCN16s or FCN32s (or build_model)")
        self.num_classes = _check_num_classes(num_classes)
        self.width = check_width(width)
        self.dtype = _as_dtype(dtype)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.learn_upsampling, self.scale_skips = bool(learn_upsampling), bool(scale_skips)
        check_fits_in_memory(self.ARCH, self.num_classes, self.width, self.dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        init_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(dropout_seed)
        init_rng = np.random.default_rng(init_seed)

        self._skips, self._final = ARCHITECTURES[self.ARCH]
        self.encoder = VGG16Encoder(self.width, self.dropout, self.dtype, init_rng, self.rng)
        classes = self.num_classes
        fc_channels = scaled_channels(FC_CHANNELS, self.width)
        layers = dict(self.encoder.convs)
        layers["score_fr"] = _zero_conv(fc_channels, classes, self.dtype)
        self._skip_scales = {}
        for skip in self._skips:
            layers[skip.upsample] = _bilinear_upsampling(classes, 4, 2, self.learn_upsampling,
                                                         self.dtype)
            layers[skip.score] = _zero_conv(scaled_channels(skip.channels, self.width), classes,
                                            self.dtype)
            if self.scale_skips:
                self._skip_scales[skip.tap] = Scale(skip.scale)
        layers[self._final.name] = _bilinear_upsampling(classes, self._final.kernel_size,
                                                        self._final.stride, self.learn_upsampling,
                                                        self.dtype)
        self._layers = layers
        self._skip_crops = {skip.score: Crop(skip.offset) for skip in self._skips}
        self._final_crop = Crop(self._final.offset)
        self.params = _NamedArrays(layers, "params")
        self.grads = _NamedArrays(layers, "grads")
        frozen = set() if self.learn_upsampling else set(upsampling_names(self.ARCH))
        self.trainable = [name for name in self.params if name not in frozen]
        self.training = True
        self._output_shape = None

    # --- description --------------------------------------------------------------
    @property
    def config(self):
        """Everything ``build_model(**config)`` needs to rebuild this architecture."""
        return {"model": self.ARCH, "num_classes": self.num_classes, "width": self.width,
                "learn_upsampling": self.learn_upsampling, "scale_skips": self.scale_skips,
                "dropout": self.dropout}

    def num_parameters(self, trainable_only=False):
        names = self.trainable if trainable_only else list(self.params)
        return sum(self.params[name].size for name in names)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "model")
        return f"{type(self).__name__}({args})"

    # --- forward / backward -------------------------------------------------------
    def __call__(self, x):
        return self.forward(x)

    def check_input(self, x):
        """x as the network takes it: (N, 3, H >= 1, W >= 1) in the model's dtype, or an
        error naming what is wrong."""
        x = as_float_tensor(x, "model input", ndim=4, dtype=self.dtype)
        if x.shape[1] != 3:
            raise ValueError(f"model input must have 3 channels (N, 3, H, W), got shape {x.shape}")
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"model input must be at least 1x1 pixels, got shape {x.shape}")
        return x

    def forward(self, x):
        """x: (N, 3, H, W) in the model's dtype -> scores (N, num_classes, H, W)."""
        x = self.check_input(x)
        layers = self._layers
        taps = self.encoder.forward(x)
        score = layers["score_fr"].forward(taps["fc7"])
        for skip in self._skips:
            upsampled = layers[skip.upsample].forward(score)
            feature = taps[skip.tap]
            if self.scale_skips:
                feature = self._skip_scales[skip.tap].forward(feature)
            skip_score = self._skip_crops[skip.score].forward(
                layers[skip.score].forward(feature), upsampled.shape)
            upsampled += skip_score      # fresh array, not kept by any cache: safe in place
            score = upsampled
        upsampled = layers[self._final.name].forward(score)
        scores = self._final_crop.forward(upsampled, x.shape)
        self._output_shape = scores.shape
        return scores

    def backward(self, dscores):
        """dscores: (N, num_classes, H, W) -> dx: (N, 3, H, W) (None without
        ``input_gradient``); adds into ``grads``."""
        if self._output_shape is None:
            raise ValueError("backward() called before forward() (or twice after one forward)")
        dscores = as_float_tensor(dscores, "gradient of the scores", ndim=4, dtype=self.dtype)
        if dscores.shape != self._output_shape:
            raise ValueError(f"gradient of the scores has shape {dscores.shape} but the scores "
                             f"had shape {self._output_shape}")
        self._output_shape = None
        layers = self._layers
        d = layers[self._final.name].backward(self._final_crop.backward(dscores))
        tap_grads = {}
        for skip in reversed(self._skips):
            # The sum sends d to both operands: the cropped skip score and the upsampling.
            dfeature = layers[skip.score].backward(self._skip_crops[skip.score].backward(d))
            if self.scale_skips:
                dfeature = self._skip_scales[skip.tap].backward(dfeature)
            tap_grads[skip.tap] = dfeature
            d = layers[skip.upsample].backward(d)
        tap_grads["fc7"] = layers["score_fr"].backward(d)
        return self.encoder.backward(tap_grads)

    @property
    def input_gradient(self):
        """Whether backward computes dx, the gradient of the image (default True; backward
        returns None without it).  Training turns it off: nothing there needs dx, and it
        costs as much as the first layer's forward pass (PyTorch skips it too, for an
        input that does not require a gradient)."""
        return self._first_conv().input_gradient

    @input_gradient.setter
    def input_gradient(self, value):
        self._first_conv().input_gradient = bool(value)

    def _first_conv(self):
        return self.encoder.convs["conv1_1"]

    # --- state --------------------------------------------------------------------
    def _modules(self):
        return (self.encoder.modules() + list(self._layers.values())
                + list(self._skip_scales.values()) + list(self._skip_crops.values())
                + [self._final_crop])

    def zero_grad(self):
        for grad in self.grads.values():
            grad[...] = 0

    def train(self, mode=True):
        self.training = bool(mode)
        for module in self._modules():
            module.train(self.training)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """``{name: copy of the parameter}`` for every parameter (upsampling kernels included)."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state):
        """Copy ``state`` into the parameters after checking every key, shape and dtype.

        Raises ValueError naming the first problem (missing or unexpected key,
        wrong shape or dtype, not finite) before anything is changed.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping of name -> array, got {type(state).__name__}")
        missing = [name for name in self.params if name not in state]
        unexpected = [name for name in state if name not in self.params]
        if missing or unexpected:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                    ([f"unexpected {', '.join(map(str, unexpected))}"] if unexpected else [])
            raise ValueError(f"state dict does not match {self!r}: " + "; ".join(parts))
        for name, param in self.params.items():
            value = state[name]
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{name}: expected a numpy array, got {type(value).__name__}")
            if value.shape != param.shape:
                raise ValueError(f"{name}: shape {value.shape} does not match the model's {param.shape}")
            if value.dtype != param.dtype:
                raise ValueError(f"{name}: dtype {value.dtype} does not match the model's {param.dtype}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{name}: contains NaN or infinite values")
        for name, param in self.params.items():
            param[...] = state[name]


def _bilinear_upsampling(channels, kernel_size, stride, learned, dtype):
    """A bias-free transposed convolution (C, C, k, k) started as bilinear interpolation,
    frozen (not learned) unless ``learned``."""
    layer = ConvTranspose2d(channels, channels, kernel_size, stride, bias=False, dtype=dtype,
                            rng=0, frozen=not learned)
    layer.params["weight"][...] = bilinear_kernel(channels, kernel_size, dtype)
    return layer


class Scale(Module):
    """y = factor * x with a fixed factor: the "at-once" FCN's scaling of pool4/pool3
    (kept for users of that reference net, ``scale_skips=True``)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = float(factor)

    def forward(self, x):
        return x * x.dtype.type(self.factor)

    def backward(self, dy):
        return dy * dy.dtype.type(self.factor)         # needs nothing from forward


def _zero_conv(in_channels, out_channels, dtype):
    """A 1x1 scoring convolution started at zero, as the reference FCN's score layers."""
    conv = Conv2d(in_channels, out_channels, 1, dtype=dtype, rng=0)
    conv.params["weight"][...] = 0
    conv.params["bias"][...] = 0
    return conv


class FCN32s(FCN):
    ARCH = "fcn32s"


class FCN16s(FCN):
    ARCH = "fcn16s"


class FCN8s(FCN):
    ARCH = "fcn8s"


MODELS = {"fcn8s": FCN8s, "fcn16s": FCN16s, "fcn32s": FCN32s}


def build_model(model="fcn8s", num_classes=21, width=1.0, dtype=np.float32, learn_upsampling=False,
                scale_skips=False, dropout=0.5, seed=0):
    """An FCN by name: ``build_model(**other_model.config)`` rebuilds the same architecture."""
    return MODELS[_check_model_name(model)](num_classes=num_classes, width=width, dtype=dtype,
                                            learn_upsampling=learn_upsampling,
                                            scale_skips=scale_skips, dropout=dropout, seed=seed)
