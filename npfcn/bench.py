"""``npfcn bench``: a quick run of the benchmarks in ``benchmarks/`` of the source tree.

    npfcn bench                 # a few layer shapes and the default-size FCN-8s step
    npfcn bench --full          # every kernel, every layer, both FCN-8s configurations
    npfcn bench --repeats 7 --threads 2

Each library runs in a process of its own (two thread pools in one process fight
over the cores), the processes take turns (npfcn, PyTorch, npfcn, ...), median of
the runs, thread counts fixed; every table's header names the CPU, the OpenBLAS
kernel, the threads and the load, and each convolution's GFLOP/s is given against
the sgemm peak measured in the same run.  Tables are printed and written
(Markdown and JSON) to ``benchmarks/results/``.  Without PyTorch only npfcn's own
FCN-8s step is timed.  For figures a user's machine would give, run it as
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE npfcn bench``.  The benchmark code lives in ``benchmarks/`` (one file per level:
kernels, layers, the whole network); this module only finds and runs it.
"""
import argparse
import importlib
import os
import sys

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
    """Import ``benchmarks/<name>.py`` of the source tree."""
    if not os.path.isfile(os.path.join(BENCH_DIR, f"{name}.py")):
        raise FileNotFoundError(
            f"{os.path.join(BENCH_DIR, name + '.py')} not found: `npfcn bench` runs the "
            "benchmarks of a source checkout (pip install -e .)")
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    return importlib.import_module(name)


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _npfcn_only(bt, bench_fcn, repeats, threads):
    """No PyTorch: time npfcn's default-size FCN-8s step alone."""
    threads = bt.pin_threads(threads)
    print(f"PyTorch is not installed: timing npfcn alone. {bt.describe(bt.machine(), threads)}")
    cfg = bench_fcn.CONFIGS["default"]
    stats = bt.compare({"npfcn": bench_fcn.npfcn_step(cfg)}, repeats=repeats)["npfcn"]
    print(f"FCN-8s default step (width {cfg['width']}, batch {cfg['batch']} of "
          f"{cfg['size']}x{cfg['size']}): {stats.median:.3f} s/step, "
          f"{cfg['batch'] / stats.median:.1f} images/s, spread {stats.spread:.2f}")
    return 0


def main(argv=None):
    """Run the quick (or ``--full``) benchmarks; returns the exit code."""
    parser = argparse.ArgumentParser(prog="npfcn bench", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="all kernels, all layer shapes, both FCN-8s configurations")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        print("npfcn: error: --repeats and --threads must be positive", file=sys.stderr)
        return 2
    try:
        bt = _load("bench_timing")
        bench_fcn = _load("bench_fcn")
    except FileNotFoundError as exc:
        print(f"npfcn: error: {exc}", file=sys.stderr)
        return 1
    common = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    if not _torch_available():
        return _npfcn_only(bt, bench_fcn, args.repeats, args.threads)
    quick = [] if args.full else ["--quick"]
    status = 0
    if args.full:
        status |= _load("bench_kernels").main(common)
    status |= _load("bench_layers").main(common + quick)
    status |= bench_fcn.main(common + quick)
    return status


if __name__ == "__main__":
    sys.exit(main())
