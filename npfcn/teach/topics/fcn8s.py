"""``npfcn explain fcn8s [--size H]``: every feature map of FCN-8s for an H x H input,
the crops and their offsets, parameters and FLOPs per layer, the receptive field.

Shapes come from the reference's size formulas (``conv_output_size``,
``conv_transpose2d_geometry``), the layer table from ``npfcn.models`` (VGG16's
convolutions, the skips and their crop offsets), parameter counts from
``npfcn.models.parameter_shapes``.  The crop offsets are also derived here the way
Caffe's ``coord_map`` does it - following where each map's first pixel sits in the
input - and compared with the model's; the final shape is checked by running a
narrow FCN8s on an H x H input.
"""
import math

import numpy as np

from ...models import FCN8s, parameter_shapes
from ...models import fcn as fcn_model
from ...models import vgg
from .. import draw, oracle

NUM_CLASSES = 21
MODEL_CHECK_LIMIT = 1024     # larger inputs: shapes only (the narrow model would take long)
SKIP_STRIDE = 2              # every FCN skip doubles the score map


class Walk:
    """Follows one feature map through the layers: its shape, where its first pixel's
    centre sits in input coordinates (``start``), the input pixels between neighbours
    (``jump``) and the receptive field of one of its pixels (``field``)."""

    def __init__(self, channels, size, start=0.0, jump=1.0, field=1):
        self.channels, self.size, self.start, self.jump, self.field = (channels, size, start,
                                                                       jump, field)

    def conv(self, channels, kernel, stride, padding, ceil_mode=False):
        size = oracle.function("conv_output_size")(self.size, (kernel, kernel), stride, padding,
                                                   1, ceil_mode)
        return Walk(channels, tuple(size), self.start + ((kernel - 1) / 2 - padding) * self.jump,
                    self.jump * stride, self.field + (kernel - 1) * self.jump)

    def up(self, channels, kernel, stride):
        (size, _) = oracle.function("conv_transpose2d_geometry")(self.size, kernel, stride, 0, 0, 1)
        jump = self.jump / stride
        return Walk(channels, tuple(size), self.start - (kernel - 1) / 2 * jump, jump,
                    self.field + (math.ceil(kernel / stride) - 1) * self.jump)

    def crop(self, offset, size):
        return Walk(self.channels, tuple(size), self.start + offset * self.jump, self.jump,
                    self.field)

    def offset_against(self, other):
        """Crop offset that aligns this (larger) map with ``other`` (same jump)."""
        return (other.start - self.start) / self.jump


def _flops_conv(cin, cout, kernel, out_size):
    return 2 * cin * cout * kernel * kernel * out_size[0] * out_size[1]


