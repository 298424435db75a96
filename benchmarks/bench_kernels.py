"""im2col and col2im: the C kernel against the NumPy reference and against memcpy.

    python benchmarks/bench_kernels.py [--quick] [--repeats 5] [--threads 2]

im2col writes KH*KW copies of the image; the least any implementation can do
is write those bytes, so the reference point is a plain copy (``np.copyto``) of
an array the size of the columns.  ``copy/C`` = 1.0 means the C kernel runs at
memory-copy speed.  col2im reads the same bytes and adds them into the image.
Timings alternate C, NumPy, copy in one process; median of the runs.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_timing as bt  # noqa: E402

import numpy as np  # noqa: E402

from npfcn.functional import col2im, conv_output_size, im2col  # noqa: E402
from npfcn.kernels import backend  # noqa: E402

# (name, C, H, kernel, stride, padding): the VGG16 3x3 layers, fc6's 7x7 and
# the FCN-8s upsampling (col2im is its forward pass).
CASES = [
    ("3x3 64 @224", 64, 224, 3, 1, 1),
    ("3x3 128 @112", 128, 112, 3, 1, 1),
    ("3x3 256 @56", 256, 56, 3, 1, 1),
    ("3x3 512 @28", 512, 28, 3, 1, 1),
    ("3x3 512 @14", 512, 14, 3, 1, 1),
    ("7x7 512 @14 (fc6)", 512, 14, 7, 1, 0),
    ("16x16 s8 21 @312 (upscore8)", 21, 312, 16, 8, 0),
]
QUICK = {"3x3 64 @224", "3x3 512 @14"}


def _on(name, fn):
    def run():
        with backend.using(name):
            fn()
    return run


def run(cases, repeats):
    rng = np.random.default_rng(0)
    rows = []
    for i, (name, C, H, k, s, p) in enumerate(cases):
        x = rng.standard_normal((1, C, H, H), dtype=np.float32)
        out = conv_output_size((H, H), k, s, p)
        cols = im2col(x, k, s, p)
        target = np.empty_like(cols)
        timed = {
            "im2col": dict(c=_on("c", lambda: im2col(x, k, s, p)),
                           numpy=_on("numpy", lambda: im2col(x, k, s, p)),
                           copy=lambda: np.copyto(target, cols)),
            "col2im": dict(c=_on("c", lambda: col2im(cols, x.shape, k, s, p, 1, out)),
                           numpy=_on("numpy", lambda: col2im(cols, x.shape, k, s, p, 1, out)),
                           copy=lambda: np.copyto(target, cols)),
        }
        for op, fns in timed.items():
            stats = bt.compare(fns, repeats=repeats, warmup=1, min_time=0.02)
            c, ref, copy = stats["c"], stats["numpy"], stats["copy"]
            rows.append({"case": name, "op": op, "mib": cols.nbytes / 2**20,
                         "c_ms": c.median * 1e3, "numpy_ms": ref.median * 1e3,
                         "copy_ms": copy.median * 1e3,
                         "gbs": cols.nbytes / c.median / 1e9,
                         "numpy_over_c": ref.median / c.median,
                         "copy_over_c": copy.median / c.median, "spread": c.spread,
                         "stats": {k2: v.as_dict() for k2, v in stats.items()}})
        bt.progress(f"[{i + 1}/{len(cases)}] {name}")
    return rows


COLUMNS = [("case", "case"), ("op", "op"), ("mib", "cols MiB"), ("c_ms", "C ms"),
           ("numpy_ms", "NumPy ms"), ("copy_ms", "memcpy ms"), ("gbs", "C GB/s"),
           ("numpy_over_c", "NumPy/C"), ("copy_over_c", "memcpy/C"), ("spread", "spread")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=bt.DEFAULT_THREADS)
    args = parser.parse_args(argv)
    if not backend.c_available():
        print("the C kernel is not built: nothing to compare", file=sys.stderr)
        return 1
    threads = bt.pin_threads(args.threads)
    info = bt.machine()
    cases = [c for c in CASES if not args.quick or c[0] in QUICK]
    rows = run(cases, args.repeats)
    header = (f"im2col/col2im kernels, float32, N=1, median of {args.repeats} alternated runs. "
              f"{bt.describe(info, threads)}")
    bt.report("kernels_quick" if args.quick else "kernels", header, rows, COLUMNS,
              {"machine": info, "threads": threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
