"""A whole FCN-8s training step: npfcn against the same network written in PyTorch.

    python benchmarks/bench_fcn.py [--quick] [--repeats 5] [--threads 2] [--no-rss]

One step = forward, per-pixel cross-entropy, backward, SGD update (momentum
0.9, weight decay 5e-4 on weights, not biases), float32.  Two configurations:

* ``full``    width 1.0 (VGG16 channels), 21 classes, one 224x224 image;
* ``default`` the ``npfcn train`` default size: width 0.0625, 5 classes, batch 2 of 128x128.

Both networks have the same architecture: conv1_1 padded by 100, ceil-mode
pools, fc6 as a 7x7 convolution, dropout 0.5, frozen bilinear upsampling,
crops at 5, 9 and 31.  Each library runs in a worker process of its own (no
thread pools fighting), the steps alternate between them (npfcn, PyTorch, npfcn,
...; bench_timing.compare_processes); peak memory (RSS) is measured in separate
processes, one per library, each running the same steps alone (``--rss-child``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_timing as bt  # noqa: E402

import numpy as np  # noqa: E402

CONFIGS = {
    "full": dict(width=1.0, num_classes=21, batch=1, size=224),
    "default": dict(width=0.0625, num_classes=5, batch=2, size=128),
}


def make_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg["batch"], 3, cfg["size"], cfg["size"]), dtype=np.float32)
    y = rng.integers(0, cfg["num_classes"], (cfg["batch"], cfg["size"], cfg["size"]))
    return x, y.astype(np.int64)


# --- npfcn -----------------------------------------------------------------------------

def npfcn_step(cfg):
    """A closure running one npfcn training step on a fixed batch."""
    from npfcn.losses import CrossEntropyLoss
    from npfcn.models import FCN8s
    from npfcn.optim import SGD
    model = FCN8s(num_classes=cfg["num_classes"], width=cfg["width"], seed=0)
    model.train()
    model.input_gradient = False       # as npfcn train, and as PyTorch for an image input
    loss_fn = CrossEntropyLoss(ignore_index=255)
    opt = SGD(model, lr=1e-4, momentum=0.9, weight_decay=5e-4)
    x, y = make_batch(cfg)

    def step():
        scores = model.forward(x)
        loss = loss_fn.forward(scores, y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        return loss
    return step


# --- the same network in PyTorch -------------------------------------------------------

def torch_fcn8s(torch, num_classes, width):
    nn = torch.nn

    def ch(c):
        return max(1, round(c * width))

    class Upsample(nn.ConvTranspose2d):
        """Bias-free, bilinear, frozen (the reference's lr_mult: 0)."""

        def __init__(self, c, k, s):
            super().__init__(c, c, k, stride=s, bias=False)
            factor = (k + 1) // 2
            center = factor - 1 if k % 2 == 1 else factor - 0.5
            og = torch.arange(k, dtype=torch.float32)
            filt = 1 - (og - center).abs() / factor
            kernel = filt[:, None] * filt[None, :]
            with torch.no_grad():
                self.weight.zero_()
                for i in range(c):
                    self.weight[i, i] = kernel
            self.weight.requires_grad_(False)

    class FCN8sTorch(nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [], 3
            blocks = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
            self.blocks = nn.ModuleList()
            for b, (c, n) in enumerate(blocks):
                layers = []
                for i in range(n):
                    pad = 100 if (b, i) == (0, 0) else 1
                    layers += [nn.Conv2d(cin, ch(c), 3, padding=pad), nn.ReLU(inplace=True)]
                    cin = ch(c)
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                self.blocks.append(nn.Sequential(*layers))
            fc = ch(4096)
            self.fc = nn.Sequential(nn.Conv2d(cin, fc, 7), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                    nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout(0.5))
            self.score_fr = nn.Conv2d(fc, num_classes, 1)
            self.score_pool4 = nn.Conv2d(ch(512), num_classes, 1)
            self.score_pool3 = nn.Conv2d(ch(256), num_classes, 1)
            self.upscore2 = Upsample(num_classes, 4, 2)
            self.upscore_pool4 = Upsample(num_classes, 4, 2)
            self.upscore8 = Upsample(num_classes, 16, 8)

        def forward(self, x):
            h = x
            taps = []
            for block in self.blocks:
                h = block(h)
                taps.append(h)
            pool3, pool4 = taps[2], taps[3]
            score = self.score_fr(self.fc(h))
            up2 = self.upscore2(score)
            s4 = self.score_pool4(pool4)[:, :, 5:5 + up2.shape[2], 5:5 + up2.shape[3]]
            up4 = self.upscore_pool4(up2 + s4)
            s3 = self.score_pool3(pool3)[:, :, 9:9 + up4.shape[2], 9:9 + up4.shape[3]]
            up8 = self.upscore8(up4 + s3)
            return up8[:, :, 31:31 + x.shape[2], 31:31 + x.shape[3]]

    return FCN8sTorch()


def torch_step(cfg):
    import torch
    torch.manual_seed(0)
    model = torch_fcn8s(torch, cfg["num_classes"], cfg["width"])
    model.train()
    weights = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4},
                           {"params": biases, "weight_decay": 0.0}], lr=1e-4, momentum=0.9)
    x, y = make_batch(cfg)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)

    def step():
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(tx), ty)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


