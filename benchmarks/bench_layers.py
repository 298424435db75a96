"""Every FCN-8s layer shape: npfcn against PyTorch and against the matmul / memcpy limit.

    python benchmarks/bench_layers.py [--quick | --narrow] [--repeats 5] [--threads 2] [--reference]

For each layer, forward ("fwd") and forward+backward ("fwd+bwd") are timed
alternately with PyTorch in one process (see bench_timing.compare).  Columns:

* ``ours ms`` / ``torch ms``   median time per call;
* ``torch/ours``               the ratio the targets are stated in (>1: npfcn is faster);
* ``GFLOP/s``                  npfcn's arithmetic rate (convolutions only);
* ``limit/ours``               the time of the bare limit over npfcn's time: for
                               convolutions the matrix products an im2col design
                               must do (the same GEMM shapes, NumPy's BLAS); for
                               memory-bound layers a copy of the same bytes.  1.0
                               means npfcn adds nothing around that limit.  Above
                               1.0 npfcn needs fewer multiplications than that
                               design (Winograd for 3x3 convolutions, sub-pixel
                               phases for transposed ones: see docs/kernels.md);
* ``spread``                   (max - min) / median over the runs of npfcn;
* ``numpy-ref ms``             (``--reference``) the pure-NumPy reference path.

Shapes are those FCN-8s meets on a 224x224 image (N=1): the VGG16 convolutions
at their ImageNet sizes, fc6 as a 7x7 convolution on pool5 (14x14 after the
padding of 100), the 1x1 score layers, the three transposed convolutions,
max pooling with indices, unpooling and the loss.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_timing as bt  # noqa: E402  (sets thread environment before numpy)

import numpy as np  # noqa: E402

from npfcn import backend  # noqa: E402
from npfcn.layers import Conv2d, ConvTranspose2d, MaxPool2d, MaxUnpool2d  # noqa: E402
from npfcn.losses import CrossEntropyLoss  # noqa: E402

# (name, in_channels, out_channels, kernel, padding, H)
VGG_CONVS = [
    ("conv1_1 3->64 @224", 3, 64, 3, 1, 224),
    ("conv1_2 64->64 @224", 64, 64, 3, 1, 224),
    ("conv2_1 64->128 @112", 64, 128, 3, 1, 112),
    ("conv2_2 128->128 @112", 128, 128, 3, 1, 112),
    ("conv3_1 128->256 @56", 128, 256, 3, 1, 56),
    ("conv3_2 256->256 @56", 256, 256, 3, 1, 56),
    ("conv4_1 256->512 @28", 256, 512, 3, 1, 28),
    ("conv4_2 512->512 @28", 512, 512, 3, 1, 28),
    ("conv5_x 512->512 @14", 512, 512, 3, 1, 14),
]
FCN_CONVS = [
    ("fc6 512->4096 k7 @14", 512, 4096, 7, 0, 14),
    ("fc7 4096->4096 1x1 @8", 4096, 4096, 1, 0, 8),
    ("score_fr 4096->21 1x1 @8", 4096, 21, 1, 0, 8),
    ("score_pool4 512->21 1x1 @27", 512, 21, 1, 0, 27),
    ("score_pool3 256->21 1x1 @53", 256, 21, 1, 0, 53),
]
# The convolutions of the default training run (`npfcn train`: FCN-8s at width 1/16 on
# 128x128 images; --narrow, batch 2 by default): 4 to 32 channels, where npfcn takes
# its direct path (npfcn/direct.py) for everything but fc6.
NARROW_CONVS = [
    ("w1/16 conv1_1 3->4 @128 pad100", 3, 4, 3, 100, 128),
    ("w1/16 conv1_2 4->4 @326", 4, 4, 3, 1, 326),
    ("w1/16 conv2_1 4->8 @163", 4, 8, 3, 1, 163),
    ("w1/16 conv2_2 8->8 @163", 8, 8, 3, 1, 163),
    ("w1/16 conv3_1 8->16 @82", 8, 16, 3, 1, 82),
    ("w1/16 conv3_x 16->16 @82", 16, 16, 3, 1, 82),
    ("w1/16 conv4_1 16->32 @41", 16, 32, 3, 1, 41),
    ("w1/16 conv4_x 32->32 @41", 32, 32, 3, 1, 41),
    ("w1/16 conv5_x 32->32 @21", 32, 32, 3, 1, 21),
    ("w1/16 fc6 32->256 k7 @11", 32, 256, 7, 0, 11),
]
# (name, channels, kernel, stride, H) - FCN-8s upsampling on a 224x224 image
TRANSPOSED = [
    ("upscore2 21 k4 s2 @8", 21, 4, 2, 8),
    ("upscore_pool4 21 k4 s2 @18", 21, 4, 2, 18),
    ("upscore8 21 k16 s8 @38", 21, 16, 8, 38),
]
QUICK = {"conv1_2 64->64 @224", "conv3_2 256->256 @56", "conv5_x 512->512 @14",
         "upscore8 21 k16 s8 @38", "maxpool 2x2 64 @224"}


def _rand(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def conv_case(torch, name, cin, cout, k, pad, size, batch, rng):
    x = _rand(rng, (batch, cin, size, size))
    layer = Conv2d(cin, cout, k, padding=pad, rng=rng)
    y = layer.forward(x)
    dy = _rand(rng, y.shape)
    tconv = torch.nn.Conv2d(cin, cout, k, padding=pad)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(layer.params["weight"]))
        tconv.bias.copy_(torch.from_numpy(layer.params["bias"]))
    tx = torch.from_numpy(x).requires_grad_(True)   # dx too, as npfcn computes it
    tdy = torch.from_numpy(dy)

    # The GEMMs of an im2col convolution, per image, on preallocated arrays.
    P = y.shape[2] * y.shape[3]
    K = cin * k * k
    w2 = layer.params["weight"].reshape(cout, K)
    cols = _rand(rng, (K, P))
    d2 = dy[0].reshape(cout, P)
    out_f, out_dw, out_dc = (np.empty((cout, P), np.float32), np.empty((cout, K), np.float32),
                             np.empty((K, P), np.float32))

    def gemm_fwd():
        for _ in range(batch):
            np.matmul(w2, cols, out=out_f)

    def gemm_fb():
        for _ in range(batch):
            np.matmul(w2, cols, out=out_f)
            np.matmul(d2, cols.T, out=out_dw)
            np.matmul(w2.T, d2, out=out_dc)

    def ours_fb():
        layer.forward(x)
        layer.backward(dy)

    def torch_fb():
        tx.grad = None
        tconv(tx).backward(tdy)

    flops = 2.0 * batch * cout * K * P
    return dict(name=name, flops_fwd=flops, flops_fb=3 * flops,
                fwd=dict(ours=lambda: layer.forward(x), torch=lambda: tconv(tx), limit=gemm_fwd),
                fb=dict(ours=ours_fb, torch=torch_fb, limit=gemm_fb))


def transposed_case(torch, name, ch, k, s, size, batch, rng):
    x = _rand(rng, (batch, ch, size, size))
    layer = ConvTranspose2d(ch, ch, k, stride=s, bias=False, rng=rng)
    y = layer.forward(x)
    dy = _rand(rng, y.shape)
    tconv = torch.nn.ConvTranspose2d(ch, ch, k, stride=s, bias=False)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(layer.params["weight"]))
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)

    HW, OKK = size * size, ch * k * k
    w2 = layer.params["weight"].reshape(ch, OKK)
    x2 = x[0].reshape(ch, HW)
    dcols = _rand(rng, (OKK, HW))
    out_c, out_dx, out_dw = (np.empty((OKK, HW), np.float32), np.empty((ch, HW), np.float32),
                             np.empty((ch, OKK), np.float32))

    def gemm_fwd():
        for _ in range(batch):
            np.matmul(w2.T, x2, out=out_c)

    def gemm_fb():
        for _ in range(batch):
            np.matmul(w2.T, x2, out=out_c)
            np.matmul(w2, dcols, out=out_dx)
            np.matmul(x2, dcols.T, out=out_dw)

    def ours_fb():
        layer.forward(x)
        layer.backward(dy)

    def torch_fb():
        tx.grad = None
        tconv(tx).backward(tdy)

    flops = 2.0 * batch * ch * OKK * HW
    return dict(name=name, flops_fwd=flops, flops_fb=3 * flops,
                fwd=dict(ours=lambda: layer.forward(x), torch=lambda: tconv(tx), limit=gemm_fwd),
                fb=dict(ours=ours_fb, torch=torch_fb, limit=gemm_fb))


def pool_cases(torch, batch, rng):
    F = torch.nn.functional
    x = _rand(rng, (batch, 64, 224, 224))
    pool = MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
    y, idx = pool.forward(x)
    dy = _rand(rng, y.shape)
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)
    copy_x, copy_y = np.empty_like(x), np.empty_like(y)

    def ours_fb():
        pool.forward(x)
        pool.backward(dy)

    def torch_fb():
        tx.grad = None
        out, _ = F.max_pool2d(tx, 2, 2, ceil_mode=True, return_indices=True)
        out.backward(tdy)

    # Bytes a pooling pass must move at least: read x, write y (+ indices).
    def copy_fwd():
        np.copyto(copy_x, x)

    def copy_fb():
        np.copyto(copy_x, x)
        np.copyto(copy_x, x)

    pool_case = dict(name="maxpool 2x2 64 @224", flops_fwd=None, flops_fb=None,
                     fwd=dict(ours=lambda: pool.forward(x),
                              torch=lambda: F.max_pool2d(tx, 2, 2, ceil_mode=True,
                                                         return_indices=True),
                              limit=copy_fwd),
                     fb=dict(ours=ours_fb, torch=torch_fb, limit=copy_fb))

    unpool = MaxUnpool2d(2, 2)
    tyv = torch.from_numpy(np.ascontiguousarray(y)).requires_grad_(True)
    tidx = torch.from_numpy(idx)
    dz = _rand(rng, x.shape)
    tdz = torch.from_numpy(dz)

    def ours_unpool_fb():
        unpool.forward(y, idx, output_size=x.shape[2:])
        unpool.backward(dz)

    def torch_unpool_fb():
        tyv.grad = None
        F.max_unpool2d(tyv, tidx, 2, 2, output_size=x.shape[2:]).backward(tdz)

    unpool_case = dict(name="unpool 2x2 64 @112", flops_fwd=None, flops_fb=None,
                       fwd=dict(ours=lambda: unpool.forward(y, idx, output_size=x.shape[2:]),
                                torch=lambda: F.max_unpool2d(tyv, tidx, 2, 2,
                                                             output_size=x.shape[2:]),
                                limit=copy_fwd),
                       fb=dict(ours=ours_unpool_fb, torch=torch_unpool_fb, limit=copy_fb))
    return [pool_case, unpool_case]


def loss_case(torch, batch, rng):
    logits = _rand(rng, (batch, 21, 224, 224))
    target = rng.integers(0, 21, (batch, 224, 224)).astype(np.int64)
    target[:, :8] = 255
    loss = CrossEntropyLoss(ignore_index=255)
    tl = torch.from_numpy(logits).requires_grad_(True)
    tt = torch.from_numpy(target)
    F = torch.nn.functional
    buf = np.empty_like(logits)

    def ours_fb():
        loss.forward(logits, target)
        loss.backward()

    def torch_fb():
        tl.grad = None
        F.cross_entropy(tl, tt, ignore_index=255).backward()

    return dict(name="cross-entropy 21 @224", flops_fwd=None, flops_fb=None,
                fwd=dict(ours=lambda: loss.forward(logits, target),
                         torch=lambda: F.cross_entropy(tl, tt, ignore_index=255),
                         limit=lambda: np.copyto(buf, logits)),
                fb=dict(ours=ours_fb, torch=torch_fb,
                        limit=lambda: (np.copyto(buf, logits), np.copyto(buf, logits))))


def build_cases(torch, batch=1, quick=False, seed=0, only=None, narrow=False):
    """The benchmark cases; ``quick`` keeps QUICK, ``only`` those whose name contains it,
    ``narrow`` gives the default training run's convolutions instead."""
    rng = np.random.default_rng(seed)

    def keep(name):
        return (not quick or name in QUICK) and (only is None or only in name)

    if narrow:
        return [conv_case(torch, *c, batch, rng) for c in NARROW_CONVS if keep(c[0])]
    cases = [conv_case(torch, *c, batch, rng) for c in VGG_CONVS + FCN_CONVS if keep(c[0])]
    cases += [transposed_case(torch, *c, batch, rng) for c in TRANSPOSED if keep(c[0])]
    cases += [c for c in pool_cases(torch, batch, rng) if keep(c["name"])]
    if keep("cross-entropy 21 @224"):
        cases.append(loss_case(torch, batch, rng))
    return cases


