"""Encoder-decoder nets of the SegNet paper (Badrinarayanan, Kendall & Cipolla, TPAMI 2017)
and the baselines it compares them with, all with batch normalisation.

    SegNet        VGG16's 13 3x3 convolutions, each + BN + ReLU, 5 2x2 max pools that keep
                  their indices; a mirrored decoder: max unpooling with those indices, then
                  3x3 convolutions + BN + ReLU; a final 3x3 convolution to the classes.
    SegNetBasic   4 encoders (7x7 conv of 64 + BN + ReLU + 2x2 max pool with indices);
                  4 decoders (max unpooling + 7x7 conv of 64 + BN, no ReLU); 1x1 classifier.
    FCNBasic      SegNetBasic's encoder; decoder of learned upsampling: each pool's output
                  reduced to the classes by a 1x1 conv, the running score upsampled x2 by a
                  transposed conv (started bilinear) and added to the next reduced map.
    BilinearBasic FCNBasic with the x2 upsampling fixed to bilinear interpolation (not learned).
    PlainNet      the course's first design: same-size 3x3 convs + BN + ReLU that never
                  downsample, about SegNetBasic's parameters; receptive field 2*depth + 1.

Max unpooling puts each value back where its pool found the maximum and zeros elsewhere;
the convolutions after it fill in the zeros.  Pools use ceil mode, and every unpooling
goes back to the size its pool saw, so any input (odd sizes and 1x1 included) gives
scores of the input's height and width.

A convolution followed by batch norm gets no bias (BN subtracts the mean, a bias would
be removed right away): SegNetBasic follows the paper (no biases), not the released
prototxt (which has them).  SegNet's encoder convolutions keep theirs, because that is
where ``npfcn import-vgg16`` puts VGG16's.

``params`` also hold every BN layer's running_mean / running_var: not in ``trainable``,
their ``grads`` stay zero (like FCN's frozen upsampling kernels), and so checkpoints,
``state_dict`` and the replicas carry them with the weights.
"""
import numpy as np

from ..init import bilinear_kernel, he_normal
from ..layers import (BatchNorm2d, Conv2d, ConvTranspose2d, Crop, MaxPool2d, MaxUnpool2d, ReLU,
                      _as_dtype)
from .fcn import FCN, _check_num_classes, _NamedArrays
from .vgg import VGG16_LAYERS, check_width, scaled_channels

BUFFER_KEYS = ("running_mean", "running_var")


# --- layer tables: shapes without allocating anything -----------------------------------

def _conv(name, cin, cout, k, bias):
    return ("conv", name, cin, cout, k, bias)


def _bn(name, channels):
    return ("bn", name, channels)


def _up(name, channels, learned):
    return ("up", name, channels, learned)


def _shapes_of(spec):
    kind, name = spec[:2]
    if kind == "conv":
        _, _, cin, cout, k, bias = spec
        return {f"{name}.weight": (cout, cin, k, k), **({f"{name}.bias": (cout,)} if bias else {})}
    if kind == "bn":
        c = spec[2]
        return {f"{name}.{key}": (c,) for key in ("weight", "bias") + BUFFER_KEYS}
    c = spec[2]
    return {f"{name}.weight": (c, c, 4, 4)}


def _basic_encoder(width, k=7):
    """SegNetBasic's encoder: conv{i} (k x k, no bias) and bn{i}, i = 1..4."""
    c = scaled_channels(64, width)
    specs, cin = [], 3
    for i in range(1, 5):
        specs += [_conv(f"conv{i}", cin, c, k, False), _bn(f"bn{i}", c)]
        cin = c
    return specs


def segnet_stages(width):
    """SegNet's five encoder stages as lists of (name, out_channels), from VGG16's table."""
    stages, current = [], []
    for name, out in VGG16_LAYERS:
        if out is None:
            stages.append(current)
            current = []
        else:
            current.append((name, scaled_channels(out, width)))
    return stages


