"""The VGG16 encoder of FCN: 13 3x3 convolutions, 5 ceil-mode max pools, fc6/fc7 as convolutions.

    x (N, 3, H, W)
    conv1_1 (pad 100) conv1_2 pool1 | conv2_1 conv2_2 pool2 | conv3_1..3_3 pool3 |
    conv4_1..4_3 pool4 | conv5_1..5_3 pool5 | fc6 (7x7, no pad) relu drop | fc7 (1x1) relu drop

Every convolution is followed by a ReLU (fused into it: ``ConvReLU2d``).  The
padding of 100 on conv1_1 is the reference FCN's trick that makes any input size,
down to 1x1, survive the five poolings and the 7x7 fc6; the crops in the FCN head
undo the offset it adds.
"""
import numpy as np

from ..init import he_normal
from ..layers import ConvReLU2d, Dropout, MaxPool2d

# (name, out_channels) per convolution, None for a 2x2 stride-2 max pool; full width.
VGG16_LAYERS = (
    ("conv1_1", 64), ("conv1_2", 64), ("pool1", None),
    ("conv2_1", 128), ("conv2_2", 128), ("pool2", None),
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("pool3", None),
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("pool4", None),
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512), ("pool5", None),
)
FC_CHANNELS = 4096
CONV1_PADDING = 100


def scaled_channels(channels, width):
    """A channel count scaled by ``width``: ``max(1, round(channels * width))``."""
    return max(1, round(channels * width))


def check_width(width):
    if isinstance(width, bool) or not isinstance(width, (int, float, np.integer, np.floating)) \
            or not np.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    return float(width)


def encoder_conv_specs(width=1.0):
    """The encoder's convolutions as ``(name, in_channels, out_channels, kernel, padding)``.

    Computed from the architecture table alone, so shapes and parameter counts
    are known without allocating a single weight.
    """
    width = check_width(width)
    specs, channels = [], 3
    for name, out in VGG16_LAYERS:
        if out is None:
            continue
        out = scaled_channels(out, width)
        specs.append((name, channels, out, 3, CONV1_PADDING if name == "conv1_1" else 1))
        channels = out
    fc = scaled_channels(FC_CHANNELS, width)
    specs.append(("fc6", channels, fc, 7, 0))
    specs.append(("fc7", fc, fc, 1, 0))
    return specs


class VGG16Encoder:
    """VGG16 with its classifier turned into convolutions (fc6, fc7), as FCN uses it.

    forward(x: (N, 3, H, W)) -> {"pool3": (N, C3, ., .), "pool4": (N, C4, ., .),
    "fc7": (N, C_fc, ., .)} (fc7 after its ReLU and dropout).
    backward({"fc7": d, "pool3": d or absent, "pool4": d or absent}) -> dx.
    """

    TAPS = ("pool3", "pool4")

    def __init__(self, width=1.0, dropout=0.5, dtype=np.float32, init_rng=None, dropout_rng=None):
        self.convs = {}          # name -> Conv2d, in forward order
        self.steps = []          # (name, module) in forward order
        init_rng = np.random.default_rng(init_rng)
        specs = {spec[0]: spec for spec in encoder_conv_specs(width)}
        for name, _ in VGG16_LAYERS:
            if name.startswith("pool"):
                self.steps.append((name, MaxPool2d(2, 2, ceil_mode=True)))
            else:
                self._add_conv(specs[name], dtype, init_rng)
        for name in ("fc6", "fc7"):
            self._add_conv(specs[name], dtype, init_rng)
            self.steps.append((f"drop{name[2:]}", Dropout(dropout, rng=dropout_rng)))

    def _add_conv(self, spec, dtype, init_rng):
        """A convolution and its ReLU (one fused module), He normal weights, zero biases."""
        name, cin, cout, k, pad = spec
        conv = ConvReLU2d(cin, cout, k, padding=pad, dtype=dtype, rng=init_rng)
        conv.params["weight"][...] = he_normal(conv.params["weight"].shape, init_rng, dtype)
        conv.params["bias"][...] = 0
        self.convs[name] = conv
        self.steps.append((name, conv))

    def modules(self):
        return [module for _, module in self.steps]

    def forward(self, x):
        taps = {}
        for name, module in self.steps:
            x = module.forward(x)
            if name in self.TAPS:
                taps[name] = x
        taps["fc7"] = x
        return taps

    def backward(self, grads):
        dy = grads["fc7"]
        for name, module in reversed(self.steps):
            if name in self.TAPS and grads.get(name) is not None:
                # The tap feeds both the next block and a skip branch: gradients add.
                dy = dy + grads[name]
            dy = module.backward(dy)
        return dy

