"""Worst gradient-check and PyTorch-parity errors of every layer, for the closing note.

    python benchmarks/verify_report.py [--configs 40] [--seed 0] [--out benchmarks/results]

Sweeps a fixed, seeded set of small configurations of every layer (kernel
sizes, strides, paddings, dilations, output paddings, "same" padding, ceil
mode, odd sizes, batch and channel counts) and reports per layer:

* ``gradcheck``: the worst float64 gradcheck error (npfcn.gradcheck: max
  |analytic - numeric| / gradient scale, over every input and parameter), on
  the C kernel and on the NumPy reference path;
* ``torch64`` / ``torch32``: the worst relative error max|ours - torch| /
  max|torch| over the forward output and every gradient (input, weight, bias)
  against torch.nn.functional on identical inputs, in float64 and float32
  (skipped, reported as null, when PyTorch is not installed).

Prints a table, writes ``verify_report.json`` and a bar chart
``verify_report.png`` (-log10 of each error; taller is better) to ``--out``.
The targets: gradcheck < 1e-6, float64 parity ~1e-10, float32 parity ~1e-4.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from npfcn.kernels import backend
from npfcn.gradcheck import gradcheck
from npfcn.layers import (Add, Conv2d, ConvTranspose2d, Crop, Dropout, MaxPool2d,
                          MaxUnpool2d, ReLU)
from npfcn.losses import CrossEntropyLoss

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # parity columns become null
    torch = None

LAYERS = ["conv2d", "conv_transpose2d", "max_pool2d", "max_unpool2d", "relu", "dropout",
          "crop", "add", "cross_entropy", "conv2d_winograd"]


# --- configurations ------------------------------------------------------------------

def pair(rng, low, high):
    return (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))


def conv_config(rng):
    k, s, p, d = pair(rng, 1, 4), pair(rng, 1, 3), pair(rng, 0, 3), pair(rng, 1, 2)
    size = tuple(max(1, di * (ki - 1) + 1 - 2 * pi) + int(rng.integers(0, 4))
                 for ki, pi, di in zip(k, p, d))
    return dict(n=int(rng.integers(1, 3)), cin=int(rng.integers(1, 4)),
                cout=int(rng.integers(1, 4)), size=size, k=k, s=s, p=p, d=d,
                bias=bool(rng.integers(0, 2)))


def winograd_config(rng):
    """A 3x3 stride-1 convolution with at least 64 output tiles: the C backend's
    Winograd path (npfcn/winograd.py; the small random convolutions above have
    too few tiles for it)."""
    p = pair(rng, 0, 2)
    cin = int(rng.integers(1, 4))
    size = tuple(17 - 2 * pi + int(rng.integers(0, 4)) for pi in p)    # output >= 15x15
    return dict(n=1, cin=cin, cout=int(rng.integers(1, 2 * cin + 1)), size=size,
                k=(3, 3), s=(1, 1), p=p, d=(1, 1), bias=bool(rng.integers(0, 2)))


def conv_transpose_config(rng):
    k, s, d = pair(rng, 1, 4), pair(rng, 1, 3), pair(rng, 1, 2)
    size = pair(rng, 1, 4)
    if rng.random() < 0.3:
        padding, output_padding = "same", (0, 0)
    else:
        output_padding = tuple(int(rng.integers(0, max(si, di))) for si, di in zip(s, d))
        padding = tuple(int(rng.integers(0, ((n - 1) * si + di * (ki - 1) + op) // 2 + 1))
                        for n, si, di, ki, op in zip(size, s, d, k, output_padding))
    return dict(n=int(rng.integers(1, 3)), cin=int(rng.integers(1, 4)),
                cout=int(rng.integers(1, 4)), size=size, k=k, s=s, d=d, padding=padding,
                output_padding=output_padding, bias=bool(rng.integers(0, 2)))


def pool_config(rng, non_overlapping=False):
    k = pair(rng, 1, 3)
    s = tuple(ki + int(rng.integers(0, 2)) for ki in k) if non_overlapping else pair(rng, 1, 3)
    p = tuple(int(rng.integers(0, ki // 2 + 1)) for ki in k)
    size = tuple(max(1, ki - 2 * pi) + int(rng.integers(0, 5)) for ki, pi in zip(k, p))
    return dict(shape=(int(rng.integers(1, 3)), int(rng.integers(1, 3)), *size), k=k, s=s, p=p,
                ceil_mode=bool(rng.integers(0, 2)))


def small_shape(rng):
    return (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 6)),
            int(rng.integers(1, 6)))


def distinct(shape, rng):
    """Values 0.1 apart in random order: no max-pool tie within gradcheck's eps."""
    size = int(np.prod(shape))
    return rng.permutation(size).reshape(shape) * 0.1 - size * 0.05


