"""A SegNet-Basic training step, and its 7x7 convolutions, npfcn against PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_segnet.py \
        [--rounds 5] [--steps 3] [--threads 2] [--size 180x240] [--batch 4]

One step = forward, per-pixel cross-entropy (11 classes), backward, SGD update
(momentum 0.9), float32, batch 4 of 180x240 (CamVid at half its size).  The network
is the same on both sides: 4 x (7x7 conv 64 without bias, BN, ReLU, 2x2 max pool with
indices), 4 x (max unpool, 7x7 conv 64 without bias, BN), 1x1 classifier; BN in
training mode.  The conv cases time one 7x7 convolution (forward + backward: dx and dw)
at each size the network uses.

Each library runs in its own process: the parent starts a child per (library, case),
alternating npfcn / torch for ``--rounds`` rounds, and each child reports the median of
``--steps`` timed repetitions after a warm-up; the table gives the median over rounds.

``--keep-freed-memory`` runs both libraries' children with glibc told to keep freed
memory for the next allocation (the setting ``npfcn train`` uses, npfcn/allocator.py,
given here to both processes through GLIBC_TUNABLES).  By default glibc returns every
freed block above 32 MB to the kernel, so a layer whose output is larger (the first
and last 7x7 layers: 4 x 64 x 180x240 floats, 44 MB) faults its output in afresh at
every call, and on a virtual machine that fault can cost 20 times more when the pages
were just freed by another process (docs/upsampling.md): the figures then say more
about the host than about the convolution.  The results file gets a ``_kept`` suffix.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_timing as bt  # noqa: E402

import numpy as np  # noqa: E402

NUM_CLASSES = 11


def conv_sizes(h, w):
    """(name, cin, H, W) of the 7x7 convolutions of SegNet-Basic at input h x w."""
    ch, cw = h, w
    cases = [("enc1 3->64", 3, ch, cw)]
    for level in range(2, 5):
        ch, cw = -(-ch // 2), -(-cw // 2)        # after a ceil-mode 2x2 pool
        cases.append((f"enc{level} 64->64", 64, ch, cw))
    return cases + [("dec1 64->64", 64, h, w)]


# --- npfcn -----------------------------------------------------------------------------

def npfcn_step(batch, h, w):
    from npfcn.losses import CrossEntropyLoss
    from npfcn.models import SegNetBasic
    from npfcn.optim import SGD
    model = SegNetBasic(NUM_CLASSES, seed=0).train()
    model.input_gradient = False       # as npfcn train, and as PyTorch for an image input
    loss_fn = CrossEntropyLoss()
    opt = SGD(model, lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, (batch, h, w))

    def step():
        loss = loss_fn.forward(model.forward(x), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return step


def npfcn_conv(batch, cin, h, w):
    from npfcn.layers import Conv2d
    conv = Conv2d(cin, 64, 7, padding=3, bias=False, rng=0)
    conv.input_gradient = cin != 3      # conv1's dx is never needed (as on the torch side)
    x = np.random.default_rng(0).standard_normal((batch, cin, h, w), dtype=np.float32)
    dy = np.ones((batch, 64, h, w), np.float32)

    def step():
        conv.forward(x)
        conv.backward(dy)
    return step


# --- PyTorch ---------------------------------------------------------------------------

def torch_segnet_basic(torch):
    nn = torch.nn

    class SegNetBasic(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList(nn.Sequential(nn.Conv2d(3 if i == 0 else 64, 64, 7, padding=3,
                                                             bias=False), nn.BatchNorm2d(64), nn.ReLU())
                                     for i in range(4))
            self.dec = nn.ModuleList(nn.Sequential(nn.Conv2d(64, 64, 7, padding=3, bias=False),
                                                   nn.BatchNorm2d(64)) for _ in range(4))
            self.classifier = nn.Conv2d(64, NUM_CLASSES, 1)

        def forward(self, x):
            switches = []
            for block in self.enc:
                x = block(x)
                size = x.shape[2:]
                x, idx = nn.functional.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
                switches.append((idx, size))
            for block, (idx, size) in zip(self.dec, reversed(switches)):
                x = block(nn.functional.max_unpool2d(x, idx, 2, 2, output_size=size))
            return self.classifier(x)
    return SegNetBasic()


def torch_step(batch, h, w):
    import torch
    torch.manual_seed(0)
    model = torch_segnet_basic(torch).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, h, w)
    y = torch.randint(0, NUM_CLASSES, (batch, h, w))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def torch_conv(batch, cin, h, w):
    import torch
    conv = torch.nn.Conv2d(cin, 64, 7, padding=3, bias=False)
    x = torch.randn(batch, cin, h, w, requires_grad=cin != 3)   # conv1's dx is never needed
    dy = torch.ones(batch, 64, h, w)

    def step():
        conv.zero_grad()
        conv(x).backward(dy)
    return step


# --- one child process: one library, one case ------------------------------------------

def child(library, case, batch, h, w, steps, threads):
    if library == "torch":
        import torch  # noqa: F401  (so pin_threads sets its pool too)
    bt.pin_threads(threads)
    if case == "step":
        fn = (npfcn_step if library == "npfcn" else torch_step)(batch, h, w)
    else:
        _, cin, ch, cw = conv_sizes(h, w)[int(case)]
        fn = (npfcn_conv if library == "npfcn" else torch_conv)(batch, cin, ch, cw)
    fn()                      # warm-up: allocations, first-touch, kernel choice
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(json.dumps({"median_s": statistics.median(times)}))


# npfcn/allocator.py's thresholds, for any process (glibc reads these at start-up).
KEEP_FREED_MEMORY = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824"


def run_child(library, case, args):
    env = dict(os.environ, GLIBC_TUNABLES=KEEP_FREED_MEMORY) if args.keep_freed_memory else None
    argv = [sys.executable, os.path.abspath(__file__), "--child", library, "--case", str(case),
            "--batch", str(args.batch), "--size", args.size, "--steps", str(args.steps),
            "--threads", str(args.threads)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=bt.DEFAULT_THREADS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", default="180x240", help="HxW")
    parser.add_argument("--only-step", action="store_true", help="skip the per-conv cases")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="both libraries' processes keep freed memory (glibc; see above)")
    parser.add_argument("--child", choices=("npfcn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--case", default="step", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    h, w = map(int, args.size.lower().split("x"))
    if args.child:
        child(args.child, args.case, args.batch, h, w, args.steps, args.threads)
        return 0
    cases = [("training step", "step")]
    if not args.only_step:
        cases += [(f"7x7 conv {name} at {ch}x{cw}", i)
                  for i, (name, _, ch, cw) in enumerate(conv_sizes(h, w))]
    rows = []
    for label, case in cases:
        times = {"npfcn": [], "torch": []}
        for r in range(args.rounds):
            for library in ("npfcn", "torch") if r % 2 == 0 else ("torch", "npfcn"):
                times[library].append(run_child(library, case, args))
        ours, theirs = statistics.median(times["npfcn"]), statistics.median(times["torch"])
        rows.append({"case": label, "npfcn_ms": 1e3 * ours, "torch_ms": 1e3 * theirs,
                     "torch_over_npfcn": theirs / ours,
                     "npfcn_runs_ms": [1e3 * t for t in times["npfcn"]],
                     "torch_runs_ms": [1e3 * t for t in times["torch"]]})
        bt.progress(f"{label}: npfcn {1e3 * ours:.1f} ms, torch {1e3 * theirs:.1f} ms")
    import torch
    threads = bt.pin_threads(args.threads)
    info = bt.machine()
    header = (f"SegNet-Basic, batch {args.batch} of {h}x{w}, float32: median over {args.rounds} "
              f"alternated rounds, each a fresh process per library timing {args.steps} "
              f"repetitions after a warm-up (conv: forward + backward incl. dw); "
              + ("both keep freed memory (glibc). " if args.keep_freed_memory
                 else "glibc's default allocator. ")
              + bt.describe(info, threads))
    columns = [("case", "case"), ("npfcn_ms", "npfcn ms"), ("torch_ms", "PyTorch ms"),
               ("torch_over_npfcn", "PyTorch / npfcn")]
    bt.report("segnet_kept" if args.keep_freed_memory else "segnet", header, rows, columns, {"machine": info, "torch": torch.__version__,
                                                 "args": vars(args)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
