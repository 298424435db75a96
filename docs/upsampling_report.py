"""The tables and pictures of docs/upsampling.md, from trained runs (see that file for the
commands that train them).

    python docs/upsampling_report.py RUNS_FOLDER [--data camvid:DIR] [--names a,b,...] [--seeds 0,1]

For each run folder RUNS_FOLDER/<name>-s<seed> (best.npz, metrics.json): test-set scores
at the scale it was trained at (``npfcn.evaluate`` with the boundary F1), parameters,
training time, and for the first seed the peak memory of one forward pass (a fresh
process per model); then writes RUNS_FOLDER/report.json, the Markdown tables (mean over
the seeds, each seed in brackets) on stdout, and the pictures (first seed's runs)
docs/upsampling_camvid.png (test images, truth, every model's prediction, legend) and
docs/upsampling_curves.png (validation mean IoU and training loss per epoch).
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

DOCS = os.path.dirname(os.path.abspath(__file__))
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75)]


def evaluate_run(run, data, split="test"):
    from npfcn.checkpoint import load_checkpoint, load_model
    from npfcn.data import open_dataset
    from npfcn.evaluate import evaluate

    checkpoint = load_checkpoint(os.path.join(run, "best.npz"))
    model = load_model(checkpoint)
    trained = checkpoint.meta["config"]["train"]
    dataset = open_dataset(data or trained["data"], split).rescaled(trained.get("scale", 1.0))
    result = evaluate(model, dataset, batch_size=1, preprocessing=checkpoint.meta.get(
        "preprocessing", "unit"), score_offset=checkpoint.meta.get("score_offset"), boundary=True)
    with open(os.path.join(run, "metrics.json")) as handle:
        history = json.load(handle)
    epochs = history["epochs"]
    return {"model": trained["model"], "width": trained["width"], "scale": trained.get("scale"),
            "parameters": model.num_parameters(trainable_only=True),
            "best_epoch": history.get("best", {}).get("epoch"), "epochs": len(epochs),
            "train_minutes": sum(e.get("train_seconds", 0) for e in epochs) / 60,
            "images": len(dataset), **result.metrics}


def memory_child(checkpoint, height, width):
    """Print the peak RSS growth (KiB) of one forward pass of a (1, 3, height, width) image."""
    sys.path.insert(0, os.path.join(os.path.dirname(DOCS), "benchmarks"))
    from bench_timing import own_peak_rss_kb
    from npfcn.checkpoint import load_model

    model = load_model(checkpoint).eval()
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    before = own_peak_rss_kb()
    model.forward(x)
    print(json.dumps({"forward_kib": own_peak_rss_kb() - before}))


def forward_gmacs(model_name, width, num_classes, height, image_width):
    """Multiply-adds (10^9) of the convolutions in one forward pass of one image."""
    from npfcn import layers
    from npfcn.models import build_model

    total = 0
    conv_forward, up_forward = layers.Conv2d.forward, layers.ConvTranspose2d.forward

    def counted_conv(self, x):
        nonlocal total
        y = conv_forward(self, x)
        total += y.size * self.params["weight"][0].size      # per output: Cin * KH * KW
        return y

    def counted_up(self, x):
        nonlocal total
        total += x.size * self.params["weight"][0].size      # per input: Cout * KH * KW
        return up_forward(self, x)

    layers.Conv2d.forward, layers.ConvTranspose2d.forward = counted_conv, counted_up
    try:
        model = build_model(model_name, num_classes=num_classes, width=width).eval()
        model.forward(np.zeros((1, 3, height, image_width), np.float32))
    finally:
        layers.Conv2d.forward, layers.ConvTranspose2d.forward = conv_forward, up_forward
    return total / 1e9


def forward_memory_mib(checkpoint, height, width):
    argv = [sys.executable, os.path.abspath(__file__), "--memory-child", checkpoint,
            str(height), str(width)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["forward_kib"] / 1024


def picture(runs, labels, data, path, indices=(0, 60, 120, 200)):
    from PIL import Image, ImageDraw

    from npfcn.checkpoint import load_checkpoint, load_model
    from npfcn.data import open_dataset
    from npfcn.data.camvid import CAMVID_CLASSES, CAMVID_COLORMAP
    from npfcn.data.transforms import preprocess
    from npfcn.evaluate import predict_labels
    from npfcn.viz import colorize, image_grid, load_font

    models, scale = [], 1.0
    for run in runs:
        checkpoint = load_checkpoint(os.path.join(run, "best.npz"))
        models.append((load_model(checkpoint), checkpoint.meta.get("score_offset")))
        scale = checkpoint.meta["config"]["train"].get("scale", 1.0)
    dataset = open_dataset(data, "test").rescaled(scale)
    rows = []
    for i in indices:
        image, mask = dataset[i]
        row = [image, colorize(mask, CAMVID_COLORMAP)]
        for model, offset in models:
            predicted, _ = predict_labels(model, preprocess(image)[None], offset)
            row.append(colorize(predicted[0].astype(np.uint8), CAMVID_COLORMAP))
        rows.append(row)
    grid = Image.fromarray(image_grid(rows, titles=["test image", "truth"] + labels, scale=2))
    # A legend below: one swatch per class (void is drawn in the VOC void colour).
    font = load_font(13)
    legend_h = 30
    canvas = Image.new("RGB", (grid.width, grid.height + legend_h), (255, 255, 255))
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 6
    for name, colour in list(zip(CAMVID_CLASSES, CAMVID_COLORMAP)) + [("void", (224, 224, 192))]:
        draw.rectangle([x, grid.height + 8, x + 14, grid.height + 22], fill=tuple(int(c) for c in colour),
                       outline=(0, 0, 0))
        draw.text((x + 18, grid.height + 7), name, fill=(0, 0, 0), font=font)
        x += 26 + int(draw.textlength(name, font=font)) if hasattr(draw, "textlength") else 90
    canvas.save(path)


def curves(runs, labels, path):
    from PIL import Image, ImageDraw

    from npfcn.viz import _panel, load_font

    histories = []
    for run in runs:
        with open(os.path.join(run, "metrics.json")) as handle:
            histories.append(json.load(handle)["epochs"])
    canvas = Image.new("RGB", (900, 340), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = load_font(12)
    miou = [(label, [e["epoch"] for e in h], [e["mean_iou"] for e in h], COLOURS[i % len(COLOURS)])
            for i, (label, h) in enumerate(zip(labels, histories))]
    loss = [(label, [e["epoch"] for e in h], [e["train_loss"] for e in h], COLOURS[i % len(COLOURS)])
            for i, (label, h) in enumerate(zip(labels, histories))]
    _panel(draw, (0, 0, 450, 340), miou, "validation mean IoU", font=font, legend="bottom")
    _panel(draw, (450, 0, 900, 340), loss, "training loss (median-frequency weighted)", font=font)
    canvas.save(path)


def synthetic_table(folder, names, labels):
    """Validation scores (best epoch) of the synthetic runs, their time and cost per image."""
    rows = []
    for name, label in zip(names, labels):
        path = os.path.join(folder, name, "metrics.json")
        if not os.path.isfile(path):
            continue
        with open(path) as handle:
            history = json.load(handle)
        config, size = history["config"]["model"], history["config"]["train"]["image_size"]
        epochs = history["epochs"]
        best = max(epochs, key=lambda e: e["mean_iou"])
        from npfcn.models import count_parameters
        learned, _ = count_parameters(config["model"], config["num_classes"], config["width"])
        gmacs = forward_gmacs(config["model"], config["width"], config["num_classes"], size, size)
        seconds = np.median([e["train_seconds"] for e in epochs])
        rows.append(f"| {label} | {learned:,} | {RECEPTIVE_FIELD.get(config['model'], '-')} | "
                    f"{gmacs:.3f} | {seconds:.0f} | {100 * best['mean_iou']:.1f} | "
                    f"{100 * best['pixel_accuracy']:.1f} | {100 * best['mean_accuracy']:.1f} |")
    return "\n".join([f"| model | params | receptive field (px) | GMAC / image {size}x{size} | "
                      "train s / epoch | best val mIoU | pixel acc | mean acc |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"] + rows)


# Worked out by hand in docs/upsampling.md (the theoretical receptive field of one output).
RECEPTIVE_FIELD = {"plain": 21, "segnet-basic": 196, "fcn-basic": 151, "bilinear-basic": 151,
                   "fcn8s": 404}


PAPER = {   # arXiv 1511.00561v3, Table 1 (median frequency balancing, CamVid test): G, C, mIoU, BF
    "bilinear-basic": (77.9, 61.1, 43.3, 20.83, "0.625 M"),
    "segnet-basic": (82.7, 62.0, 47.7, 35.78, "1.425 M"),
    "fcn-basic": (81.7, 62.4, 47.3, 38.11, "0.65 M"),
}


def _seeds_cell(values, digits=1):
    """'mean (seed 0, seed 1, ...)' of percentages."""
    text = f"{100 * np.mean(values):.{digits}f}"
    if len(values) > 1:
        text += " (" + ", ".join(f"{100 * v:.{digits}f}" for v in values) + ")"
    return text


def tables(results):
    """results: {label: [scores of each seed's run]} -> the Markdown tables."""
    lines = ["| model | params | G | C | mIoU | BF | paper G / C / mIoU / BF (params) | "
             "min / epoch | best epoch | GMAC / image 90x120 | fwd MiB 360x480 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, runs in results.items():
        r = runs[0]
        paper = PAPER.get(r["model"])
        paper_text = " / ".join(f"{v}" for v in paper[:4]) + f" ({paper[4]})" if paper else "-"
        cells = [_seeds_cell([run[key] for run in runs])
                 for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "boundary_f1")]
        minutes = ", ".join(f"{run['train_minutes'] / run['epochs']:.1f}" for run in runs)
        best = ", ".join(f"{run['best_epoch']}" for run in runs)
        lines.append(f"| {name} | {r['parameters']:,} | " + " | ".join(cells) +
                     f" | {paper_text} | {minutes} | {best} of {r['epochs']} | "
                     f"{r.get('gmacs_small', 0):.2f} | {r.get('memory_full', 0):.0f} |")
    classes = list(next(iter(results.values()))[0]["iou_per_class"])
    lines += ["", "| model | " + " | ".join(classes) + " |",
              "| --- | " + " | ".join("---" for _ in classes) + " |"]
    for name, runs in results.items():
        cells = []
        for c in classes:
            values = [run["iou_per_class"][c] for run in runs if run["iou_per_class"][c] is not None]
            cells.append(f"{100 * np.mean(values):.1f}" if values else "-")
        lines.append(f"| {name} (mean of {len(runs)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scores_of(run, data, measure_memory):
    """Test scores of one run, cached in run/test_scores.json while best.npz is unchanged."""
    best = os.path.join(run, "best.npz")
    cached = os.path.join(run, "test_scores.json")
    if os.path.isfile(cached) and os.path.getmtime(cached) > os.path.getmtime(best):
        with open(cached) as handle:
            return json.load(handle)
    print(f"evaluating {run} ...", file=sys.stderr, flush=True)
    result = evaluate_run(run, data)
    result["gmacs_small"] = forward_gmacs(result["model"], result["width"], 11, 90, 120)
    if measure_memory:
        result["memory_full"] = forward_memory_mib(best, 360, 480)
    with open(cached, "w") as handle:
        json.dump(result, handle, indent=1)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="?")
    parser.add_argument("--names", default="segnet-basic,fcn-basic,bilinear-basic,fcn8s-narrow")
    parser.add_argument("--labels", default="SegNet-Basic,FCN-Basic,bilinear,FCN-8s narrow")
    parser.add_argument("--seeds", default="0,1",
                        help="the runs of a model are RUNS_FOLDER/<name>-s<seed> (default 0,1)")
    parser.add_argument("--data", default="camvid:" + os.environ.get(
        "NPFCN_CAMVID", os.path.join(os.path.dirname(os.path.dirname(DOCS)), "shared/data/camvid")))
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--synthetic", action="store_true",
                        help="RUNS_FOLDER holds synthetic-shapes runs: table from their metrics.json")
    args = parser.parse_args(argv)
    if args.synthetic:
        print(synthetic_table(args.runs, args.names.split(","), args.labels.split(",")))
        return 0
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), int(args.memory_child[2]))
        return 0
    results, first_runs = {}, []
    for name, label in zip(args.names.split(","), args.labels.split(",")):
        runs = [os.path.join(args.runs, f"{name}-s{seed}") for seed in args.seeds.split(",")]
        runs = [run for run in runs if os.path.isfile(os.path.join(run, "best.npz"))]
        if runs:
            results[label] = [scores_of(run, args.data, i == 0) for i, run in enumerate(runs)]
            results[label][0].setdefault("memory_full", 0)
            first_runs.append((label, runs[0]))
    with open(os.path.join(args.runs, "report.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    print(tables(results))
    labels, runs = [l for l, _ in first_runs], [r for _, r in first_runs]
    picture(runs, labels, args.data, os.path.join(DOCS, "upsampling_camvid.png"))
    curves(runs, labels, os.path.join(DOCS, "upsampling_curves.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
