"""Predicting images larger than memory allows: overlapping tiles that give the whole-image result.

A fully convolutional network computes every output pixel from a bounded window
of input pixels, so an image can be cut into tiles, each tile predicted alone and
the centres of the tiles ("cores") pasted together.  The pasted result EQUALS the
whole-image prediction (up to float rounding of kernels that pick different paths
for different sizes) when two conditions hold:

1. **Tiles start on the network's alignment** (``TileGeometry.align``, 32 for
   FCN: the stride of pool5, the deepest map).  Shifting the input by a multiple
   of 32 shifts every feature map by a whole number of its pixels, so a 2x2 pool
   window covers the same four pixels in the tile as in the whole image, and
   the transposed convolutions' outputs land on the same pixels.  Shifted by
   any other amount, the pools would group different pixels and the result
   would differ everywhere, not only near the seams.
2. **Every core pixel keeps at least ``TileGeometry.radius`` pixels of real
   image around it inside its tile** (or the tile side IS the image side).
   ``radius`` is the reach of one output pixel: FCN-8s's score at pixel y
   depends on input pixels y-245 ... y+245 (``fcn_geometry`` follows the
   window through every layer).  Near a seam the tile sees zeros (conv1_1's
   padding of 100, conv padding 1 on every map, the ceil-mode pools' short
   windows) where the whole image has pixels; those differences travel at most
   ``radius`` pixels inwards, so they never reach a core pixel.  At the image's
   own border the tile's border IS the image's: FCN's padding of 100, the
   crops 5, 9 and 31 and the ceil-mode pools then see exactly what they see in
   the whole image (a tile starting at 0 has maps that are prefixes of the
   whole image's maps; one ending at the image's end, started on the
   alignment, has maps that are suffixes of them).

So tiles are cores of ``core`` x ``core`` pixels (a multiple of ``align``) with
``halo = radius`` rounded up to ``align`` on each side, clipped to the image.

With ``flip`` the mirrored image is scored too.  A tile of the mirrored image
starts at ``W - x1``, which is on the alignment only if ``W`` is; the mirrored
pass therefore widens the tile on the right to the next column ``x1'`` with
``W - x1'`` a multiple of ``align`` (at most ``align - 1`` more columns).

The memory a tile needs is estimated from the network's layer shapes
(``forward_bytes``); tiles are as large as the budget allows.
"""
import math
import re
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_MEMORY = 1 << 30   # working memory of one forward pass besides the weights: the
#                                default-width FCN-8s stays under ~1.5 GiB of resident memory
#                                with the picture and Python beside it
_SCRATCH_BYTES = 64 << 20      # kernel workspaces (blocks of ~16 MiB per thread) and temporaries


class MemoryBudgetError(ValueError):
    """The memory budget is too small for even the smallest tile."""