# --- measurement -----------------------------------------------------------------------

def rss_child(which, config, steps, threads):
    """Run ``steps`` training steps of one library alone; print the peak RSS."""
    if which == "torch":
        import torch
        torch.set_num_threads(threads)
    bt.pin_threads(threads)
    cfg = CONFIGS[config]
    step = npfcn_step(cfg) if which == "npfcn" else torch_step(cfg)
    baseline = bt.own_peak_rss_kb()
    for _ in range(steps):
        step()
    print(f"baseline_rss_kb={baseline}")
    print(f"peak_rss_kb={bt.own_peak_rss_kb()}")
    return 0


def measure_rss(config, threads, steps=2):
    out = {}
    for which in ("npfcn", "torch"):
        bt.progress(f"  peak memory of {which} ({config}) in a fresh process ...")
        mb, text = bt.peak_rss_mb([sys.executable, os.path.abspath(__file__), "--rss-child", which,
                                   "--config", config, "--steps", str(steps),
                                   "--threads", str(threads)])
        baseline = int(text.split("baseline_rss_kb=")[1].split()[0]) / 1024.0
        out[which] = {"peak_mb": mb, "before_steps_mb": baseline}
    return out


def run(configs, repeats, threads, rss=True):
    """Time the configurations with each library in a worker process of its own."""
    workers = {}
    try:
        for library in ("npfcn", "torch"):
            workers[library] = bt.Worker(os.path.abspath(__file__), library,
                                         ["--threads", str(threads)])
        rows = []
        for name in configs:
            cfg = CONFIGS[name]
            bt.progress(f"FCN-8s {name}: timing both networks ...")
            stats = bt.compare_processes(workers, name, repeats=repeats, min_time=0.0)
            ours, theirs = stats["npfcn"], stats["torch"]
            row = {"config": name, "width": cfg["width"], "batch": cfg["batch"],
                   "size": f"{cfg['size']}x{cfg['size']}", "classes": cfg["num_classes"],
                   "ours_s": ours.median, "torch_s": theirs.median,
                   "ratio": theirs.median / ours.median,
                   "ours_ips": cfg["batch"] / ours.median, "torch_ips": cfg["batch"] / theirs.median,
                   "spread": ours.spread, "torch_spread": theirs.spread,
                   "stats": {k: v.as_dict() for k, v in stats.items()}}
            if rss:
                mem = measure_rss(name, threads)
                row.update(ours_mb=mem["npfcn"]["peak_mb"], torch_mb=mem["torch"]["peak_mb"],
                           mem_ratio=mem["npfcn"]["peak_mb"] / mem["torch"]["peak_mb"], memory=mem)
            bt.progress(f"  torch/ours {row['ratio']:.2f}")
            rows.append(row)
        threads_used = {**workers["npfcn"].hello["threads"],
                        "torch": workers["torch"].hello["threads"].get("torch")}
        return rows, threads_used, workers["npfcn"].hello["machine"]
    finally:
        for worker in workers.values():
            worker.close()


def worker_main(library, threads):
    """A worker process timing one library's training step (see bench_timing.serve)."""
    if library == "torch":
        import torch  # noqa: F401  (imported before pin_threads sizes its pool)
    make = npfcn_step if library == "npfcn" else torch_step
    return bt.serve(lambda name: make(CONFIGS[name]), threads)


COLUMNS = [("config", "config"), ("width", "width"), ("batch", "batch"), ("size", "image"),
           ("ours_s", "ours s/step"), ("torch_s", "torch s/step"), ("ratio", "torch/ours"),
           ("ours_ips", "ours img/s"), ("torch_ips", "torch img/s"), ("spread", "spread"),
           ("ours_mb", "ours peak MiB"), ("torch_mb", "torch peak MiB"),
           ("mem_ratio", "memory ours/torch")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the default-width config")
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=bt.DEFAULT_THREADS)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--rss-child", choices=("npfcn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("npfcn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return rss_child(args.rss_child, (args.config or ["full"])[0], args.steps, args.threads)
    if args.worker:
        return worker_main(args.worker, args.threads)
    configs = args.config or (["default"] if args.quick else ["full", "default"])
    rows, threads, info = run(configs, args.repeats, args.threads, rss=not args.no_rss)
    header = (f"FCN-8s training step (forward, loss, backward, SGD), float32, each library in "
              f"its own process, median of {args.repeats} alternated steps. "
              f"{bt.describe(info, threads)}")
    bt.report("fcn_quick" if args.quick else "fcn", header, rows, COLUMNS,
              {"machine": info, "threads": threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
