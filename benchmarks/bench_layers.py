"""Layer by layer: npfcn against PyTorch, each in a process of its own, and against the sgemm peak.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_layers.py [--quick | --narrow | --all] [--only TEXT]
                                          [--repeats 5] [--threads 2] [--reference]
    python benchmarks/bench_layers.py --shared      # both libraries in ONE process (see below)
    python benchmarks/bench_layers.py --threads 1 --cpu-time   # figures that hold on a busy machine

Every library runs in a worker process of its own (bench_timing.Worker); the parent
asks them in turn to time one case (npfcn, torch, npfcn, torch, ...), median of the
runs, the same input arrays and weights on both sides (drawn from one seed).  Columns:

* ``ours ms`` / ``torch ms``   median time per call (forward, or forward + backward
                               with dx, dw and db, as a training step needs them);
* ``torch/ours``               the ratio the targets are stated in (>1: npfcn is faster);
* ``GFLOP/s`` / ``torch GFLOP/s``  the rate of direct-convolution arithmetic
                               (2 N C_out C_in k^2 OH OW per pass; x3 for forward +
                               backward), so paths that do fewer multiplications
                               (Winograd) can exceed the sgemm rate;
* ``% peak``                   npfcn's GFLOP/s over the machine's float32 sgemm rate,
                               measured in the npfcn worker at the start of the run;
* ``spread``                   (max - min) / median over npfcn's runs.

Shapes: the VGG16 convolutions FCN-8s meets on a 224x224 image (N=1), fc6 (7x7 on
pool5), the convolutions of the default training run (width 1/16, batch 2),
4 x 64 -> 64 at 32x32, SegNet-Basic's 7x7 convolutions on a 360x480 CamVid image,
the transposed convolutions, max pooling and the loss.

``--shared`` times npfcn's 64-channel convolution at 32x32 in one process alone,
then in a process that has also run PyTorch (two OpenMP runtimes side by side),
which is how a notebook comparing the two sees it; see docs/kernels.md for what
to do about it.

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the command (they force an old
OpenBLAS kernel choice on some machines) and say so beside the figures.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_timing as bt  # noqa: E402  (sets thread environment before numpy)

import numpy as np  # noqa: E402

SCRIPT = os.path.abspath(__file__)

# name -> (kind, N, in_channels, out_channels, kernel, stride, padding, H, W)
CASES = {}


def _add(group, name, kind, n, cin, cout, k, s, pad, h, w=None):
    CASES[name] = dict(group=group, kind=kind, n=n, cin=cin, cout=cout, k=k, s=s, pad=pad,
                       h=h, w=h if w is None else w)


for _name, _cin, _cout, _h in [("conv1_1 3->64 @224", 3, 64, 224), ("conv1_2 64->64 @224", 64, 64, 224),
                               ("conv2_1 64->128 @112", 64, 128, 112),
                               ("conv2_2 128->128 @112", 128, 128, 112),
                               ("conv3_1 128->256 @56", 128, 256, 56),
                               ("conv3_2 256->256 @56", 256, 256, 56),
                               ("conv4_1 256->512 @28", 256, 512, 28),
                               ("conv4_2 512->512 @28", 512, 512, 28),
                               ("conv5_x 512->512 @14", 512, 512, 14)]:
    _add("vgg", _name, "conv", 1, _cin, _cout, 3, 1, 1, _h)
_add("vgg", "fc6 512->4096 k7 @14", "conv", 1, 512, 4096, 7, 1, 0, 14)
_add("fcn", "fc7 4096->4096 1x1 @8", "conv", 1, 4096, 4096, 1, 1, 0, 8)
_add("fcn", "score_pool3 256->21 1x1 @53", "conv", 1, 256, 21, 1, 1, 0, 53)
# The default training run (npfcn train: FCN-8s at width 1/16 on 128x128 images, batch 2).
for _name, _cin, _cout, _k, _pad, _h in [("w1/16 conv1_1 3->4 @128 pad100", 3, 4, 3, 100, 128),
                                         ("w1/16 conv1_2 4->4 @326", 4, 4, 3, 1, 326),
                                         ("w1/16 conv2_1 4->8 @163", 4, 8, 3, 1, 163),
                                         ("w1/16 conv2_2 8->8 @163", 8, 8, 3, 1, 163),
                                         ("w1/16 conv3_1 8->16 @82", 8, 16, 3, 1, 82),
                                         ("w1/16 conv3_x 16->16 @82", 16, 16, 3, 1, 82),
                                         ("w1/16 conv4_1 16->32 @41", 16, 32, 3, 1, 41),
                                         ("w1/16 conv4_x 32->32 @41", 32, 32, 3, 1, 41),
                                         ("w1/16 conv5_x 32->32 @21", 32, 32, 3, 1, 21),
                                         ("w1/16 fc6 32->256 k7 @11", 32, 256, 7, 0, 11)]:
    _add("narrow", _name, "conv", 2, _cin, _cout, _k, 1, _pad, _h)
_add("vgg", "N4 64->64 @32", "conv", 4, 64, 64, 3, 1, 1, 32)
# SegNet-Basic on a 360x480 CamVid image: 7x7 convolutions of 64 channels at four scales.
_add("segnet", "segnet-basic 3->64 k7 @360x480", "conv", 1, 3, 64, 7, 1, 3, 360, 480)
for _h, _w in [(180, 240), (90, 120), (45, 60)]:
    _add("segnet", f"segnet-basic 64->64 k7 @{_h}x{_w}", "conv", 1, 64, 64, 7, 1, 3, _h, _w)
_add("segnet", "segnet-basic 64->64 k7 @360x480", "conv", 1, 64, 64, 7, 1, 3, 360, 480)
for _name, _c, _k, _s, _h in [("upscore2 21 k4 s2 @8", 21, 4, 2, 8),
                              ("upscore_pool4 21 k4 s2 @18", 21, 4, 2, 18),
                              ("upscore8 21 k16 s8 @38", 21, 16, 8, 38)]:
    _add("other", _name, "tconv", 1, _c, _c, _k, _s, 0, _h)
_add("other", "maxpool 2x2 64 @224", "pool", 1, 64, 64, 2, 2, 0, 224)
_add("other", "cross-entropy 21 @224", "loss", 1, 21, 21, 1, 1, 0, 224)

QUICK = ["conv1_2 64->64 @224", "conv3_2 256->256 @56", "conv5_x 512->512 @14",
         "w1/16 conv3_x 16->16 @82", "N4 64->64 @32"]
SHARED_CASE = "N4 64->64 @32"


def conv_flops(spec):
    """Multiply-adds x 2 of one direct forward pass (None for layers without them)."""
    n, cin, cout, k, s, p, h, w = (spec[key] for key in ("n", "cin", "cout", "k", "s", "pad", "h", "w"))
    if spec["kind"] == "conv":
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        return 2.0 * n * cout * cin * k * k * oh * ow
    if spec["kind"] == "tconv":
        return 2.0 * n * cin * cout * k * k * h * w
    return None


# --- the cases, built inside a worker ---------------------------------------------------

def _arrays(spec, seed=0):
    """The input, weight, bias and output gradient of a case: the same on every side."""
    rng = np.random.default_rng(seed)
    n, cin, cout, k, s, p, h, w = (spec[key] for key in ("n", "cin", "cout", "k", "s", "pad", "h", "w"))
    x = rng.standard_normal((n, cin, h, w), dtype=np.float32)
    if spec["kind"] == "conv":
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        weight = rng.standard_normal((cout, cin, k, k), dtype=np.float32) / np.sqrt(cin * k * k)
    elif spec["kind"] == "tconv":
        oh, ow = (h - 1) * s + k, (w - 1) * s + k
        weight = rng.standard_normal((cin, cout, k, k), dtype=np.float32) / np.sqrt(cin)
    elif spec["kind"] == "pool":
        oh, ow, weight = -(-h // s), -(-w // s), None
    else:
        oh, ow, weight = h, w, None
    bias = rng.standard_normal(cout, dtype=np.float32) if spec["kind"] == "conv" else None
    dy = rng.standard_normal((n, cout, oh, ow), dtype=np.float32)
    return x, weight, bias, dy


def npfcn_case(spec, backward):
    from npfcn.layers import Conv2d, ConvTranspose2d, MaxPool2d
    from npfcn.losses import CrossEntropyLoss

    x, weight, bias, dy = _arrays(spec)
    kind = spec["kind"]
    if kind == "loss":
        target = np.random.default_rng(1).integers(0, spec["cin"], (spec["n"], spec["h"], spec["w"]))
        target[:, :8] = 255
        loss = CrossEntropyLoss(ignore_index=255)
        if not backward:
            return lambda: loss.forward(x, target)
        return lambda: (loss.forward(x, target), loss.backward())
    if kind == "conv":
        layer = Conv2d(spec["cin"], spec["cout"], spec["k"], stride=spec["s"], padding=spec["pad"])
        layer.params["weight"][...], layer.params["bias"][...] = weight, bias
    elif kind == "tconv":
        layer = ConvTranspose2d(spec["cin"], spec["cout"], spec["k"], stride=spec["s"], bias=False)
        layer.params["weight"][...] = weight
    else:
        layer = MaxPool2d(spec["k"], spec["s"], ceil_mode=True)
    if not backward:
        return lambda: layer.forward(x)

    def step():
        layer.forward(x)
        layer.backward(dy)
    return step


def torch_case(spec, backward):
    import torch

    x, weight, bias, dy = _arrays(spec)
    F = torch.nn.functional
    kind = spec["kind"]
    tx = torch.from_numpy(x).requires_grad_(True)      # dx too, as npfcn computes it
    tdy = torch.from_numpy(dy)
    if kind == "loss":
        target = np.random.default_rng(1).integers(0, spec["cin"], (spec["n"], spec["h"], spec["w"]))
        target[:, :8] = 255
        tt = torch.from_numpy(target)

        def forward():
            return F.cross_entropy(tx, tt, ignore_index=255)
        tdy = torch.tensor(1.0)
    elif kind == "conv":
        module = torch.nn.Conv2d(spec["cin"], spec["cout"], spec["k"], stride=spec["s"],
                                 padding=spec["pad"])
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(weight))
            module.bias.copy_(torch.from_numpy(bias))
        forward = lambda: module(tx)  # noqa: E731
    elif kind == "tconv":
        module = torch.nn.ConvTranspose2d(spec["cin"], spec["cout"], spec["k"], stride=spec["s"],
                                          bias=False)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(weight))
        forward = lambda: module(tx)  # noqa: E731
    else:
        forward = lambda: F.max_pool2d(tx, spec["k"], spec["s"], ceil_mode=True,  # noqa: E731
                                       return_indices=True)[0]
    if not backward:
        return forward          # with autograd on, as npfcn's forward keeps its cache

    def step():
        tx.grad = None
        forward().backward(tdy)
    return step


def make_case(library):
    """case id "name|fwd" or "name|fb" -> a callable, for this worker's library."""
    def build(case_id):
        name, kind = case_id.rsplit("|", 1)
        spec = CASES[name]
        if library == "torch":
            return torch_case(spec, kind == "fb")
        if library == "npfcn-ref":
            from npfcn.kernels import backend

            fn = npfcn_case(spec, kind == "fb")

            def reference():
                with backend.using("numpy"):
                    fn()
            return reference
        return npfcn_case(spec, kind == "fb")
    return build


