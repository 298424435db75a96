"""Soak test: a few hundred training steps of a tiny FCN, watching the process's memory.

    python benchmarks/soak.py                  # 300 steps, writes benchmarks/results/soak.{json,png}
    python benchmarks/soak.py --steps 600 --output /tmp/soak

It runs the real training loop (``npfcn.train.Trainer``: forward, loss, backward,
optimizer step, and every epoch validation, checkpoints, metrics and pictures)
while a thread samples the resident set size (RSS, from /proc/self/statm) every
20 ms together with the step counter.  A leak - a cache that keeps every
batch, a list of arrays that grows with the steps - shows as RSS that climbs
with the step count.  The verdict compares the peak RSS of an early window
(20-40 % of the steps, after the first epochs have allocated their workspaces)
with the peak of the last 20 %: they must agree within ``--tolerance``
(3 % by default).  Exit code 0 when they do, 1 when memory grew.

The numbers go to stdout, ``soak.json`` and ``soak.png`` (RSS against step).
Linux only (/proc).  On a shared machine run it with ``OMP_NUM_THREADS=1``:
OpenMP threads on oversubscribed cores make every step many times slower.
``--plant-leak KIB`` keeps KIB KiB per step alive on purpose, to show that the
verdict does catch a leak (tests/test_never_lose_work.py does both).
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image, ImageDraw

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MiB = 2 ** 20


def rss_bytes():
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class RssSampler(threading.Thread):
    """Records (step, RSS) every ``interval`` seconds until stopped; ``step`` is read
    from a callable so the sampler needs no hook in the training loop."""

    def __init__(self, step, interval=0.02):
        super().__init__(daemon=True)
        self.step, self.interval = step, interval
        self.samples = []
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.samples.append((self.step(), rss_bytes()))
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join()
        self.samples.append((self.step(), rss_bytes()))


def window_peak(samples, start, stop):
    """Largest RSS among samples whose step lies in [start, stop)."""
    inside = [rss for step, rss in samples if start <= step < stop]
    if not inside:
        raise RuntimeError(f"no RSS samples between steps {start} and {stop}")
    return max(inside)


def plot(samples, early, late, path, title):
    """RSS (MiB) against step, with the two compared windows shaded."""
    width, height, margin = 720, 360, 60
    steps = np.array([s for s, _ in samples], dtype=float)
    rss = np.array([r for _, r in samples], dtype=float) / MiB
    lo, hi = float(rss.min()), float(rss.max())
    lo, hi = lo - 0.05 * (hi - lo + 1), hi + 0.05 * (hi - lo + 1)
    last = max(steps.max(), 1.0)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def xy(step, value):
        x = margin + (width - 2 * margin) * step / last
        y = height - margin - (height - 2 * margin) * (value - lo) / (hi - lo)
        return x, y

    for (a, b), colour in ((early, (220, 235, 255)), (late, (255, 225, 215))):
        draw.rectangle([xy(a, hi), xy(b, lo)], fill=colour)
    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    draw.line([xy(s, r) for s, r in zip(steps, rss)], fill=(30, 60, 200), width=2)
    for value in np.linspace(lo, hi, 5):
        x, y = xy(0, value)
        draw.text((4, y - 6), f"{value:.0f}", fill="black")
    for step in np.linspace(0, last, 6):
        x, y = xy(step, lo)
        draw.text((x - 10, height - margin + 6), f"{step:.0f}", fill="black")
    draw.text((margin, 10), title, fill="black")
    draw.text((margin, 26), "RSS (MiB) against training step; blue: early window, red: late window",
              fill="black")
    image.save(path)


def plant_leak(trainer, kib):
    """Make every optimizer step keep ``kib`` KiB alive (written, so it is resident)."""
    kept, step = [], trainer.optimizer.step

    def leaky_step():
        kept.append(np.ones(kib * 1024 // 8))
        step()

    trainer.optimizer.step = leaky_step


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--steps-per-epoch", type=int, default=10,
                   help="validation, checkpoints and pictures every this many steps (default 10)")
    p.add_argument("--model", default="fcn8s")
    p.add_argument("--width", type=float, default=0.015625)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--tolerance", type=float, default=0.03,
                   help="largest accepted relative growth of peak RSS (default 0.03)")
    p.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results"),
                   help="folder for soak.json and soak.png")
    p.add_argument("--plant-leak", type=int, default=0, metavar="KIB",
                   help="keep KIB KiB alive per step on purpose (checks the verdict; default 0)")
    return p.parse_args(argv)


def main(argv=None):
    from npfcn.train import TrainConfig, Trainer

    args = parse_args(argv)
    if args.steps < 10 or args.steps % args.steps_per_epoch:
        raise SystemExit("--steps must be >= 10 and a multiple of --steps-per-epoch")
    os.makedirs(args.output, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npfcn-soak-") as runs:
        config = TrainConfig(model=args.model, width=args.width, image_size=args.image_size,
                             batch_size=args.batch_size,
                             num_train=args.batch_size * args.steps_per_epoch, num_val=2,
                             epochs=args.steps // args.steps_per_epoch, output=runs, name="soak",
                             num_samples=2)
        trainer = Trainer(config, stream=sys.stderr)
        if args.plant_leak:
            plant_leak(trainer, args.plant_leak)
        sampler = RssSampler(lambda: trainer.global_step)
        started = time.perf_counter()
        sampler.start()
        try:
            trainer.run()
        finally:
            sampler.stop()
        seconds = time.perf_counter() - started

    steps, samples = args.steps, sampler.samples
    early = (int(0.2 * steps), int(0.4 * steps))
    late = (int(0.8 * steps), steps + 1)
    early_peak, late_peak = window_peak(samples, *early), window_peak(samples, *late)
    growth = late_peak / early_peak - 1
    passed = growth <= args.tolerance
    result = {
        "steps": steps, "seconds": round(seconds, 1), "model": args.model, "width": args.width,
        "image_size": args.image_size, "batch_size": args.batch_size,
        "steps_per_epoch": args.steps_per_epoch,
        "early_window": list(early), "late_window": [late[0], steps],
        "early_peak_rss_mib": round(early_peak / MiB, 2), "late_peak_rss_mib": round(late_peak / MiB, 2),
        "growth": round(growth, 5), "tolerance": args.tolerance, "passed": passed,
        "samples": len(samples), "planted_leak_kib_per_step": args.plant_leak,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with open(os.path.join(args.output, "soak.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    plot(samples, early, (late[0], steps), os.path.join(args.output, "soak.png"),
         f"soak: {steps} steps of {args.model} width {args.width:g}, "
         f"peak RSS {early_peak / MiB:.1f} -> {late_peak / MiB:.1f} MiB ({growth:+.2%})")
    print(f"{steps} steps in {seconds:.1f} s; peak RSS steps {early[0]}-{early[1]}: "
          f"{early_peak / MiB:.1f} MiB, steps {late[0]}-{steps}: {late_peak / MiB:.1f} MiB "
          f"({growth:+.2%}, tolerance {args.tolerance:.0%}): {'PASS' if passed else 'FAIL'}")
    print(f"wrote {os.path.join(args.output, 'soak.json')} and soak.png")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