@dataclass(frozen=True)
class TileGeometry:
    """align: tiles start on multiples of this (pixels); radius: an output pixel depends on
    input pixels at most this far away (pixels, along each axis)."""

    align: int
    radius: int

    @property
    def halo(self):
        """Overlap kept on each inner side of a tile: radius rounded up to the alignment."""
        return -(-self.radius // self.align) * self.align


# --- the reach of an output pixel -------------------------------------------------------

@dataclass(frozen=True)
class _Window:
    """Feature pixel j depends on input pixels stride*j + lo ... stride*j + hi (one axis)."""

    stride: int
    lo: int
    hi: int

    def conv(self, kernel, stride=1, padding=0):
        """After a convolution or pooling: output j reads inputs stride*j - padding + (0..kernel-1)."""
        s = self.stride
        return _Window(s * stride, self.lo - s * padding, self.hi + s * (kernel - 1 - padding))

    def transposed(self, kernel, stride, padding=0):
        """After a transposed convolution: output o receives input i when
        stride*i - padding <= o <= stride*i - padding + kernel - 1."""
        s = self.stride
        if s % stride:
            raise ValueError(f"a transposed convolution of stride {stride} on a map of stride {s}")
        return _Window(s // stride, self.lo + s * (padding - kernel + 1) // stride,
                       self.hi + s * padding // stride)

    def crop(self, offset):
        """After ``y = x[offset:]``: y[j] is x[j + offset]."""
        return _Window(self.stride, self.lo + self.stride * offset, self.hi + self.stride * offset)

    def union(self, other):
        """The sum of two maps of the same stride depends on what either depends on."""
        if other.stride != self.stride:
            raise ValueError("adding maps of different strides")
        return _Window(self.stride, min(self.lo, other.lo), max(self.hi, other.hi))


def fcn_geometry(model="fcn8s"):
    """TileGeometry of FCN-32s/16s/8s, derived from the architecture tables.

    Follows one output pixel's window back through conv1_1 (padding 100), the
    3x3 convolutions (padding 1), the 2x2 pools, fc6 (7x7), the 1x1 score layers,
    the transposed convolutions and the crops.  FCN-8s: align 32, radius 245.
    """
    from .models.fcn import ARCHITECTURES
    from .models.vgg import CONV1_PADDING, VGG16_LAYERS

    skips, final = ARCHITECTURES[model]
    window, taps, deepest = _Window(1, 0, 0), {}, 1
    for name, channels in VGG16_LAYERS:
        if channels is None:
            window = window.conv(2, 2)
            taps[name] = window
        else:
            window = window.conv(3, 1, CONV1_PADDING if name == "conv1_1" else 1)
        deepest = max(deepest, window.stride)
    score = window.conv(7).conv(1).conv(1)             # fc6, fc7, score_fr
    for skip in skips:
        score = score.transposed(4, 2).union(taps[skip.tap].crop(skip.offset))
    out = score.transposed(final.kernel_size, final.stride).crop(final.offset)
    if out.stride != 1:
        raise ValueError(f"{model} does not end at the input's resolution")
    return TileGeometry(align=deepest, radius=max(-out.lo, out.hi))


def encoder_decoder_geometry(model="segnet-basic", width=1.0):
    """TileGeometry of the nets of ``npfcn.models.segnet`` (eval mode: batch norm is then a
    fixed affine map per channel, the same in every tile).

    SegNet / SegNet-Basic: an unpooled pixel depends on the pooled value above it
    (a stride-2 transposed window) and, through the pool's indices, on the 2x2 window
    of the map the pool saw (taken one pixel wider: which of its pixels won).
    FCN-Basic / Bilinear-Basic: x2 transposed convolutions (kernel 4, padding 1) cropped
    from the top left, plus 1x1 scores of each pool.  Plain: stride-1 convolutions.
    """
    from .models.segnet import layer_specs

    convs = [spec for spec in layer_specs(model, 2, width) if spec[0] == "conv"]
    kernel = {spec[1]: spec[4] for spec in convs}
    window, deepest = _Window(1, 0, 0), 1
    if model == "plain":
        for name, k in kernel.items():
            window = window.conv(k, 1, k // 2)
        return TileGeometry(align=1, radius=max(-window.lo, window.hi))
    if model in ("segnet", "segnet-basic"):
        from .models.segnet import segnet_decoder_stages, segnet_stages

        if model == "segnet":
            encoder = [[name for name, _ in stage] for stage in segnet_stages(width)]
            decoder = [[name for name, _ in layers] for _, layers in segnet_decoder_stages(width)]
            classifier = "conv1_1_D"
        else:
            encoder = [[f"conv{i}"] for i in range(1, 5)]
            decoder = [[f"conv_decode{i}"] for i in range(4, 0, -1)]
            classifier = "conv_classifier"
        seen = []                                      # the map each pool saw
        for stage in encoder:
            for name in stage:
                window = window.conv(kernel[name], 1, kernel[name] // 2)
            seen.append(window)
            window = window.conv(2, 2)
            deepest = max(deepest, window.stride)
        for stage, before in zip(decoder, reversed(seen)):
            window = window.transposed(2, 2).union(before.conv(3, 1, 1))
            for name in stage:
                window = window.conv(kernel[name], 1, kernel[name] // 2)
        window = window.conv(kernel[classifier], 1, kernel[classifier] // 2)
    else:                                              # fcn-basic, bilinear-basic
        taps = []
        for i in range(1, 5):
            window = window.conv(kernel[f"conv{i}"], 1, kernel[f"conv{i}"] // 2).conv(2, 2)
            taps.append(window)
        deepest = window.stride
        for i in range(4, 0, -1):
            window = window.transposed(4, 2, 1)
            if i > 1:
                window = window.union(taps[i - 2])
    if window.stride != 1:
        raise ValueError(f"{model} does not end at the input's resolution")
    return TileGeometry(align=deepest, radius=max(-window.lo, window.hi))


_ENCODER_DECODER = ("segnet", "segnet-basic", "fcn-basic", "bilinear-basic", "plain")


def geometry_of(model):
    """The model's TileGeometry: npfcn's models from their architecture; other models may
    define ``tile_geometry()``; None when unknown (such a model is always run whole)."""
    custom = getattr(model, "tile_geometry", None)
    if callable(custom):
        return custom()
    config = getattr(model, "config", None) or {}
    name = config.get("model")
    if name in ("fcn8s", "fcn16s", "fcn32s"):
        return fcn_geometry(name)
    if name in _ENCODER_DECODER:
        return encoder_decoder_geometry(name, config.get("width", 1.0))
    return None


# --- memory -------------------------------------------------------------------------------

def forward_bytes(model, n, height, width, flip=False):
    """Estimated peak working memory (bytes) of predicting n images of height x width in
    one forward pass in eval mode, besides the model's own weights.

    Eval mode keeps nothing for a backward pass, so at any moment what is alive is
    one layer's input and output (for a pool also its int64 indices), the pool3 and
    pool4 maps the skip connections wait for, then the head's score maps; before
    that the preprocessing temporaries.  The largest of those moments, with a
    quarter more for the kernels' scratch and a fixed allowance for their reused
    workspaces, is the estimate (tests/test_tiling.py checks it against numpy's
    traced allocations).  Models other than FCN: ``model.forward_bytes(n, height,
    width)`` if defined, else None.
    """
    custom = getattr(model, "forward_bytes", None)
    if callable(custom):
        return int(custom(n, height, width)) + _SCRATCH_BYTES
    config = getattr(model, "config", None) or {}
    if config.get("model") in _ENCODER_DECODER:
        return _encoder_decoder_bytes(model, config, n, height, width, flip)
    if config.get("model") not in ("fcn8s", "fcn16s", "fcn32s"):
        return None
    from .models.fcn import ARCHITECTURES
    from .models.vgg import CONV1_PADDING, FC_CHANNELS, VGG16_LAYERS, scaled_channels

    item = np.dtype(model.dtype).itemsize
    classes, scale = model.num_classes, config.get("width", 1.0)
    pixels = height * width
    preprocessing = 4 * 3 * pixels * 4                    # float32 copies of the picture
    h, w = height + 2 * CONV1_PADDING - 2, width + 2 * CONV1_PADDING - 2
    current, taps, encoder = 3 * pixels * item, 0, 0
    for name, channels in VGG16_LAYERS:
        if channels is None:                              # 2x2 ceil-mode pool
            h, w = (h + 1) // 2, (w + 1) // 2
            out = last * h * w * item
            alive = current + out + last * h * w * 8      # + its indices
        else:
            last = scaled_channels(channels, scale)
            out = last * h * w * item
            alive = current + out
        encoder = max(encoder, alive + taps)
        current = out
        if name in ("pool3", "pool4"):
            taps += out
    fc = scaled_channels(FC_CHANNELS, scale)
    h, w = max(h - 6, 1), max(w - 6, 1)
    encoder = max(encoder, current + fc * h * w * item + taps, 2 * fc * h * w * item + taps)
    skips, final = ARCHITECTURES[config["model"]]
    for _ in skips:
        h, w = 2 * h + 2, 2 * w + 2
    upsampled = classes * ((h - 1) * final.stride + final.kernel_size) \
        * ((w - 1) * final.stride + final.kernel_size)
    head = (upsampled + classes * pixels * (3 + (2 if flip else 0))) * item + 8 * pixels
    return int(n * 1.25 * max(preprocessing, encoder, head) + _SCRATCH_BYTES)


def _encoder_decoder_bytes(model, config, n, height, width, flip):
    """An upper bound for the nets of ``npfcn.models.segnet`` in eval mode, where a layer
    keeps nothing for backward: the largest moment of one convolution's input and output,
    with every pool's indices (int64, or the tap a skip adds back: fewer bytes) alive from
    the pool to its decoder level; then the scores and the preprocessing copies; x1.5 for
    batch norm's temporaries (tests/test_tiling.py checks it against numpy's traced peak)."""
    import re as _re

    from .models.segnet import layer_specs

    item = np.dtype(model.dtype).itemsize
    pixels = height * width

    def level_of(name):
        # conv{s}_{j}[_D], conv{i}, conv_decode{i} work on level s-1 (1/4 as many pixels a
        # level), score_pool{i} on level i; the classifier and plain's convs on level 0
        digits = _re.findall(r"\d", name)
        if "classifier" in name or config["model"] == "plain" or not digits:
            return 0
        return int(digits[0]) - (0 if name.startswith("score") else 1)

    kept = {}                   # level -> bytes of the pool indices waiting for the decoder
    previous, previous_level, largest = 3 * pixels * item, 0, 0
    for spec in layer_specs(config["model"], model.num_classes, config.get("width", 1.0)):
        if spec[0] != "conv":
            continue
        level, channels = level_of(spec[1]), spec[3]
        if level > previous_level:            # a pool: its indices wait for the unpooling
            kept[level] = previous // item // 4 * 8
        elif level < previous_level:          # an unpooling used (and freed) them
            kept.pop(previous_level, None)
        out = channels * -(-pixels // 4 ** level) * item
        largest = max(largest, previous + out + sum(kept.values()))
        previous, previous_level = out, level
    total = largest + model.num_classes * pixels * (3 + (2 if flip else 0)) * item
    total += 4 * 3 * pixels * 4 + 8 * pixels
    return int(n * 1.5 * total + _SCRATCH_BYTES)


# --- the tiles ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Tile:
    """Input rows [y0, y1) and columns [x0, x1) are fed to the network; the prediction is
    kept for the core rows [cy0, cy1) and columns [cx0, cx1) (image coordinates)."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int


def _spans(size, core, halo):
    """(start, stop, core_start, core_stop) along one axis of ``size`` pixels."""
    return [(max(0, c - halo), min(size, c + core + halo), c, min(size, c + core))
            for c in range(0, size, core)]


def plan_tiles(height, width, geometry, fits, flip=False):
    """Tiles covering a height x width image; ``fits(h, w)`` says whether an h x w input
    stays within the memory budget.  One tile (the whole image) when it fits.

    The core is the largest multiple of ``geometry.align`` whose tile fits; raises
    MemoryBudgetError when not even a core of ``align`` pixels does.
    """
    if fits(height, width):
        return [Tile(0, height, 0, width, 0, height, 0, width)]
    if geometry is None:
        return None
    align, halo = geometry.align, geometry.halo
    extra = align - 1 if flip else 0            # the mirrored pass may widen a tile

    def tile_fits(core):
        return fits(min(height, core + 2 * halo), min(width, core + 2 * halo + extra))

    if not tile_fits(align):
        return []
    lo, hi = 1, max(1, -(-max(height, width) // align))   # cores in units of align
    while lo < hi:                                         # largest fitting core
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if tile_fits(mid * align) else (lo, mid - 1)
    core = lo * align
    return [Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1)
            for y0, y1, cy0, cy1 in _spans(height, core, halo)
            for x0, x1, cx0, cx1 in _spans(width, core, halo)]


def tiles_for(model, height, width, max_memory=DEFAULT_MAX_MEMORY, flip=False, n=1):
    """The tiles ``model`` predicts a height x width image in within ``max_memory`` bytes.

    Raises MemoryBudgetError (one line) when the budget cannot be met.
    """
    def fits(h, w):
        needed = forward_bytes(model, n, h, w, flip)
        return needed is None or needed <= max_memory

    geometry = geometry_of(model)
    tiles = plan_tiles(height, width, geometry, fits, flip)
    if tiles:
        return tiles
    if tiles is None:
        needed = forward_bytes(model, n, height, width, flip)
        raise MemoryBudgetError(
            f"predicting a {height}x{width} image needs about {format_bytes(needed)}, more than "
            f"the memory budget of {format_bytes(max_memory)}, and {type(model).__name__} "
            "cannot be tiled; raise --max-memory")
    side = 2 * geometry.halo + geometry.align
    needed = forward_bytes(model, n, min(height, side), min(width, side), flip)
    raise MemoryBudgetError(
        f"a memory budget of {format_bytes(max_memory)} is too small: the smallest tile "
        f"({min(height, side)}x{min(width, side)} pixels) needs about {format_bytes(needed)}; "
        "raise --max-memory")


# --- scoring ------------------------------------------------------------------------------

def _forward(model, x):
    """Scores of x (1, 3, h, w) in eval mode, as a new array."""
    was_training = model.training
    model.eval()
    try:
        return np.array(model.forward(x), copy=True)
    finally:
        model.train(was_training)


def tile_scores(model, image, tile, preprocessing="unit", score_offset=None, flip=False):
    """Scores (1, K, cy1-cy0, cx1-cx0) of the tile's core, from image (H, W, 3) uint8.

    Arithmetic as ``npfcn.evaluate.predict_labels``: scores, with ``flip`` plus the
    mirrored scores times 0.5, then plus ``score_offset``.
    """
    from .data.transforms import preprocess

    geometry = geometry_of(model)
    align = geometry.align if geometry is not None else 1

    def network_input(x1):
        x = preprocess(image[tile.y0:tile.y1, tile.x0:x1], preprocessing)
        return x.astype(model.dtype, copy=False)[None]

    scores = _forward(model, network_input(tile.x1))
    if flip:
        width = image.shape[1]
        x1 = width - (width - tile.x1) // align * align     # W - x1 on the alignment
        mirrored = _forward(model, np.ascontiguousarray(network_input(x1)[..., ::-1]))
        scores += mirrored[..., ::-1][..., :tile.x1 - tile.x0]
        scores *= scores.dtype.type(0.5)
    if score_offset is not None:
        score_offset = np.asarray(score_offset, dtype=scores.dtype)
        if score_offset.shape != (scores.shape[1],):
            raise ValueError(f"score_offset has shape {score_offset.shape} but the model "
                             f"predicts {scores.shape[1]} classes")
        scores += score_offset[:, None, None]
    core = (slice(None), slice(None), slice(tile.cy0 - tile.y0, tile.cy1 - tile.y0),
            slice(tile.cx0 - tile.x0, tile.cx1 - tile.x0))
    return scores[core]


def predict_tiled(model, image, tiles, preprocessing="unit", score_offset=None, flip=False):
    """Labels (H, W) uint8 of image (H, W, 3) uint8, predicted tile by tile."""
    labels = np.empty(image.shape[:2], dtype=np.uint8)
    for tile in tiles:
        scores = tile_scores(model, image, tile, preprocessing, score_offset, flip)
        labels[tile.cy0:tile.cy1, tile.cx0:tile.cx1] = scores[0].argmax(axis=0)
    return labels


# --- sizes as people write them --------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text):
    """'1.5G', '800M', '2GiB', '1073741824' -> bytes (binary units); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (examples: 1.5G, 800M, 2GiB)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"memory size must be at least one byte, got {text!r}")
    return int(value)


def format_bytes(count):
    """Bytes as a short human-readable size ('1.5 GiB', '640 MiB')."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} B"
