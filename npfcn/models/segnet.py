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

The layer tables are here (``layer_specs``: shapes and parameter counts without
allocating anything); the machinery they share is in ``encoder_decoder.py``.

A convolution followed by batch norm gets no bias (BN subtracts the mean, a bias would
be removed right away): SegNetBasic follows the paper (no biases), not the released
prototxt (which has them).  SegNet's encoder convolutions keep theirs, because that is
where ``npfcn import-vgg16`` puts VGG16's.

``params`` also hold every BN layer's running statistics (see ``encoder_decoder.py``).
"""
import numpy as np

from ..layers import Crop, MaxPool2d
from .encoder_decoder import (EncoderDecoderNet, UnpoolNet, bn_spec, conv_spec, counts_of,
                              fit_window, fixed_names_of, shapes_of, up_spec)
from .fcn import _check_num_classes
from .vgg import VGG16_LAYERS, check_width, scaled_channels


def _basic_encoder(width, k=7):
    """SegNetBasic's encoder: conv{i} (k x k, no bias) and bn{i}, i = 1..4."""
    c = scaled_channels(64, width)
    specs, cin = [], 3
    for i in range(1, 5):
        specs += [conv_spec(f"conv{i}", cin, c, k, False), bn_spec(f"bn{i}", c)]
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
                specs += [conv_spec(name, cin, cout, 3, True), bn_spec(name.replace("conv", "bn"), cout)]
                cin = cout
        for _, layers in segnet_decoder_stages(width):
            for name, cout in layers:
                specs += [conv_spec(name, cin, cout, 3, False), bn_spec(name.replace("conv", "bn"), cout)]
                cin = cout
        return specs + [conv_spec("conv1_1_D", cin, k, 3, True)]
    c = scaled_channels(64, width)
    if model == "segnet-basic":
        specs = _basic_encoder(width)
        for i in range(4, 0, -1):
            specs += [conv_spec(f"conv_decode{i}", c, c, 7, False), bn_spec(f"bn_decode{i}", c)]
        return specs + [conv_spec("conv_classifier", c, k, 1, True)]
    if model in ("fcn-basic", "bilinear-basic"):
        specs = _basic_encoder(width)
        for i in range(4, 0, -1):
            specs.append(conv_spec(f"score_pool{i}", c, k, 1, True))
            specs.append(up_spec(f"upscore{i}", k, learned=model == "fcn-basic"))
        return specs
    if model == "plain":
        c = scaled_channels(PLAIN_CHANNELS, width)
        specs, cin = [], 3
        for i in range(1, PLAIN_DEPTH + 1):
            specs += [conv_spec(f"conv{i}", cin, c, 3, False), bn_spec(f"bn{i}", c)]
            cin = c
        return specs + [conv_spec("conv_classifier", c, k, 1, True)]
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")


PLAIN_DEPTH = 10        # receptive field 21 pixels
PLAIN_CHANNELS = 128    # 10 convs of 128: 1.33 M parameters, about SegNetBasic's 1.42 M


def parameter_shapes(model, num_classes=11, width=1.0):
    """``{name: shape}`` of every array in ``params`` (BN running statistics included)."""
    shapes = {}
    for spec in layer_specs(model, num_classes, width):
        shapes.update(shapes_of(spec))
    return shapes


def fixed_names(model, num_classes=11, width=1.0):
    """Names in ``params`` that are not learned: BN running statistics, fixed upsampling."""
    return fixed_names_of(layer_specs(model, num_classes, width))


def count_parameters(model, num_classes=11, width=1.0):
    """``(learned, fixed)`` counts; fixed = fixed upsampling kernels (BN statistics not counted)."""
    return counts_of(layer_specs(model, num_classes, width))


class SegNet(UnpoolNet):
    """SegNet: VGG16's encoder with BN, a mirrored max-unpooling decoder (module docstring)."""

    NAME = "segnet"

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        super().__init__(layer_specs(self.NAME, num_classes, width), num_classes, width, dtype, seed)
        encoder = [[self._block(name, name.replace("conv", "bn")) for name, _ in stage]
                   for stage in segnet_stages(self.width)]
        decoder = [[self._block(name, name.replace("conv", "bn")) for name, _ in layers]
                   for _, layers in segnet_decoder_stages(self.width)]
        self._setup(encoder, decoder, "conv1_1_D")


class SegNetBasic(UnpoolNet):
    """SegNet-Basic: 4 x (7x7 conv 64, BN, ReLU, pool), 4 x (unpool, 7x7 conv 64, BN), 1x1."""

    NAME = "segnet-basic"

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        super().__init__(layer_specs(self.NAME, num_classes, width), num_classes, width, dtype, seed)
        encoder = [[self._block(f"conv{i}", f"bn{i}")] for i in range(1, 5)]
        # The paper's decoder has no ReLU: BN's output goes straight on.
        decoder = [[self._block(f"conv_decode{i}", f"bn_decode{i}", relu=False)]
                   for i in range(4, 0, -1)]
        self._setup(encoder, decoder, "conv_classifier")


class FCNBasic(EncoderDecoderNet):
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
        super().__init__(layer_specs(self.NAME, num_classes, width), num_classes, width, dtype, seed)
        self._encoder = [self._block(f"conv{i}", f"bn{i}") for i in range(1, 5)]
        self._pools = [self._module(MaxPool2d(2, 2, ceil_mode=True)) for _ in range(4)]
        self._crops = [self._module(Crop(0)) for _ in range(4)]

    def _forward(self, x):
        taps, sizes = [], []
        for block, pool in zip(self._encoder, self._pools):
            x = block.forward(x)
            sizes.append(x.shape[2:])      # the size the pool saw: the next finer map's
            x = fit_window(pool, x.shape[2:]).forward(x)
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


class PlainNet(EncoderDecoderNet):
    """The course's first design: PLAIN_DEPTH 3x3 convs (+ BN + ReLU) at full resolution,
    never downsampling, then a 1x1 classifier.  Its receptive field is 2 * depth + 1
    pixels and every layer costs (H*W) * C*C*9 multiply-adds."""

    NAME = "plain"

    def __init__(self, num_classes=11, width=1.0, dtype=np.float32, seed=0):
        super().__init__(layer_specs(self.NAME, num_classes, width), num_classes, width, dtype, seed)
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