def segnet_decoder_stages(width):
    """The mirror of ``segnet_stages``: stage s (5..1) has conv{s}_{j}_D for j = n..1; each
    keeps its stage's channels except the last, which narrows to the stage below's (as the
    paper's decoder).  The last stage's last conv is the classifier (not listed here)."""
    stages = segnet_stages(width)
    decoder = []
    for s in range(len(stages), 0, -1):
        convs = stages[s - 1]
        below = stages[s - 2][-1][1] if s > 1 else None
        layers = []
        for j in range(len(convs), 0, -1):
            out = convs[-1][1] if j > 1 else below
            if out is not None:
                layers.append((f"conv{s}_{j}_D", out))
        decoder.append((s, layers))
    return decoder


def layer_specs(model, num_classes, width):
    """Every layer of a model as a spec tuple, in forward order."""
    width, k = check_width(width), _check_num_classes(num_classes)
    if model == "segnet":
        specs, cin = [], 3
        for stage in segnet_stages(width):
            for name, cout in stage:
                specs += [_conv(name, cin, cout, 3, True), _bn(name.replace("conv", "bn"), cout)]
                cin = cout
        for _, layers in segnet_decoder_stages(width):
            for name, cout in layers:
                specs += [_conv(name, cin, cout, 3, False), _bn(name.replace("conv", "bn"), cout)]
                cin = cout
        return specs + [_conv("conv1_1_D", cin, k, 3, True)]
    c = scaled_channels(64, width)
    if model == "segnet-basic":
        specs = _basic_encoder(width)
        for i in range(4, 0, -1):
            specs += [_conv(f"conv_decode{i}", c, c, 7, False), _bn(f"bn_decode{i}", c)]
        return specs + [_conv("conv_classifier", c, k, 1, True)]
    if model in ("fcn-basic", "bilinear-basic"):
        specs = _basic_encoder(width)
        for i in range(4, 0, -1):
            specs.append(_conv(f"score_pool{i}", c, k, 1, True))
            specs.append(_up(f"upscore{i}", k, learned=model == "fcn-basic"))
        return specs
    if model == "plain":
        c = scaled_channels(PLAIN_CHANNELS, width)
        specs, cin = [], 3
        for i in range(1, PLAIN_DEPTH + 1):
            specs += [_conv(f"conv{i}", cin, c, 3, False), _bn(f"bn{i}", c)]
            cin = c
        return specs + [_conv("conv_classifier", c, k, 1, True)]
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")


PLAIN_DEPTH = 10        # receptive field 21 pixels
PLAIN_CHANNELS = 128    # 10 convs of 128: 1.33 M parameters, about SegNetBasic's 1.42 M


def parameter_shapes(model, num_classes=11, width=1.0):
    """``{name: shape}`` of every array in ``params`` (BN running statistics included)."""
    shapes = {}
    for spec in layer_specs(model, num_classes, width):
        shapes.update(_shapes_of(spec))
    return shapes


def fixed_names(model, num_classes=11, width=1.0):
    """Names in ``params`` that are not learned: BN running statistics, fixed upsampling."""
    names = []
    for spec in layer_specs(model, num_classes, width):
        if spec[0] == "bn":
            names += [f"{spec[1]}.{key}" for key in BUFFER_KEYS]
        elif spec[0] == "up" and not spec[3]:
            names.append(f"{spec[1]}.weight")
    return names


def count_parameters(model, num_classes=11, width=1.0):
    """``(learned, fixed)`` counts; fixed = fixed upsampling kernels (BN statistics not counted)."""
    shapes = parameter_shapes(model, num_classes, width)
    fixed = set(fixed_names(model, num_classes, width))
    buffers = {n for n in shapes if n.endswith(BUFFER_KEYS)}
    learned = sum(int(np.prod(s)) for n, s in shapes.items() if n not in fixed)
    frozen = sum(int(np.prod(s)) for n, s in shapes.items() if n in fixed and n not in buffers)
    return learned, frozen


# --- building blocks ------------------------------------------------------------------

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


def _fit_window(pool, size):
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