# --- one case per layer: (module, inputs) for gradcheck, and a parity run ------------

def case(layer, rng, dtype):
    """(module, inputs, cfg) of one random configuration of ``layer`` in ``dtype``."""
    if layer in ("conv2d", "conv2d_winograd"):
        c = conv_config(rng) if layer == "conv2d" else winograd_config(rng)
        m = Conv2d(c["cin"], c["cout"], c["k"], c["s"], c["p"], c["d"], bias=c["bias"],
                   dtype=dtype, rng=rng)
        return m, (rng.standard_normal((c["n"], c["cin"], *c["size"])).astype(dtype),), c
    if layer == "conv_transpose2d":
        c = conv_transpose_config(rng)
        m = ConvTranspose2d(c["cin"], c["cout"], c["k"], c["s"], c["padding"],
                            c["output_padding"], c["d"], bias=c["bias"], dtype=dtype, rng=rng)
        return m, (rng.standard_normal((c["n"], c["cin"], *c["size"])).astype(dtype),), c
    if layer == "max_pool2d":
        c = pool_config(rng)
        return (MaxPool2d(c["k"], c["s"], c["p"], ceil_mode=c["ceil_mode"]),
                (distinct(c["shape"], rng).astype(dtype),), c)
    if layer == "max_unpool2d":
        c = pool_config(rng, non_overlapping=True)   # unique indices
        image = distinct(c["shape"], rng).astype(dtype)
        pooled, idx = MaxPool2d(c["k"], c["s"], c["p"], ceil_mode=c["ceil_mode"],
                                return_indices=True).forward(image)
        x = rng.standard_normal(pooled.shape).astype(dtype)
        return MaxUnpool2d(c["k"], c["s"], c["p"]), (x, idx, image.shape[2:]), c
    if layer == "relu":
        shape = small_shape(rng)
        x = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 1.0, shape)   # away from the kink
        return ReLU(), (x.astype(dtype),), {}
    if layer == "dropout":
        p = float(rng.choice([0.0, 0.2, 0.5, 0.8]))
        return Dropout(p, rng=int(rng.integers(1 << 30))), (
            rng.standard_normal(small_shape(rng)).astype(dtype),), dict(p=p)
    if layer == "crop":
        n, ch, h, w = small_shape(rng)
        oy, ox = pair(rng, 0, 3)
        x = rng.standard_normal((n, ch, h + oy + int(rng.integers(0, 3)),
                                 w + ox + int(rng.integers(0, 3)))).astype(dtype)
        return Crop((oy, ox)), (x, (h, w)), dict(offset=(oy, ox), size=(h, w))
    if layer == "add":
        shape = small_shape(rng)
        return Add(), (rng.standard_normal(shape).astype(dtype),
                       rng.standard_normal(shape).astype(dtype)), {}
    if layer == "cross_entropy":
        n, classes, h, w = int(rng.integers(1, 3)), int(rng.integers(2, 6)), *pair(rng, 1, 4)
        target = rng.integers(0, classes, (n, h, w))
        target[rng.random((n, h, w)) < 0.3] = 255
        target.flat[0] = 0
        weight = rng.uniform(0.2, 2.0, classes) if rng.random() < 0.5 else None
        reduction = str(rng.choice(["mean", "sum"]))
        loss = CrossEntropyLoss(weight=weight, ignore_index=255, reduction=reduction)
        logits = (rng.standard_normal((n, classes, h, w)) * 3).astype(dtype)
        return loss, (logits, target), dict(weight=weight, reduction=reduction)
    raise ValueError(layer)


def rel(ours, theirs):
    theirs = theirs.detach().double().numpy()
    scale = np.abs(theirs).max(initial=0.0)
    diff = np.abs(np.asarray(ours, np.float64) - theirs).max(initial=0.0)
    return float(diff / scale) if scale > 0 else float(diff)