def worker_main(library, threads, torch_too=False, cpu_time=False):
    """A worker: npfcn, npfcn-ref or torch; ``torch_too`` makes an npfcn worker that has
    also imported PyTorch and run one of its convolutions (the shared-process case)."""
    if library == "torch" or torch_too:
        import torch  # noqa: F401  (before pin_threads, so its pool is sized too)
    if torch_too:
        warm = torch_case(CASES[SHARED_CASE], True)
        extra = {"torch": lambda request: {"s": _time_once(warm)}}
    else:
        extra = {}
    clock = time.process_time if cpu_time else time.perf_counter
    extra["peak"] = lambda request: bt.sgemm_peak(clock=clock)
    return bt.serve(make_case("npfcn" if library == "npfcn+torch" else library), threads, extra,
                    clock)


def _time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- the parent -------------------------------------------------------------------------------

def start_workers(libraries, threads, cpu_time=False):
    workers = {}
    try:
        for library in libraries:
            bt.progress(f"starting the {library} worker ...")
            workers[library] = bt.Worker(SCRIPT, library, ["--threads", str(threads)]
                                         + (["--cpu-time"] if cpu_time else []))
    except Exception:
        for worker in workers.values():
            worker.close()
        raise
    return workers


def run(names, workers, repeats, peak):
    """Time every case in every worker; returns one row per (layer, pass)."""
    rows = []
    for i, name in enumerate(names):
        spec = CASES[name]
        flops = conv_flops(spec)
        for kind, label in (("fwd", "fwd"), ("fb", "fwd+bwd")):
            stats = bt.compare_processes(workers, f"{name}|{kind}", repeats=repeats)
            ours, theirs = stats["npfcn"], stats["torch"]
            work = None if flops is None else flops * (3 if kind == "fb" else 1)
            rows.append({
                "layer": name, "N": spec["n"], "pass": label,
                "ours_ms": ours.median * 1e3, "torch_ms": theirs.median * 1e3,
                "ratio": theirs.median / ours.median,
                "gflops": work / ours.median / 1e9 if work else None,
                "torch_gflops": work / theirs.median / 1e9 if work else None,
                "peak_percent": 100 * work / ours.median / 1e9 / peak if work else None,
                "spread": ours.spread, "torch_spread": theirs.spread,
                "numpy_ref_ms": stats["npfcn-ref"].median * 1e3 if "npfcn-ref" in stats else None,
                "stats": {k: v.as_dict() for k, v in stats.items()},
            })
        bt.progress(f"[{i + 1}/{len(names)}] {name}: fwd+bwd torch/ours {rows[-1]['ratio']:.2f}")
    return rows


