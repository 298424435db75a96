"""``npfcn explain upsampling``: one small feature map made twice as large three ways -
max unpooling (values back at the pooling switches), fixed bilinear interpolation (a
transposed convolution with FCN's frozen bilinear kernel) and a transposed convolution
with a kernel of its own (what training learns) - side by side.

From ``npfcn/reference/pooling.py`` and ``npfcn/reference/conv.py``; the bilinear
kernel from ``npfcn.init.bilinear_kernel`` (FCN's ``upscore2``: 4x4, stride 2).
"""
import numpy as np

from ...init import bilinear_kernel
from .. import draw, oracle
from .unpool import INPUT

FEATURE = np.array([[1.0, 2.0], [3.0, 4.0]])
# A kernel as training might leave it (any 3x3 would do; this one is lopsided on purpose).
LEARNED = np.array([[0.5, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])


def run(output, say, feature=FEATURE):
    f = np.asarray(feature, dtype=np.float64)[None, None]
    H, W = f.shape[2:]
    say(f"Three ways to make a {H}x{W} feature map {2 * H}x{2 * W}:")
    say("feature map:")
    say(_matrix(f[0, 0]))

    # 1. Max unpooling: the switches come from pooling an earlier, larger map.
    earlier = np.asarray(INPUT, dtype=np.float64)[None, None, :2 * H, :2 * W]
    _, switches, _ = oracle.function("max_pool2d_forward")(earlier, 2, 2)
    unpooled, _ = oracle.function("max_unpool2d_forward")(f, switches, 2, 2)
    say(f"1. max unpooling ({oracle.source('max_unpool2d_forward')}) with the switches of "
        f"a 2x2 max pool of the earlier map\n{_matrix(earlier[0, 0])}\n   switches "
        f"{switches[0, 0].ravel().tolist()}: each value at its switch, zeros elsewhere:")
    say(_matrix(unpooled[0, 0]))

    # 2. Bilinear: FCN's fixed kernel, 4x4 stride 2; padding 1 keeps exactly 2H x 2W.
    forward = oracle.function("conv_transpose2d_forward")
    kernel = bilinear_kernel(1, 4, np.float64)
    bilinear, _ = forward(f, kernel, None, 2, 1)
    say(f"2. fixed bilinear interpolation: transposed conv with the 4x4 bilinear kernel "
        f"(npfcn.init.bilinear_kernel), stride 2, padding 1 ({oracle.source('conv_transpose2d_forward')})")
    say(_matrix(kernel[0, 0], indent=5))
    say(_matrix(bilinear[0, 0]))

    # 3. A transposed convolution with its own kernel.
    learned, _ = forward(f, LEARNED[None, None], None, 2, 1, 1)
    say("3. transposed conv with a kernel of its own (3x3, stride 2, padding 1, "
        "output_padding 1), here")
    say(_matrix(LEARNED, indent=5))
    say(_matrix(learned[0, 0]))
    say("Unpooling keeps values exactly but only where the maxima were; bilinear spreads "
        "each value smoothly and cannot learn; a learned kernel can do either or better.")

    panels = [draw.grid(f[0, 0], title="feature map\n"),
              draw.grid(unpooled[0, 0], draw.colours_where(unpooled[0, 0] == 0, draw.ZERO),
                        title="max unpooling\n(switches)"),
              draw.grid(bilinear[0, 0], title="bilinear\n(fixed 4x4, stride 2)"),
              draw.grid(learned[0, 0], title="transposed conv\n(own 3x3, stride 2)")]
    top = max(a.max() for a in (unpooled, bilinear, learned))      # one grey scale for all
    maps = (f[0, 0], unpooled[0, 0], bilinear[0, 0], learned[0, 0])
    columns = [draw.column([panel, _shade(a, top)]) for panel, a in zip(panels, maps)]
    path = draw.save(draw.column([draw.row(columns)],
                                 title="Upsampling one feature map three ways "
                                       "(below: as grey levels, black = the largest value)"),
                     output, "upsampling.png")
    say(f"picture: {path}")
    return {"unpooled": unpooled[0, 0], "bilinear": bilinear[0, 0], "learned": learned[0, 0],
            "pictures": [path]}


def _shade(a, top):
    """The map as grey levels (white = 0, black = ``top``), 34 px per pixel."""
    from PIL import Image

    levels = np.clip(255 - 255 * a / top, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(levels, 34, 0), 34, 1)).convert("RGB")


def _matrix(a, indent=2):
    width = max(len(draw.number(v)) for v in np.ravel(a))
    return "\n".join(" " * indent + " ".join(f"{draw.number(v):>{width}}" for v in r) for r in a)