def run(output, say, size=500):
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {size!r}")
    shapes = parameter_shapes("fcn8s", NUM_CLASSES)
    skips, final = fcn_model.ARCHITECTURES["fcn8s"]
    rows = []           # (name, shape, params, flops, field, note)

    def add(name, walk, params=0, flops=0, note=""):
        rows.append((name, (walk.channels,) + walk.size, params, flops, int(round(walk.field)),
                     note))

    def params_of(name):
        return sum(int(np.prod(shapes[k])) for k in (f"{name}.weight", f"{name}.bias")
                   if k in shapes)

    x = Walk(3, (size, size))
    add("input", x)
    specs = {s[0]: s for s in vgg.encoder_conv_specs(1.0)}
    taps = {}
    for name, channels in vgg.VGG16_LAYERS + (("fc6", 1), ("fc7", 1)):
        if channels is None:
            x = x.conv(x.channels, 2, 2, 0, ceil_mode=True)
            add(name, x, note="2x2 max pool, stride 2, ceil mode")
            taps[name] = x
            continue
        _, cin, cout, k, pad = specs[name]
        y = x.conv(cout, k, 1, pad)
        add(name, y, params_of(name), _flops_conv(cin, cout, k, y.size),
            f"{k}x{k} conv, padding {pad}" + (" (FCN's trick: any input size survives)"
                                              if pad == vgg.CONV1_PADDING else ""))
        x = y
    score = x.conv(NUM_CLASSES, 1, 1, 0)
    add("score_fr", score, params_of("score_fr"), _flops_conv(x.channels, NUM_CLASSES, 1, score.size),
        "1x1 conv to the classes")
    offsets = []
    for skip in skips:
        k = shapes[f"{skip.upsample}.weight"][-1]
        up = score.up(NUM_CLASSES, k, SKIP_STRIDE)
        add(skip.upsample, up, params_of(skip.upsample),
            _flops_conv(NUM_CLASSES, NUM_CLASSES, k, score.size),
            f"{k}x{k} transposed conv, stride {SKIP_STRIDE}")
        tap = taps[skip.tap]
        scored = tap.conv(NUM_CLASSES, 1, 1, 0)
        add(skip.score, scored, params_of(skip.score),
            _flops_conv(tap.channels, NUM_CLASSES, 1, scored.size), f"1x1 conv of {skip.tap}")
        derived = scored.offset_against(up)
        offsets.append((skip.score, skip.offset, derived, scored.size, up.size))
        cropped = scored.crop(skip.offset, up.size)
        add(f"crop({skip.score})", cropped,
            note=f"offset {skip.offset} (derived {derived:g}) to {up.size[0]}x{up.size[1]}")
        score = Walk(NUM_CLASSES, up.size, up.start, up.jump, max(up.field, cropped.field))
        add(f"fuse_{skip.tap}", score, note=f"{skip.upsample} + crop({skip.score})")
    up = score.up(NUM_CLASSES, final.kernel_size, final.stride)
    add(final.name, up, params_of(final.name),
        _flops_conv(NUM_CLASSES, NUM_CLASSES, final.kernel_size, score.size),
        f"{final.kernel_size}x{final.kernel_size} transposed conv, stride {final.stride}")
    derived = up.offset_against(Walk(3, (size, size)))
    offsets.append(("score", final.offset, derived, up.size, (size, size)))
    out = up.crop(final.offset, (size, size))
    add("score", out, note=f"crop at offset {final.offset} (derived {derived:g}) to the input's "
                           f"{size}x{size}")

    say(f"FCN-8s on a {size}x{size} input, {NUM_CLASSES} classes (PASCAL VOC); shapes from "
        f"{oracle.source('conv_output_size')} and conv_transpose2d_geometry")
    width = max(len(r[0]) for r in rows)
    say(f"{'layer':<{width}}  {'shape (C, H, W)':<18}{'params':>12}{'GFLOPs':>9}{'RF':>6}  note")
    for name, shape, params, flops, field, note in rows:
        say(f"{name:<{width}}  {str(shape):<18}{params:>12,}{flops / 1e9:>9.2f}{field:>6}  {note}")
    total_params = sum(r[2] for r in rows)
    total_flops = sum(r[3] for r in rows)
    frozen = sum(int(np.prod(shapes[n])) for n in fcn_model.upsampling_names("fcn8s"))
    say(f"total: {total_params:,} parameters ({frozen:,} in the frozen bilinear upsampling), "
        f"{total_flops / 1e9:.1f} GFLOPs (2 per multiply-add) per image")
    say("crops (each keeps the other operand's size; offsets derived from where each map's "
        "first pixel lies in the input):")
    for name, used, derived, from_size, to_size in offsets:
        say(f"  {name}: {from_size[0]}x{from_size[1]} -> {to_size[0]}x{to_size[1]} at offset "
            f"{used}; derived {derived:g}")
    say(f"receptive field of one output pixel: {rows[-1][4]} x {rows[-1][4]} input pixels "
        f"(fc7 alone sees {rows[[r[0] for r in rows].index('fc7')][4]})")
    model_shape = None
    if size <= MODEL_CHECK_LIMIT:
        model_shape = _run_narrow_model(size)
        say(f"checked: a narrow FCN8s (npfcn.models) maps a {size}x{size} input to scores of "
            f"shape {model_shape}")
    path = _picture(rows, size, output)
    say(f"picture: {path}")
    return {"rows": rows, "offsets": offsets, "total_params": total_params,
            "total_flops": total_flops, "receptive_field": rows[-1][4],
            "model_shape": model_shape, "pictures": [path]}


def _run_narrow_model(size):
    """The shape FCN8s itself gives (at 1/64 of the channels: the shapes do not depend on them)."""
    model = FCN8s(num_classes=NUM_CLASSES, width=1 / 64, dtype=np.float32, seed=0).eval()
    return tuple(model.forward(np.zeros((1, 3, size, size), np.float32)).shape[1:])


def _picture(rows, size, output):
    """One line per feature map: name, shape, parameters, receptive field, and a bar as long
    as the map's side (blue: the upsampling path)."""
    from PIL import Image, ImageDraw

    fnt, line_h, bar_x, bar_w = draw.load_font(12), 20, 470, 260
    columns = ((0, "layer"), (140, "shape (C, H, W)"), (270, "params"), (400, "RF"))
    biggest = max(r[1][1] for r in rows)
    image = Image.new("RGB", (bar_x + bar_w + 20, line_h * (len(rows) + 1) + 6), draw.WHITE)
    canvas = ImageDraw.Draw(image)
    for x, text in columns:
        canvas.text((x + 4, 2), text, fill=draw.BLACK, font=fnt)
    for k, (name, shape, params, _flops, field, _note) in enumerate(rows):
        y = line_h * (k + 1) + 2
        for (x, _), text in zip(columns, (name, str(shape), f"{params:,}", str(field))):
            canvas.text((x + 4, y), text, fill=draw.BLACK, font=fnt)
        length = max(2, int(bar_w * shape[1] / biggest))
        colour = draw.CURRENT if name.startswith("up") or name == "score" else draw.HIGHLIGHT
        canvas.rectangle([bar_x, y + 2, bar_x + length, y + line_h - 4], fill=colour)
    return draw.save(draw.column([image], title=f"FCN-8s feature maps for a {size}x{size} input "
                                                "(bar: spatial side; RF: receptive field)"),
                     output, f"fcn8s-{size}.png")