COLUMNS = [("layer", "layer"), ("N", "N"), ("pass", "pass"), ("ours_ms", "ours ms"),
           ("torch_ms", "torch ms"), ("ratio", "torch/ours"), ("gflops", "GFLOP/s"),
           ("torch_gflops", "torch GFLOP/s"), ("peak_percent", "% of sgemm peak"), ("spread", "spread")]


def select(args):
    if args.quick:
        names = QUICK
    elif args.narrow:
        names = [n for n, c in CASES.items() if c["group"] == "narrow"]
    elif args.all:
        names = list(CASES)
    else:       # the table: VGG16, fc6, the default run's two, N4, SegNet-Basic, the rest
        names = [n for n, c in CASES.items() if c["group"] in ("vgg", "segnet", "other")]
        names[10:10] = ["w1/16 conv3_x 16->16 @82", "w1/16 conv4_x 32->32 @41"]
    return [n for n in names if args.only is None or args.only in n]


def shared_process(threads, repeats):
    """npfcn's SHARED_CASE alone, then in a process that also runs PyTorch's convolution
    between npfcn's calls (the notebook that compares the two)."""
    rows = []
    case = f"{SHARED_CASE}|fb"
    for library in ("npfcn", "npfcn+torch"):
        worker = bt.Worker(SCRIPT, library, ["--threads", str(threads)])
        try:
            worker.ask(op="warmup", case=case, min_time=0.0)
            for pause, label in ((0.02, "after a 20 ms pause"), (0.0, "right after")):
                times = []
                for _ in range(repeats):
                    if library == "npfcn+torch":
                        worker.ask(op="torch")     # PyTorch's conv, then npfcn's at once
                    if pause:
                        import time
                        time.sleep(pause)
                    times.append(worker.ask(op="time", case=case)["s"])
                stats = bt.Stats(times)
                rows.append({"process": library, "when": label if library != "npfcn" else "alone",
                             "ours_ms": stats.median * 1e3, "spread": stats.spread})
                if library == "npfcn":
                    break
        finally:
            worker.close()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a few representative shapes")
    group.add_argument("--narrow", action="store_true",
                       help="every convolution of the default training run (width 1/16)")
    group.add_argument("--all", action="store_true", help="every shape this file knows")
    group.add_argument("--shared", action="store_true",
                       help="npfcn alone against npfcn in a process that also runs PyTorch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=bt.DEFAULT_THREADS)
    parser.add_argument("--reference", action="store_true",
                        help="also time the pure-NumPy reference path (its own process)")
    parser.add_argument("--only", default=None, help="only layers whose name contains this")
    parser.add_argument("--name", default=None, help="results file name (default: layers)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time each library's CPU time instead of the wall clock: with "
                             "--threads 1 the figures hold on a busy machine")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.threads, torch_too=args.worker == "npfcn+torch",
                           cpu_time=args.cpu_time)
    if args.shared:
        rows = shared_process(args.threads, args.repeats)
        info = bt.machine()
        header = (f"npfcn's {SHARED_CASE} forward+backward alone and in a process that also "
                  f"runs PyTorch, median of {args.repeats}. {bt.describe(info, {'all': args.threads})}")
        bt.report(args.name or "layers_shared", header, rows,
                  [("process", "process"), ("when", "timed"), ("ours_ms", "npfcn ms"),
                   ("spread", "spread")], {"machine": info})
        return 0
    libraries = ["npfcn", "torch"] + (["npfcn-ref"] if args.reference else [])
    workers = start_workers(libraries, args.threads, args.cpu_time)
    try:
        peak = workers["npfcn"].ask(op="peak")
        bt.progress(f"sgemm peak: {peak['median_gflops']:.0f} GFLOP/s (median), "
                    f"{peak['best_gflops']:.0f} best")
        rows = run(select(args), workers, args.repeats, peak["median_gflops"])
        peak_after = workers["npfcn"].ask(op="peak")
        hello = workers["npfcn"].hello
        threads = {**hello["threads"], "torch": workers["torch"].hello["threads"].get("torch")}
    finally:
        for worker in workers.values():
            worker.close()
    info = hello["machine"]
    columns = COLUMNS + ([("numpy_ref_ms", "numpy-ref ms")] if args.reference else [])
    clock = "CPU time (process_time)" if args.cpu_time else "wall time"
    header = (f"Layers, float32, each library in its own process, {clock}, median of {args.repeats} "
              f"alternated runs; sgemm peak {peak['median_gflops']:.0f} GFLOP/s at the start, "
              f"{peak_after['median_gflops']:.0f} at the end ({peak['size']}^3, same threads). "
              f"{bt.describe(info, threads)}")
    name = args.name or ("layers_narrow" if args.narrow else "layers_quick" if args.quick else "layers")
    if args.cpu_time and not args.name:
        name += f"_cpu_{args.threads}thread"
    bt.report(name, header, rows, columns, {"machine": info, "threads": threads,
                                            "sgemm_peak": peak, "sgemm_peak_after": peak_after,
                                            "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())
