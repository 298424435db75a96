"""Data-parallel scaling: measured on this machine at 1 and 2 MPI ranks, modelled beyond.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_scale.py [--repeats 3]
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_scale.py --default-run \
        --baseline /path/to/another/npfcn [--epochs 1] [--repeats 3]

Measured (each configuration in its own processes, alternating 1 and 2 ranks, medians):
images/s of training steps of FCN-8s (the default run's batch: 2 images of 128x128,
5 classes; SGD + LARS + clipping, as ``npfcn train``) at the default width 0.0625 and at
width 1 (the paper's network, 134 M parameters), and the share of a step spent in the
gradient ``Allreduce`` (as the step sees it, waiting for the slower rank included), plus
the ``Allreduce`` of the same buffer alone.

Modelled (``ring_allreduce_seconds``): a ring allreduce of the gradient buffer over P
machines of this one, on 10, 25 and 100 Gbit/s networks, added to the measured compute
of a step: the step time and images/s at 2-64 machines for a global batch shared
between them.  Writes benchmarks/results/scale.json and scale.md.

``--default-run``: the ``npfcn train`` default run shortened to ``--epochs``, alternating
this npfcn's default (one rank per core) with ``--procs 1`` and another checkout's
default (``--baseline``: before MPI, its replicas); writes results/default_run.json/.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WIDTHS = (0.0625, 1.0)
NETWORKS_GBIT = (10, 25, 100)
MACHINES = (2, 4, 8, 16, 32, 64)
LATENCY_SECONDS = 30e-6      # one message between machines over TCP (Ethernet), order of magnitude
GLOBAL_BATCH = 64            # images per step shared by all machines in the model
# Machines as fast as this one (its measured compute per image) and 8 times faster (a
# 16-core node, say): the faster the machine, the sooner the network is what it waits for.
SPEEDUPS = (1, 8)


# -- one configuration (run as a separate process, under mpiexec for 2 ranks) -------------

def worker(width, steps, out):
    sys.path.insert(0, str(ROOT))
    from npfcn.train import TrainConfig
    from npfcn.train.distributed import DataParallel, join_world
    from npfcn.train.optimization import build_optimizer, clip_gradients
    from npfcn.train.setup import build_model

    world = join_world()
    config = TrainConfig(width=width)
    model = build_model(config, 5)
    optimizer = build_optimizer(config, model)
    parallel = DataParallel(model, world, seed=0, lovasz=config.lovasz)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((config.batch_size, 3, 128, 128)).astype(np.float32)
    y = rng.integers(0, 5, (config.batch_size, 128, 128))
    weight = np.ones(5)

    def step(index):
        parallel.forward_backward(x, y, weight, index)
        clip_gradients(model, config.clip_grad_norm)
        optimizer.step()

    step(0)                                  # warm-up: workspaces, first-touch pages
    if world.comm is not None:
        world.comm.Barrier()
    parallel.allreduce_seconds = parallel.wait_seconds = 0.0
    started = time.perf_counter()
    for index in range(steps):
        step(index + 1)
    seconds = time.perf_counter() - started
    allreduce, wait = parallel.allreduce_seconds, parallel.wait_seconds
    alone = []
    if world.comm is not None:
        for _ in range(5):                   # the collective by itself, ranks lined up first
            world.comm.Barrier()
            begin = time.perf_counter()
            world.sum_in_place(parallel.flat.buffer)
            alone.append(time.perf_counter() - begin)
    if world.is_root:
        parameters = sum(int(model.params[n].size) for n in model.trainable)
        Path(out).write_text(json.dumps({
            "width": width, "ranks": world.size, "steps": steps,
            "images_per_second": steps * config.batch_size / seconds,
            "step_seconds": seconds / steps,
            "allreduce_share": allreduce / seconds, "wait_share": wait / seconds,
            "allreduce_alone_seconds": statistics.median(alone) if alone else 0.0,
            "gradient_bytes": parameters * 4, "parameters": parameters}))


def run_configuration(width, ranks, steps, out):
    command = [sys.executable, __file__, "--worker", "--width", str(width), "--steps", str(steps),
               "--out", str(out)]
    if ranks > 1:
        from npfcn.train.launch import launch_command

        launcher, env = launch_command(ranks, [])
        command = launcher[:launcher.index(sys.executable)] + command
    else:
        env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    subprocess.run(command, env=env, check=True)
    return json.loads(Path(out).read_text())


# -- the model -----------------------------------------------------------------------------

def ring_allreduce_seconds(nbytes, machines, gbit_per_second, latency=LATENCY_SECONDS):
    """A ring allreduce of ``nbytes`` over ``machines``: 2 (P-1) messages of nbytes / P each
    way round (reduce-scatter, then all-gather), so each link carries 2 (P-1)/P of the
    buffer; every message also pays ``latency``."""
    if machines < 2:
        return 0.0
    bandwidth = gbit_per_second * 1e9 / 8
    return 2 * (machines - 1) / machines * nbytes / bandwidth + 2 * (machines - 1) * latency


def model_table(measured):
    """Step time and images/s at MACHINES for every width and network, from the 1-rank
    measurement: compute per image x images per machine + the modelled allreduce."""
    rows = []
    for width in WIDTHS:
        one = measured[(width, 1)]
        nbytes = one["gradient_bytes"]
        for speedup in SPEEDUPS:
            per_image = one["step_seconds"] / 2 / speedup
            for gbit in NETWORKS_GBIT:
                for machines in (1,) + MACHINES:
                    compute = per_image * GLOBAL_BATCH / machines
                    allreduce = ring_allreduce_seconds(nbytes, machines, gbit)
                    step = compute + allreduce
                    rows.append({"width": width, "speedup": speedup, "gbit": gbit,
                                 "machines": machines, "compute_seconds": compute,
                                 "allreduce_seconds": allreduce, "step_seconds": step,
                                 "images_per_second": GLOBAL_BATCH / step,
                                 "efficiency": per_image * GLOBAL_BATCH / (machines * step)})
    return rows


def stops_paying(rows, width, speedup, gbit):
    """The machine count from which another doubling gains less than 1.5x images/s
    (None: every doubling up to 64 gains at least that)."""
    series = [r for r in rows if r["width"] == width and r["speedup"] == speedup
              and r["gbit"] == gbit]
    for before, after in zip(series, series[1:]):
        if after["images_per_second"] < 1.5 * before["images_per_second"]:
            return before["machines"]
    return None


def _seconds(value):
    return f"{value:.1f} s" if value >= 10 else f"{value * 1e3:,.0f} ms"


def _rate(value):
    return f"{value:.0f}/s" if value >= 10 else f"{value:.2f}/s"


def markdown(measured, rows, load):
    lines = ["# Data-parallel scaling (benchmarks/bench_scale.py)", "",
             f"Machine load while measuring (uptime): {load}", "",
             "## Measured on this machine (2 cores; batch 2 of 128x128, 5 classes)", "",
             "| width | ranks | images/s | step | Allreduce share of a step | Allreduce alone | gradient |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (width, ranks), m in sorted(measured.items()):
        lines.append(f"| {width:g} | {ranks} | {m['images_per_second']:.1f} | "
                     f"{m['step_seconds'] * 1e3:.0f} ms | {100 * m['allreduce_share']:.1f}% | "
                     f"{m['allreduce_alone_seconds'] * 1e3:.1f} ms | "
                     f"{m['gradient_bytes'] / 1e6:.1f} MB |")
    lines += ["", f"## Modelled: ring allreduce, global batch {GLOBAL_BATCH} shared by P machines "
              "like this one", "",
              f"Compute per image: the 1-rank measurement above; allreduce: 2(P-1)/P x gradient "
              f"bytes / bandwidth + 2(P-1) x {LATENCY_SECONDS * 1e6:.0f} us.", "",
              "| width | machine | network | " + " | ".join(f"P={p}" for p in (1,) + MACHINES)
              + " | stops paying |",
              "| --- | --- | --- | " + " | ".join("---" for _ in (1,) + MACHINES) + " | --- |"]
    for width in WIDTHS:
        for speedup in SPEEDUPS:
            for gbit in NETWORKS_GBIT:
                series = [r for r in rows if r["width"] == width and r["speedup"] == speedup
                          and r["gbit"] == gbit]
                cells = [f"{_seconds(r['step_seconds'])} ({_rate(r['images_per_second'])}, "
                         f"{100 * r['efficiency']:.0f}%)" for r in series]
                limit = stops_paying(rows, width, speedup, gbit)
                machine = "this one" if speedup == 1 else f"{speedup}x faster"
                lines.append(f"| {width:g} | {machine} | {gbit} Gbit/s | " + " | ".join(cells)
                             + f" | {'beyond 64' if limit is None else f'after {limit}'} |")
    lines += ["", "Cells: step time (images/s, parallel efficiency = compute / (P x step)). "
              "\"Stops paying\": the machine count after which doubling it gains less than "
              "1.5x images/s. \"8x faster\": compute per image an eighth of this machine's."]
    return "\n".join(lines) + "\n"


# -- the default run: 1 process, MPI ranks, and another checkout (today's replicas) ---------

def default_runs(baseline, repeats, epochs):
    """``npfcn train --epochs E`` (the default run, shortened) alternating: this npfcn by
    default (one rank per core), this npfcn with --procs 1, and the checkout ``baseline``
    by its own default; training images/s (metrics.json) and wall time, medians."""
    import tempfile

    kinds = [("ranks (default)", str(ROOT), []), ("one process", str(ROOT), ["--procs", "1"])]
    if baseline:
        kinds.append((f"{baseline} (default)", baseline, []))
    results = {name: [] for name, _, _ in kinds}
    with tempfile.TemporaryDirectory() as output:
        for repeat in range(repeats):
            for index, (name, path, extra) in enumerate(kinds):
                env = dict(os.environ, PYTHONPATH=path)
                run = f"r{repeat}-{index}"
                load = os.getloadavg()[0]
                started = time.perf_counter()
                # cwd: the output folder, so that `python -m` finds npfcn on PYTHONPATH
                # (the current folder comes first on sys.path).
                subprocess.run([sys.executable, "-m", "npfcn", "train", "--epochs", str(epochs),
                                "--output", output, "--name", run, *extra], env=env, check=True,
                               cwd=output, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                metrics = json.loads((Path(output) / run / "metrics.json").read_text())
                results[name].append({"images_per_second": metrics["epochs"][-1]["images_per_second"],
                                      "wall_seconds": wall, "mean_iou": metrics["best"]["mean_iou"],
                                      "load_before": load, "load_after": os.getloadavg()[0]})
                print(name, results[name][-1], flush=True)
    lines = [f"# The default run, {epochs} epoch(s), alternating ({repeats} each)", "",
             "| run | training images/s (median; all) | wall (median) | load (1-min) |",
             "| --- | --- | --- | --- |"]
    for name, rows in results.items():
        speeds = [r["images_per_second"] for r in rows]
        loads = [r["load_before"] for r in rows]
        lines.append(f"| {name} | {statistics.median(speeds):.1f}; "
                     + ", ".join(f"{v:.1f}" for v in speeds)
                     + f" | {statistics.median(r['wall_seconds'] for r in rows):.0f} s | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "default_run.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "default_run.md").write_text(text)
    print(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, default=0.0625, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per configuration")
    parser.add_argument("--default-run", action="store_true",
                        help="instead: the default npfcn train run, ranks against one process "
                             "(and --baseline), shortened to --epochs")
    parser.add_argument("--epochs", type=int, default=1, help="with --default-run (default 1)")
    parser.add_argument("--model-only", action="store_true",
                        help="redo the model from results/scale.json, measuring nothing")
    parser.add_argument("--baseline", help="with --default-run: another npfcn checkout to compare "
                                           "(its folder goes on PYTHONPATH)")
    args = parser.parse_args()
    if args.worker:
        worker(args.width, args.steps, args.out)
        return
    if args.default_run:
        default_runs(args.baseline, args.repeats, args.epochs)
        return
    if args.model_only:                 # the model again from the saved measurements
        saved = json.loads((RESULTS / "scale.json").read_text())
        measured = {(m["width"], m["ranks"]): m for m in saved["measured"]}
        rows = model_table(measured)
        saved["model"] = rows
        (RESULTS / "scale.json").write_text(json.dumps(saved, indent=1))
        text = markdown(measured, rows, saved["load"])
        (RESULTS / "scale.md").write_text(text)
        print(text)
        return
    sys.path.insert(0, str(ROOT))
    load = os.getloadavg()
    runs = {}
    steps = {0.0625: 40, 1.0: 3}
    for _ in range(args.repeats):
        for width in WIDTHS:
            for ranks in (1, 2):        # alternating, so slow spells of the machine hit both
                out = RESULTS / f".scale-{width:g}-{ranks}.json"
                runs.setdefault((width, ranks), []).append(
                    run_configuration(width, ranks, steps[width], out))
                out.unlink()
    measured = {}
    for key, results in runs.items():
        median = dict(results[0])
        for field in ("images_per_second", "step_seconds", "allreduce_share",
                      "allreduce_alone_seconds"):
            median[field] = statistics.median(r[field] for r in results)
        median["all_images_per_second"] = [r["images_per_second"] for r in results]
        measured[key] = median
    rows = model_table(measured)
    load = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before, " + \
        " ".join(f"{v:.2f}" for v in os.getloadavg()) + " after"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({
        "load": load, "measured": [dict(v, width=k[0], ranks=k[1]) for k, v in measured.items()],
        "model": rows, "latency_seconds": LATENCY_SECONDS, "global_batch": GLOBAL_BATCH},
        indent=1))
    text = markdown(measured, rows, load)
    (RESULTS / "scale.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