def _with_backend(name, fn):
    def run():
        with backend.using(name):
            fn()
    return run


def run(cases, repeats=5, reference=False):
    """Time every case; returns one row per (layer, pass)."""
    rows = []
    for i, case in enumerate(cases):
        for kind, label in (("fwd", "fwd"), ("fb", "fwd+bwd")):
            timed = dict(case[kind])
            if reference:
                timed["numpy-ref"] = _with_backend("numpy", timed["ours"])
            stats = bt.compare(timed, repeats=repeats, warmup=1, min_time=0.02)
            ours, torch_t, limit = stats["ours"], stats["torch"], stats["limit"]
            flops = case["flops_fwd" if kind == "fwd" else "flops_fb"]
            rows.append({
                "layer": case["name"], "pass": label,
                "ours_ms": ours.median * 1e3, "torch_ms": torch_t.median * 1e3,
                "ratio": torch_t.median / ours.median,
                "gflops": flops / ours.median / 1e9 if flops else None,
                "limit_ratio": limit.median / ours.median,
                "spread": ours.spread, "torch_spread": torch_t.spread,
                "numpy_ref_ms": stats["numpy-ref"].median * 1e3 if reference else None,
                "stats": {k: v.as_dict() for k, v in stats.items()},
            })
        bt.progress(f"[{i + 1}/{len(cases)}] {case['name']}: fwd+bwd torch/ours "
                    f"{rows[-1]['ratio']:.2f}")
    return rows


