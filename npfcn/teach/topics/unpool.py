"""``npfcn explain unpool``: max pooling remembers where each maximum was (the
"switches"); max unpooling puts each value back there, zeros elsewhere.

From ``npfcn/reference/pooling.py``: max_pool2d_forward (values and flat indices per
plane) and max_unpool2d_forward.
"""
import numpy as np

from .. import draw, oracle

# A 4x4 input with distinct values: every window has one maximum.
INPUT = np.array([[1, 6, 2, 0], [5, 3, 7, 4], [8, 2, 1, 3], [0, 4, 9, 5]], dtype=np.float64)


def run(output, say, x=INPUT, kernel_size=2):
    k = kernel_size
    image = np.asarray(x, dtype=np.float64)[None, None]
    pooled, indices, _ = oracle.function("max_pool2d_forward")(image, k, k)
    unpooled, _ = oracle.function("max_unpool2d_forward")(pooled, indices, k, k)
    H, W = image.shape[2:]
    say(f"Max pooling {k}x{k}, stride {k}, then max unpooling "
        f"({oracle.source('max_pool2d_forward')}, max_unpool2d_forward)")
    say("input:")
    say(_matrix(image[0, 0]))
    say("pooled (the maximum of each window):")
    say(_matrix(pooled[0, 0]))
    say(f"switches (flat index of each maximum in the {H}x{W} input, row * {W} + column):")
    say(_matrix(indices[0, 0]))
    for (i, j), flat in np.ndenumerate(indices[0, 0]):
        r, c = divmod(int(flat), W)
        say(f"  window ({i}, {j}): maximum {draw.number(pooled[0, 0, i, j])} at index {flat} "
            f"= row {r}, column {c}")
    say("unpooled: each value back at its switch, zeros elsewhere:")
    say(_matrix(unpooled[0, 0]))
    kept = unpooled[0, 0] != 0
    say(f"{int(kept.sum())} of {kept.size} pixels are non-zero; the rest of the detail is lost "
        "(SegNet's decoder convolutions fill it in).")
    at_max = np.zeros((H, W), bool)
    at_max.ravel()[indices[0, 0].ravel()] = True
    picture = draw.row([
        draw.grid(image[0, 0], draw.colours_where(at_max, draw.HIGHLIGHT), title="input\n(maxima)"),
        draw.grid(pooled[0, 0], title=f"max pool {k}x{k}\n"),
        draw.grid(indices[0, 0], title="switches\n(flat indices)"),
        draw.grid(unpooled[0, 0], draw.colours_where(at_max, draw.HIGHLIGHT,
                                                     draw.colours_where(~at_max, draw.ZERO)),
                  title="max unpool\n"),
    ])
    path = draw.save(draw.column([picture], title="Max pooling with switches, and max unpooling"),
                     output, "unpool.png")
    say(f"picture: {path}")
    return {"pooled": pooled[0, 0], "indices": indices[0, 0], "unpooled": unpooled[0, 0],
            "pictures": [path]}


def _matrix(a, indent=2):
    width = max(len(draw.number(v)) for v in np.ravel(a))
    return "\n".join(" " * indent + " ".join(f"{draw.number(v):>{width}}" for v in r) for r in a)