class _BNNet:
    """What every model here shares: layers built from ``layer_specs``, the ``params``/
    ``grads`` views, train/eval, state dicts (FCN's checks, BN statistics included).

    forward(x: (N, 3, H, W), any H, W >= 1) -> scores (N, num_classes, H, W)
    backward(dscores: (N, num_classes, H, W)) -> dx (N, 3, H, W), adding into ``grads``.
    In training mode every BN needs more than one value per channel: N*h*w > 1 at the
    deepest level.
    """

    NAME = None
    batch_norm = True       # the trainer skips LSUV for these nets

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        self.num_classes = _check_num_classes(num_classes)
        self.width = check_width(width)
        self.dtype = _as_dtype(dtype)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        init_seed, other_seed = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(other_seed)   # no dropout here; kept for the trainer
        init_rng = np.random.default_rng(init_seed)
        specs = layer_specs(self.NAME, self.num_classes, self.width)
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
        fixed = set(fixed_names(self.NAME, self.num_classes, self.width))
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
        learned, fixed = count_parameters(self.NAME, self.num_classes, self.width)
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

    # --- state --------------------------------------------------------------------
    def _modules(self):
        return list(self._layers.values()) + self._extra_modules

    zero_grad = FCN.zero_grad
    state_dict = FCN.state_dict           # every entry of params: BN statistics included
    load_state_dict = FCN.load_state_dict

    def train(self, mode=True):
        self.training = bool(mode)
        for module in self._modules():
            module.train(self.training)
        return self

    def eval(self):
        return self.train(False)


class _Slots(_NamedArrays):
    """``{"layer.key": array}`` over given (dict, key) slots; see fcn._NamedArrays."""

    def __init__(self, slots):  # noqa: super().__init__ builds slots from layers; not here
        self._slots = slots


class _ConvTable:
    """``model.encoder.convs``: the encoder's convolutions by name (the trainer's LARS list)."""

    def __init__(self, convs):
        self.convs = convs


class _UnpoolNet(_BNNet):
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
            x, indices = _fit_window(pool, size).forward(x)
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


class SegNet(_UnpoolNet):
    """SegNet: VGG16's encoder with BN, a mirrored max-unpooling decoder (module docstring)."""

    NAME = "segnet"

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        super().__init__(num_classes, width, dtype, seed)
        encoder = [[self._block(name, name.replace("conv", "bn")) for name, _ in stage]
                   for stage in segnet_stages(self.width)]
        decoder = [[self._block(name, name.replace("conv", "bn")) for name, _ in layers]
                   for _, layers in segnet_decoder_stages(self.width)]
        self._setup(encoder, decoder, "conv1_1_D")


class SegNetBasic(_UnpoolNet):
    """SegNet-Basic: 4 x (7x7 conv 64, BN, ReLU, pool), 4 x (unpool, 7x7 conv 64, BN), 1x1."""

    NAME = "segnet-basic"

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        super().__init__(num_classes, width, dtype, seed)
        encoder = [[self._block(f"conv{i}", f"bn{i}")] for i in range(1, 5)]
        # The paper's decoder has no ReLU: BN's output goes straight on.
        decoder = [[self._block(f"conv_decode{i}", f"bn_decode{i}", relu=False)]
                   for i in range(4, 0, -1)]
        self._setup(encoder, decoder, "conv_classifier")