def torch_conv_transpose(x, w, b, c):
    """PyTorch's transposed conv; "same" as the unpadded output, cropped (or output-padded)."""
    if c["padding"] != "same":
        return TF.conv_transpose2d(x, w, b, c["s"], c["padding"], c["output_padding"], 1, c["d"])
    surplus = [di * (ki - 1) + 1 - si for ki, si, di in zip(c["k"], c["s"], c["d"])]
    y = TF.conv_transpose2d(x, w, b, c["s"], 0, [max(-e, 0) for e in surplus], 1, c["d"])
    top = [max(e, 0) // 2 for e in surplus]
    oh, ow = x.shape[2] * c["s"][0], x.shape[3] * c["s"][1]
    return y[:, :, top[0]:top[0] + oh, top[1]:top[1] + ow]


def parity(layer, rng, dtype):
    """Worst relative error of output and every gradient against torch, one configuration."""
    module, inputs, c = case(layer, rng, dtype)
    if layer == "cross_entropy":
        value = module.forward(*inputs)
        grads = [module.backward()]
        tl = torch.tensor(inputs[0], requires_grad=True)
        weight = None if c["weight"] is None else torch.tensor(c["weight"].astype(dtype))
        tv = TF.cross_entropy(tl, torch.from_numpy(inputs[1]), weight=weight, ignore_index=255,
                              reduction=c["reduction"])
        tv.backward()
        return max(rel(value, tv), rel(grads[0], tl.grad))

    y = module.forward(*inputs)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = module.backward(dy)
    dxs = dx if isinstance(dx, tuple) else (dx,)
    ours = [y, *dxs] + [module.grads[k] for k in module.params]

    leaves = [torch.tensor(inputs[0], requires_grad=True)]
    params = [torch.tensor(module.params[k], requires_grad=True) for k in module.params]
    x = leaves[0]
    if layer in ("conv2d", "conv2d_winograd"):
        ty = TF.conv2d(x, params[0], params[1] if c["bias"] else None, c["s"], c["p"], c["d"])
    elif layer == "conv_transpose2d":
        ty = torch_conv_transpose(x, params[0], params[1] if c["bias"] else None, c)
    elif layer == "max_pool2d":
        ty = TF.max_pool2d(x, c["k"], c["s"], c["p"], 1, c["ceil_mode"])
    elif layer == "max_unpool2d":
        ty = TF.max_unpool2d(x, torch.from_numpy(inputs[1]), c["k"], c["s"], c["p"],
                             tuple(inputs[2]))
    elif layer == "relu":
        ty = TF.relu(x)
    elif layer == "dropout":
        # Different random streams: PyTorch's convention applied to our mask.
        keep = torch.from_numpy((y != 0).astype(dtype)) if c["p"] > 0 else torch.ones_like(x)
        ty = x * keep / (1 - c["p"])
    elif layer == "crop":
        (oy, ox), (h, w) = c["offset"], c["size"]
        ty = x[:, :, oy:oy + h, ox:ox + w]
    elif layer == "add":
        leaves.append(torch.tensor(inputs[1], requires_grad=True))
        ty = x + leaves[1]
    ty.backward(torch.from_numpy(dy))
    theirs = [ty] + [t.grad for t in leaves] + [p.grad for p in params]
    return max(rel(a, b) for a, b in zip(ours, theirs))


def gradcheck_error(layer, rng):
    module, inputs, _ = case(layer, rng, np.float64)
    return gradcheck(module, inputs).max_error


# --- the sweep -----------------------------------------------------------------------

def sweep(layer, configs, seed, backends):
    """Worst errors of ``layer`` over ``configs`` seeded configurations."""
    row = {}
    for name in backends:
        with backend.using(name):
            rng = np.random.default_rng([seed, LAYERS.index(layer), 0])
            row[f"gradcheck_{name}"] = max(gradcheck_error(layer, rng) for _ in range(configs))
    for label, dtype in (("torch64", np.float64), ("torch32", np.float32)):
        if torch is None:
            row[label] = None
            continue
        rng = np.random.default_rng([seed, LAYERS.index(layer), 1 if dtype == np.float64 else 2])
        row[label] = max(parity(layer, rng, dtype) for _ in range(configs))
    row["gradcheck"] = max(row[f"gradcheck_{name}"] for name in backends)
    return row


def draw_chart(report, path):
    """Bars of -log10(error) per layer: gradcheck, torch64, torch32 (taller is better)."""
    from PIL import Image, ImageDraw
    columns = [("gradcheck", (40, 110, 200)), ("torch64", (60, 160, 80)), ("torch32", (220, 140, 40))]
    bar, gap, left, top, height = 12, 18, 120, 30, 220
    width = left + len(LAYERS) * (len(columns) * bar + gap) + 20
    img = Image.new("RGB", (width, top + height + 60), "white")
    draw = ImageDraw.Draw(img)
    scale = height / 17.0   # 1e-17 at the top
    for decade in range(0, 18, 2):
        yy = top + height - decade * scale
        draw.line([(left - 5, yy), (width - 10, yy)], fill=(225, 225, 225))
        draw.text((left - 45, yy - 6), f"1e-{decade}", fill="black")
    for threshold, colour in ((6, (40, 110, 200)), (10, (60, 160, 80)), (4, (220, 140, 40))):
        yy = top + height - threshold * scale
        draw.line([(left, yy), (width - 10, yy)], fill=colour, width=1)
    for i, layer in enumerate(LAYERS):
        x0 = left + i * (len(columns) * bar + gap)
        for j, (key, colour) in enumerate(columns):
            err = report["layers"][layer][key]
            if err is None:
                continue
            level = 17.0 if err == 0 else min(17.0, -math.log10(err))
            draw.rectangle([x0 + j * bar, top + height - level * scale,
                            x0 + (j + 1) * bar - 2, top + height], fill=colour)
        draw.text((x0, top + height + 5 + 12 * (i % 2)), layer[:12], fill="black")
    draw.text((10, 8), "-log10(worst error): gradcheck (blue, target line 1e-6), "
                       "torch float64 (green, 1e-10), torch float32 (orange, 1e-4)", fill="black")
    img.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=int, default=40, help="configurations per layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results"))
    args = parser.parse_args(argv)
    if args.configs < 1:
        parser.error("--configs must be positive")
    backends = ["c", "numpy"] if backend.c_available() else ["numpy"]
    report = dict(configs_per_layer=args.configs, seed=args.seed, backends=backends,
                  torch=None if torch is None else torch.__version__,
                  tolerances=dict(gradcheck=1e-6, torch64=1e-10, torch32=1e-4), layers={})
    header = f"{'layer':<18}{'gradcheck f64':>15}{'torch f64':>12}{'torch f32':>12}"
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for i, layer in enumerate(LAYERS):
        if sys.stderr.isatty():   # a transient progress line; logs get the table rows only
            print(f"[{i + 1}/{len(LAYERS)}] {layer} ...", end="\r", file=sys.stderr, flush=True)
        row = report["layers"][layer] = sweep(layer, args.configs, args.seed, backends)
        if sys.stderr.isatty():
            print("\r\033[K", end="", file=sys.stderr, flush=True)
        fmt = lambda v: "skipped" if v is None else f"{v:.2e}"   # noqa: E731
        print(f"{layer:<18}{fmt(row['gradcheck']):>15}{fmt(row['torch64']):>12}"
              f"{fmt(row['torch32']):>12}", flush=True)
    worst = {key: max((r[key] for r in report["layers"].values() if r[key] is not None),
                      default=None) for key in ("gradcheck", "torch64", "torch32")}
    report["worst"] = worst
    report["seconds"] = round(time.perf_counter() - start, 1)
    print("-" * len(header))
    print(f"{'worst':<18}{worst['gradcheck']:>15.2e}" +
          "".join(f"{'skipped' if worst[k] is None else format(worst[k], '.2e'):>12}"
                  for k in ("torch64", "torch32")))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "verify_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    draw_chart(report, os.path.join(args.out, "verify_report.png"))
    print(f"wrote {os.path.join(args.out, 'verify_report.json')} and verify_report.png "
          f"({report['seconds']} s)")
    failed = [k for k, tol in report["tolerances"].items()
              if worst[k] is not None and worst[k] > tol]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