COLUMNS = [("layer", "layer"), ("pass", "pass"), ("ours_ms", "ours ms"),
           ("torch_ms", "torch ms"), ("ratio", "torch/ours"), ("gflops", "GFLOP/s"),
           ("limit_ratio", "limit/ours"), ("spread", "spread")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few representative shapes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=bt.DEFAULT_THREADS)
    parser.add_argument("--batch", type=int, default=None, help="default 1 (2 with --narrow)")
    parser.add_argument("--narrow", action="store_true",
                        help="the convolutions of the default training run (width 1/16)")
    parser.add_argument("--reference", action="store_true",
                        help="also time the pure-NumPy reference path")
    parser.add_argument("--only", default=None, help="only layers whose name contains this")
    parser.add_argument("--name", default=None, help="results file name (default: layers)")
    args = parser.parse_args(argv)
    import torch
    threads = bt.pin_threads(args.threads)
    info = bt.machine()
    if args.batch is None:
        args.batch = 2 if args.narrow else 1
    rows = run(build_cases(torch, args.batch, args.quick, only=args.only, narrow=args.narrow),
               args.repeats, args.reference)
    columns = COLUMNS + ([("numpy_ref_ms", "numpy-ref ms")] if args.reference else [])
    header = (f"Layers, float32, N={args.batch}, median of {args.repeats} alternated runs "
              f"(backend {backend.active()}). {bt.describe(info, threads)}")
    name = args.name or ("layers_narrow" if args.narrow else
                         "layers_quick" if args.quick else "layers")
    bt.report(name, header, rows, columns, {"machine": info, "threads": threads,
                                            "batch": args.batch, "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
