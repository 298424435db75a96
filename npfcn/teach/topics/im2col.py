"""``npfcn explain im2col``: every window of the input copied into a column, and the
convolution as one matrix product of the flattened kernel with those columns.

The columns come from ``npfcn/reference/im2col.py: im2col``; the product is checked
against ``conv2d_forward`` of the reference.
"""
import numpy as np

from .. import draw, oracle

WINDOW_COLOURS = [(166, 206, 227), (178, 223, 138), (251, 154, 153), (253, 191, 111),
                  (202, 178, 214), (255, 255, 153), (31, 120, 180), (51, 160, 44),
                  (227, 26, 28)]


def run(output, say, input_size=4, kernel_size=3, stride=1):
    H, K, S = input_size, kernel_size, stride
    for value, name, low, top in ((H, "input size", 1, 8), (K, "kernel size", 1, H),
                                  (S, "stride", 1, 4)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
            raise ValueError(f"im2col: {name} must be {low}..{top} (small numbers to read), "
                             f"got {value!r}")
    x = np.arange(1, H * H + 1, dtype=np.float64).reshape(1, 1, H, H)
    w = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])[None, None] if K == 3 \
        else np.ones((1, 1, K, K))
    cols = oracle.function("im2col")(x, (K, K), S, 0)[0]               # (K*K, OH*OW)
    OH = (H - K) // S + 1
    say(f"im2col: a {H}x{H} input, {K}x{K} windows, stride {S} -> {OH}x{OH} output "
        f"({oracle.source('im2col')})")
    say("input x:")
    say(_matrix(x[0, 0]))
    say(f"Column p holds window p (read row by row): a {cols.shape[0]} x {cols.shape[1]} "
        "matrix (C*KH*KW rows, OH*OW columns):")
    say(_matrix(cols))
    product = w.reshape(1, -1) @ cols
    say(f"kernel w flattened to one row (1 x {w.size}): " +
        " ".join(draw.number(v) for v in w.ravel()))
    say(f"w_row @ columns = {' '.join(draw.number(v) for v in product.ravel())}"
        f"  -> reshaped to {OH}x{OH}:")
    say(_matrix(product.reshape(OH, OH)))
    conv, _ = oracle.function("conv2d_forward")(x, w, None, S, 0)
    difference = float(np.abs(conv[0, 0] - product.reshape(OH, OH)).max())
    say(f"conv2d_forward(x, w, stride={S}) ({oracle.source('conv2d_forward')}): max "
        f"difference {difference:g}")
    say("With C channels and O filters the same holds: columns (C*KH*KW, OH*OW), weights "
        "(O, C*KH*KW), one matrix product per image.")

    windows, column_colours = [], []
    for p in range(OH * OH):
        i, j = divmod(p, OH)
        mask = np.zeros((H, H), bool)
        mask[i * S:i * S + K, j * S:j * S + K] = True
        colour = WINDOW_COLOURS[p % len(WINDOW_COLOURS)]
        windows.append(draw.grid(x[0, 0], draw.colours_where(mask, colour), cell=28,
                                 title=f"window {p}"))
        column_colours.append(colour)
    col_table = [[column_colours[c] for c in range(cols.shape[1])] for _ in range(cols.shape[0])]
    shown = windows[:16]                 # a picture of at most two rows of windows
    rows = [draw.row(shown[k:k + 8]) for k in range(0, len(shown), 8)]
    rows += [draw.row([draw.grid(cols, col_table, cell=28, title="columns (im2col)"),
                      draw.grid(w.reshape(1, -1), cell=28, title="kernel as a row"),
                      draw.grid(product, cell=28, title="row @ columns"),
                      draw.grid(product.reshape(OH, OH), cell=28, title="= the convolution")])]
    path = draw.save(draw.column(rows,
                                 title="im2col: a convolution as one matrix product"),
                     output, "im2col.png")
    say(f"picture: {path}")
    return {"input": x[0, 0], "columns": cols, "product": product.reshape(OH, OH),
            "conv_difference": difference, "pictures": [path]}


def _matrix(a, indent=2):
    width = max(len(draw.number(v)) for v in np.ravel(a))
    return "\n".join(" " * indent + " ".join(f"{draw.number(v):>{width}}" for v in r)
                     for r in np.atleast_2d(a))