class FCNBasic(_BNNet):
    """FCN-Basic: SegNetBasic's encoder; the decoder reduces each pool's output to the
    classes (1x1 ``score_pool{i}``) and builds the scores coarse to fine:

        s = score_pool4(p4);  s = crop(upscore4(s)) + score_pool3(p3);  ...
        s = crop(upscore1(s) + ...)  at the input's size

    ``upscore{i}``: x2 transposed convolutions (kernel 4, stride 2, padding 1) started as
    bilinear interpolation and learned; each output is cropped from the top left to the
    size of the map it is added to (ceil-mode pools make odd sizes round up).
    """

    NAME = "fcn-basic"

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        super().__init__(num_classes, width, dtype, seed)
        self._encoder = [self._block(f"conv{i}", f"bn{i}") for i in range(1, 5)]
        self._pools = [self._module(MaxPool2d(2, 2, ceil_mode=True)) for _ in range(4)]
        self._crops = [self._module(Crop(0)) for _ in range(4)]

    def _forward(self, x):
        taps, sizes = [], []
        for block, pool in zip(self._encoder, self._pools):
            x = block.forward(x)
            sizes.append(x.shape[2:])      # the size the pool saw: the next finer map's
            x = _fit_window(pool, x.shape[2:]).forward(x)
            taps.append(x)
        layers = self._layers
        score = layers["score_pool4"].forward(taps[3])
        for i in range(4, 0, -1):
            up = self._crops[i - 1].forward(layers[f"upscore{i}"].forward(score), sizes[i - 1])
            if i > 1:
                up += layers[f"score_pool{i - 1}"].forward(taps[i - 2])   # fresh array: in place
            score = up
        return score

    def _backward(self, d):
        layers = self._layers
        dtaps = [None] * 4
        for i in range(1, 5):
            if i > 1:
                dtaps[i - 2] = layers[f"score_pool{i - 1}"].backward(d)
            d = layers[f"upscore{i}"].backward(self._crops[i - 1].backward(d))
        dtaps[3] = layers["score_pool4"].backward(d)
        d = None
        for i in range(3, -1, -1):
            d = dtaps[i] if d is None else d + dtaps[i]
            d = self._encoder[i].backward(self._pools[i].backward(d))
        return d


class BilinearBasic(FCNBasic):
    """FCNBasic with fixed bilinear x2 upsampling: ``upscore{i}`` are not trained."""

    NAME = "bilinear-basic"


class PlainNet(_BNNet):
    """The course's first design: PLAIN_DEPTH 3x3 convs (+ BN + ReLU) at full resolution,
    never downsampling, then a 1x1 classifier.  Its receptive field is 2 * depth + 1
    pixels and every layer costs (H*W) * C*C*9 multiply-adds."""

    NAME = "plain"

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        super().__init__(num_classes, width, dtype, seed)
        self._stack = [self._block(f"conv{i}", f"bn{i}") for i in range(1, PLAIN_DEPTH + 1)]

    def _forward(self, x):
        for block in self._stack:
            x = block.forward(x)
        return self._layers["conv_classifier"].forward(x)

    def _backward(self, d):
        d = self._layers["conv_classifier"].backward(d)
        for block in reversed(self._stack):
            d = block.backward(d)
        return d


MODELS = {cls.NAME: cls for cls in (SegNet, SegNetBasic, FCNBasic, BilinearBasic, PlainNet)}
MODEL_NAMES = tuple(MODELS)


def build_model(model, num_classes=11, width=1.0, dtype=np.float32, seed=0):
    """A model of this module by name; ``build_model(**net.config)`` rebuilds ``net``."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    return MODELS[model](num_classes=num_classes, width=width, dtype=dtype, seed=seed)


def vgg16_to_segnet(state_dict, num_classes=11, dtype=np.float32, width=1.0, seed=0):
    """A SegNet whose 13 encoder convolutions hold VGG16's weights (torchvision layout,
    ``features.N.weight/bias``, see ``vgg_import``); its BN layers, decoder and classifier
    keep their fresh initialisation, VGG16's fully connected layers are not used.
    ValueError naming the key for a missing, misshapen or non-finite array."""
    from .vgg_import import TORCHVISION_TO_FCN, _strip_prefix

    net = SegNet(num_classes, width, dtype, seed)
    state = {_strip_prefix(str(k)): v for k, v in state_dict.items()}
    for source, target in TORCHVISION_TO_FCN.items():
        if target not in net.encoder.convs:          # fc6 / fc7
            continue
        for kind in ("weight", "bias"):
            key, name = f"{source}.{kind}", f"{target}.{kind}"
            if key not in state:
                raise ValueError(f"VGG16 weights have no {key!r} (needed for {name})")
            value = np.asarray(state[key])
            if value.dtype.kind != "f" or value.shape != net.params[name].shape:
                raise ValueError(f"{key} is {value.dtype} {value.shape}, expected floating-point "
                                 f"{net.params[name].shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{key} contains NaN or infinite values")
            net.params[name][...] = value
    return net
