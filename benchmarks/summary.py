"""The README's benchmark tables and target check, from the JSON files in results/.

    python benchmarks/summary.py            # prints Markdown

Reads results/fcn.json (bench_fcn.py), results/layers.json (bench_layers.py) and,
when present, results/layers_narrow.json (bench_layers.py --narrow), so the
README shows exactly the numbers of the latest runs, with their date and machine.
"""
import json
import os
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# The targets: layer-name prefixes (fwd+bwd rows) and the minimum ratio torch/ours.
TARGETS = [
    ("convolution fwd+bwd >= 0.8 on every VGG16 shape", ("conv",), 0.8),
    ("transposed convolution fwd+bwd >= 1.5 on the FCN-8s shapes", ("upscore",), 1.5),
    ("max pool with indices fwd+bwd >= 1.5", ("maxpool",), 1.5),
]


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def fmt(value, digits=2):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"


def machine_line(doc):
    m, t = doc["machine"], doc["threads"]
    return (f"{m['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, NumPy "
            f"{m['numpy']} (OpenBLAS {m.get('openblas_core', '?')} kernels), PyTorch "
            f"{m.get('torch', '-')}; float32; threads openblas {t['openblas']}, npfcn "
            f"{t['npfcn']}, torch {t['torch']}")


def network_table(doc):
    lines = ["| FCN-8s step | npfcn s/step | PyTorch s/step | PyTorch/npfcn | npfcn img/s | "
             "PyTorch img/s | spread (npfcn) | npfcn peak MiB | PyTorch peak MiB | "
             "memory npfcn/PyTorch |", "| --- " * 10 + "|"]
    for r in doc["rows"]:
        what = (f"{'full width' if r['width'] == 1 else 'width ' + format(r['width'], 'g')}, "
                f"{int(r['batch'])} x {r['size']}, {r['classes']} classes")
        lines.append(f"| {what} | {fmt(r['ours_s'])} | {fmt(r['torch_s'])} | "
                     f"**{fmt(r['ratio'])}** | {fmt(r['ours_ips'])} | {fmt(r['torch_ips'])} | "
                     f"{fmt(r['spread'])} | {fmt(r.get('ours_mb'), 0)} | "
                     f"{fmt(r.get('torch_mb'), 0)} | {fmt(r.get('mem_ratio'))} |")
    return "\n".join(lines)


def layer_table(*docs):
    lines = ["| layer | N | npfcn ms | PyTorch ms | PyTorch/npfcn | npfcn GFLOP/s | "
             "limit/npfcn | spread (npfcn) |", "| --- " * 8 + "|"]
    for doc in docs:
        for r in doc["rows"]:
            if r["pass"] != "fwd+bwd":
                continue
            lines.append(f"| {r['layer']} | {doc['batch']} | {fmt(r['ours_ms'])} | "
                         f"{fmt(r['torch_ms'])} | {fmt(r['ratio'])} | {fmt(r['gflops'])} | "
                         f"{fmt(r['limit_ratio'])} | {fmt(r['spread'])} |")
    return "\n".join(lines)


def target_table(layers, fcn):
    lines = ["| target | measured (PyTorch/npfcn) | met? |", "| --- | --- | --- |"]
    rows = [r for r in layers["rows"] if r["pass"] == "fwd+bwd"]
    for label, prefixes, minimum in TARGETS:
        got = [(r["layer"].split()[0], r["ratio"]) for r in rows if r["layer"].startswith(prefixes)]
        low = min(ratio for _, ratio in got)
        shown = ", ".join(f"{name} {ratio:.2f}" for name, ratio in got)
        lines.append(f"| {label} | {shown} | {'yes' if low >= minimum else 'no'} |")
    full = next(r for r in fcn["rows"] if r["config"] == "full")
    ok = full["ratio"] >= 0.8 and full.get("mem_ratio", 99) <= 1.5
    lines.append(f"| FCN-8s step at full width >= 0.8, peak memory <= 1.5x | {full['ratio']:.2f}, "
                 f"memory {full.get('mem_ratio', float('nan')):.2f}x | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def main():
    fcn, layers, narrow = load("fcn"), load("layers"), load("layers_narrow")
    if fcn is None or layers is None:
        sys.exit("run benchmarks/bench_fcn.py and benchmarks/bench_layers.py first")
    print(f"Measured {machine_line(layers)}.\n")
    print("**Whole network** (one training step: forward, loss, backward, SGD with momentum "
          "and weight decay; median of alternated steps; peak RSS of each library in its own "
          f"process; {fcn['machine']['date']}):\n")
    print(network_table(fcn) + "\n")
    print("**Layers** (forward+backward; `limit/npfcn` = time of the bare GEMMs of an im2col "
          "design (convolutions) or of a copy of the input (memory-bound layers) over npfcn's "
          "time; the `w1/16` rows are the default training run's convolutions):\n")
    print(layer_table(*(d for d in (layers, narrow) if d is not None)) + "\n")
    print("**Targets** (PyTorch time / npfcn time in the same run):\n")
    print(target_table(layers, fcn))


if __name__ == "__main__":
    main()
