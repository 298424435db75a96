"""``npfcn explain transposed-conv``: each input pixel stamps its weighted kernel onto
the output; the stamps add up where they overlap; padding crops the sum.

The stamps, the sum and the crops are computed by npfcn's reference
(``npfcn/reference/conv.py: conv_transpose2d_forward``, one single-pixel input per
stamp), the sizes by ``conv_transpose2d_geometry``, and every output is checked
against the layer ``npfcn.layers.ConvTranspose2d``.
"""
import numpy as np

from ...layers import ConvTranspose2d
from .. import draw, oracle

# The course's two examples: (input side, kernel side, stride, [(padding, output_padding)]).
PRESETS = {
    "course-2x2": (2, 3, 2, [(0, 0), (1, 0), (1, 1), ("same", 0)]),
    "course-3x3": (3, 5, 2, [(0, 0), (2, 0), (2, 1), ("same", 0)]),
}


def _values(side, ones=False):
    """1, 2, 3, ... row by row: every pixel and tap can be told apart in the sums."""
    if ones:
        return np.ones((side, side))
    return np.arange(1, side * side + 1, dtype=np.float64).reshape(side, side)


def _configs(side, kernel, stride):
    """No padding, the padding that gives side*stride (with its output_padding), 'same'."""
    configs = [(0, 0)]
    pad = max(kernel - stride + 1, 0) // 2
    out_pad = side * stride - ((side - 1) * stride - 2 * pad + kernel)
    if pad:
        configs.append((pad, 0))
    if pad and 0 < out_pad < stride:
        configs.append((pad, out_pad))
    return configs + [("same", 0)]


def _formula(side, kernel, stride, padding, out_pad, size, top):
    if padding == "same":
        total = max(kernel - stride, 0)
        return (f"TensorFlow 'same': H*S = {side}*{stride} = {size}; total padding "
                f"max(K - S, 0) = {total}: {top} at the top/left, {total - top} at the "
                "bottom/right")
    return (f"padding {padding}, output_padding {out_pad}: (H-1)*S - 2*P + K + OP = "
            f"({side}-1)*{stride} - 2*{padding} + {kernel} + {out_pad} = {size}")


def run(output, say, preset="course-2x2", input_size=None, kernel_size=None, stride=None):
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    side, kernel, step, configs = PRESETS[preset]
    custom = (input_size, kernel_size, stride)
    if any(v is not None for v in custom):
        side, kernel, step = (d if v is None else v for v, d in zip(custom, (side, kernel, step)))
        for value, name, top in ((side, "input size", 6), (kernel, "kernel size", 7),
                                 (step, "stride", 4)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"transposed-conv: {name} must be 1..{top} (small numbers "
                                 f"to read), got {value!r}")
        configs = _configs(side, kernel, step)
    forward = oracle.function("conv_transpose2d_forward")
    geometry = oracle.function("conv_transpose2d_geometry")
    x = _values(side)[None, None]
    w = _values(kernel, ones=kernel > 3)[None, None]
    say(f"Transposed convolution: {side}x{side} input, {kernel}x{kernel} kernel, stride {step}"
        f"  ({oracle.source('conv_transpose2d_forward')})")
    say("input x:")
    say(_matrix(x[0, 0]))
    say("kernel w:")
    say(_matrix(w[0, 0]))
    full, _ = forward(x, w, None, step, 0, 0)
    say(f"Each input pixel x[i, j] multiplies the whole kernel and adds it onto the output "
        f"at rows i*{step} .. i*{step}+{kernel - 1}, columns j*{step} .. j*{step}+{kernel - 1}:")
    stamps, running, step_panels = [], np.zeros_like(full[0, 0]), []
    for i in range(side):
        for j in range(side):
            single = np.zeros_like(x)
            single[0, 0, i, j] = x[0, 0, i, j]
            stamp = forward(single, w, None, step, 0, 0)[0][0, 0]
            stamps.append(stamp)
            running = running + stamp
            r, c = i * step, j * step
            say(f"  x[{i}, {j}] = {draw.number(x[0, 0, i, j])}: adds "
                f"{draw.number(x[0, 0, i, j])} * w at rows {r}-{r + kernel - 1}, "
                f"columns {c}-{c + kernel - 1}")
            mask = np.zeros(running.shape, bool)
            mask[r:r + kernel, c:c + kernel] = True
            colours = draw.colours_where(mask, draw.CURRENT,
                                         draw.colours_where(running == 0, draw.ZERO))
            step_panels.append(draw.grid(running, colours, cell=30 if side < 3 else 26,
                                         title=f"+ x[{i},{j}] * w"))
    stamp_sum = np.sum(stamps, axis=0)
    say(f"Sum of the {len(stamps)} stamps: {full.shape[2]}x{full.shape[3]} "
        "(overlaps add up)")
    say(_matrix(stamp_sum))
    say(f"  equals conv_transpose2d_forward(x, w, stride={step}): max difference "
        f"{np.abs(stamp_sum - full[0, 0]).max():g}")
    say("Output size per axis, and the output, each checked against npfcn.layers.ConvTranspose2d:")
    results, out_panels = {}, []
    for padding, out_pad in configs:
        (size, _), (top, _) = geometry((side, side), (kernel, kernel), (step, step), padding,
                                       (out_pad, out_pad), (1, 1))
        y, _ = forward(x, w, None, step, padding, out_pad)
        layer = ConvTranspose2d(1, 1, kernel, step, padding, out_pad, bias=False,
                                dtype=np.float64)
        layer.params["weight"][...] = w
        difference = float(np.abs(layer.forward(x) - y).max())
        say(f"  {_formula(side, kernel, step, padding, out_pad, size, top)} -> {size}x{size}; "
            f"the stamp sum from row/column {top} on; layer max difference {difference:g}")
        say(_matrix(y[0, 0], indent=4))
        key = "same" if padding == "same" else (padding, out_pad)
        results[key] = {"size": size, "top": top, "output": y[0, 0],
                        "layer_difference": difference}
        name = "'same'" if padding == "same" else f"padding {padding}, out. pad. {out_pad}"
        out_panels.append(draw.grid(y[0, 0], title=f"{name}\n-> {size}x{size}"))
    rows = [draw.row([draw.grid(x[0, 0], title="input x"), draw.grid(w[0, 0], title="kernel w"),
                      draw.text_panel([f"stride {step}",
                                       "blue: the stamp x[i,j] * w of this step",
                                       "grey: nothing has landed yet"])])]
    per_row = 4 if side <= 2 else 3
    for k in range(0, len(step_panels), per_row):
        rows.append(draw.row(step_panels[k:k + per_row]))
    rows.append(draw.row(out_panels))
    path = draw.save(draw.column(rows, title=f"Transposed convolution, {side}x{side} input, "
                                             f"{kernel}x{kernel} kernel, stride {step}"),
                     output, f"transposed-conv-{side}x{side}-k{kernel}-s{step}.png")
    say(f"picture: {path}")
    return {"input": x[0, 0], "kernel": w[0, 0], "stamps": stamps, "sum": stamp_sum,
            "outputs": results, "pictures": [path]}


def _matrix(a, indent=2):
    width = max(len(draw.number(v)) for v in a.ravel())
    return "\n".join(" " * indent + " ".join(f"{draw.number(v):>{width}}" for v in r) for r in a)
