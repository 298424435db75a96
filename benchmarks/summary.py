"""docs/benchmarks.md: every benchmark table, printed from the JSON files in results/.

    python benchmarks/summary.py > docs/benchmarks.md

The headline tables and the target check come from results/fcn.json (bench_fcn.py),
results/layers.json (bench_layers.py) and, when present, results/layers_narrow.json
(bench_layers.py --narrow); after them every other result file (other layer runs,
bench_kernels.py, soak.py, verify_report.py) gets its own section.  Nothing here is
typed by hand, so the page shows exactly the numbers of the result files, each with
its date and machine; rerun this script after a benchmark run.
"""
import glob
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
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"


def machine_line(doc):
    """Date, CPU, BLAS kernel, versions and threads of one result file."""
    m, t = doc["machine"], doc.get("threads", {})
    blas = m.get("blas") or f"OpenBLAS {m.get('openblas_core', '?')} kernels"
    forced = "".join(f"; {var}={m[var]}" for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                     if m.get(var))
    versions = ", ".join(f"{name} {m[key]}" for key, name in
                         (("python", "Python"), ("numpy", "NumPy"), ("torch", "PyTorch")) if key in m)
    threads = ", ".join(f"{lib} {count}" for lib, count in t.items())
    load = f"; load average {m['load']}" if m.get("load") else ""
    peak = doc.get("sgemm_peak")
    if isinstance(peak, dict):
        peak = peak.get("median_gflops")
    peak = f"; float32 sgemm peak {peak:.0f} GFLOP/s" if isinstance(peak, (int, float)) else ""
    return (f"{m['date']} on {m['cpu']} ({m['cores']} cores); BLAS {blas}{forced}; {versions}; "
            f"float32; threads {threads or '-'}{peak}{load}")


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
    """Forward+backward rows.  Results of the process-per-library benchmark carry each
    library's GFLOP/s and npfcn's share of the sgemm peak; older ones a limit ratio."""
    rows = [(doc, r) for doc in docs for r in doc["rows"] if r.get("pass") == "fwd+bwd"]
    new = any("peak_percent" in r for _, r in rows)
    if new:
        lines = ["| layer | N | npfcn ms | PyTorch ms | PyTorch/npfcn | npfcn GFLOP/s | "
                 "PyTorch GFLOP/s | % of sgemm peak | spread (npfcn) |", "| --- " * 9 + "|"]
    else:
        lines = ["| layer | N | npfcn ms | PyTorch ms | PyTorch/npfcn | npfcn GFLOP/s | "
                 "limit/npfcn | spread (npfcn) |", "| --- " * 8 + "|"]
    for doc, r in rows:
        cells = [r["layer"], fmt(r.get("N", doc.get("batch"))), fmt(r["ours_ms"]),
                 fmt(r["torch_ms"]), fmt(r["ratio"]), fmt(r.get("gflops"))]
        if new:
            cells += [fmt(r.get("torch_gflops")), fmt(r.get("peak_percent"), 0)]
        else:
            cells += [fmt(r.get("limit_ratio"))]
        cells.append(fmt(r["spread"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_table(layers, fcn):
    """The targets whose layers this run measured (a run of some shapes shows fewer)."""
    lines = ["| target | measured (PyTorch/npfcn) | met? |", "| --- | --- | --- |"]
    rows = [r for r in layers["rows"] if r.get("pass") == "fwd+bwd"]
    for label, prefixes, minimum in TARGETS:
        got = [(r["layer"].split()[0], r["ratio"]) for r in rows if r["layer"].startswith(prefixes)]
        if not got:
            continue
        low = min(ratio for _, ratio in got)
        shown = ", ".join(f"{name} {ratio:.2f}" for name, ratio in got)
        lines.append(f"| {label} | {shown} | {'yes' if low >= minimum else 'no'} |")
    full = next((r for r in fcn["rows"] if r.get("config") == "full"), None)
    if full is not None:
        ok = full["ratio"] >= 0.8 and full.get("mem_ratio", 99) <= 1.5
        lines.append(f"| FCN-8s step at full width >= 0.8, peak memory <= 1.5x | "
                     f"{full['ratio']:.2f}, memory {full.get('mem_ratio', float('nan')):.2f}x | "
                     f"{'yes' if ok else 'no'} |")
    return "\n".join(lines)


def generic_table(rows):
    """Any list of flat result rows: one column per key that holds a number or text."""
    keys = []
    for r in rows:
        for k, v in r.items():
            if k not in keys and (v is None or isinstance(v, (int, float, str))):
                keys.append(k)
    lines = ["| " + " | ".join(keys) + " |", "| --- " * len(keys) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


HEADER = """\
# Benchmarks

<!-- Generated: python benchmarks/summary.py > docs/benchmarks.md  (do not edit by hand) -->

This page is generated by `python benchmarks/summary.py > docs/benchmarks.md` from the
JSON files in `benchmarks/results/`; rerun it after a benchmark run. Each table names the
date and the CPU it was measured on. What the kernels do and the experiments behind
them are in [kernels.md](kernels.md).

## Running the benchmarks

`npfcn bench` runs a quick subset (a few minutes); `npfcn bench --full` runs everything, as
do the scripts themselves (each has `--help`): `python benchmarks/bench_kernels.py`
(im2col/col2im: C against the NumPy reference and a memcpy of the same bytes),
`python benchmarks/bench_layers.py` (layer shapes against PyTorch and the sgemm peak;
`--only TEXT`, `--reference` adds the pure-NumPy path, `--shared` times npfcn alone and in a
process that also runs PyTorch) and `python benchmarks/bench_fcn.py` (the whole training step
against the same FCN-8s written in PyTorch inside the script). Each writes a Markdown table
and a JSON file to `benchmarks/results/`. Run them as
`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_layers.py ...`, so
that OpenBLAS picks its kernels for the CPU it runs on (some machines set these variables to
force an older kernel choice).

## How they measure

Each library runs in a worker process of its own (no thread pools fighting over the
cores), under the same thread counts (OpenBLAS, npfcn's OpenMP kernels and PyTorch all at
2 by default, `--threads N`), with the same inputs; the parent asks them in turn (npfcn,
PyTorch, npfcn, ...) so that a burst of load from a neighbour hits both sides alike, and
reports the median of the runs with its spread ((max - min) / median). The convolutions'
GFLOP/s count direct-convolution arithmetic, so paths that multiply less (Winograd) can pass
the machine's sgemm rate, measured in the same run. Peak memory is the resident peak (VmHWM)
of a fresh process per library running two steps. Ratios are PyTorch time / npfcn time in
the same run (above 1: npfcn is faster); absolute times are comparable only between runs on
the same machine. Result files with a `limit/npfcn` column come from the earlier harness,
which timed both libraries in one process, taking turns, with a short pause before each run;
that column is the time of the bare GEMMs of an im2col design (or of a copy of the input,
for memory-bound layers) over npfcn's time.
"""

def all_results():
    """(name, document) for every results/*.json, sorted by name."""
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as handle:
            yield name, json.load(handle)


def kernels_table(doc):
    lines = ["| case | op | columns MiB | C ms | NumPy ms | memcpy ms | C GB/s | NumPy/C | "
             "memcpy/C | spread |", "| --- " * 10 + "|"]
    for r in doc["rows"]:
        lines.append(f"| {r['case']} | {r['op']} | {fmt(r['mib'])} | {fmt(r['c_ms'])} | "
                     f"{fmt(r['numpy_ms'])} | {fmt(r['copy_ms'])} | {fmt(r['gbs'])} | "
                     f"{fmt(r['numpy_over_c'])} | {fmt(r['copy_over_c'])} | {fmt(r['spread'])} |")
    return "\n".join(lines)


def soak_text(doc):
    return (f"{doc.get('date', 'undated')}: {doc['steps']} training steps of {doc['model']} "
            f"(width {doc['width']:g}, {doc['image_size']}x{doc['image_size']}, batch "
            f"{doc['batch_size']}) in {doc['seconds']} s; peak RSS {doc['early_peak_rss_mib']} MiB "
            f"over steps {doc['early_window'][0]}-{doc['early_window'][1]}, "
            f"{doc['late_peak_rss_mib']} MiB over steps {doc['late_window'][0]}-"
            f"{doc['late_window'][1]}: growth {doc['growth']:.2%} (tolerance "
            f"{doc['tolerance']:.0%}), {'passed' if doc['passed'] else 'FAILED'}.")


def verify_table(doc):
    kinds = list(doc["tolerances"])
    lines = [f"{doc['configs_per_layer']} random configurations per layer, seed {doc['seed']}, "
             f"backends {', '.join(doc['backends'])}, PyTorch {doc.get('torch', '-')}; worst "
             "relative error per layer (tolerances: "
             + ", ".join(f"{k} {v:g}" for k, v in doc["tolerances"].items()) + "):\n",
             "| layer | " + " | ".join(kinds) + " |", "| --- " * (len(kinds) + 1) + "|"]
    for layer, errors in doc["layers"].items():
        lines.append(f"| {layer} | " + " | ".join(
            "-" if errors.get(k) is None else f"{errors[k]:.1e}" for k in kinds) + " |")
    return "\n".join(lines)


def markdown_of(name):
    """The Markdown the benchmark script wrote beside its JSON (results/NAME.md), or None."""
    path = os.path.join(RESULTS, f"{name}.md")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def clock_note(name):
    """How the times of a layer run were taken, from the header its script wrote."""
    text = markdown_of(name) or ""
    return " Times are each process's CPU time (`--cpu-time`)." if "CPU time" in text.split("\n")[0] else ""


def demoted(markdown):
    """A script's own Markdown inside this page: its headings moved below this page's."""
    return "\n".join("###" + line if line.startswith("#") else line for line in markdown.splitlines())


def other_section(name, doc):
    """Markdown for one result file outside the headline, by the shape of its content."""
    title = f"### `results/{name}.json`\n"
    if "configs_per_layer" in doc:
        return title + "\nGradient and PyTorch-parity check (`benchmarks/verify_report.py`): " + verify_table(doc)
    if "early_peak_rss_mib" in doc:
        return title + "\nMemory soak (`benchmarks/soak.py`): " + soak_text(doc)
    rows = doc.get("rows") or []
    if rows and {"case", "op", "c_ms"} <= set(rows[0]):
        return (title + f"\nim2col/col2im (`benchmarks/bench_kernels.py`), measured "
                f"{machine_line(doc)}:\n\n" + kernels_table(doc))
    if rows and {"layer", "pass", "ours_ms", "torch_ms"} <= set(rows[0]):
        return (title + f"\nLayers, forward+backward (`benchmarks/bench_layers.py`, "
                f"{doc.get('repeats', '?')} repeats), measured {machine_line(doc)}."
                f"{clock_note(name)}\n\n" + layer_table(doc))
    if rows and "config" in rows[0] and "ours_s" in rows[0]:
        return title + f"\nWhole network, measured {machine_line(doc)}:\n\n" + network_table(doc)
    markdown = markdown_of(name)
    if markdown is not None:        # a format this page does not know: the script's own text
        return title + f"\nAs `results/{name}.md` has it:\n\n" + demoted(markdown)
    if rows:
        where = f", measured {machine_line(doc)}" if "machine" in doc else ""
        return title + f"\nAs recorded{where}:\n\n" + generic_table(rows)
    return title + "\n(no rows; keys " + ", ".join(doc) + ")"


def with_picture(name, text):
    """Add the result file's picture (results/NAME.png), when its script drew one."""
    if os.path.exists(os.path.join(RESULTS, f"{name}.png")):
        text += f"\n\n![{name}](../benchmarks/results/{name}.png)"
    return text


def result_date(doc):
    """The date a result file was measured ("YYYY-MM-DD HH:MM UTC" sorts as text); "" if none."""
    return str(doc.get("machine", {}).get("date") or doc.get("date") or "")


def same_format(a, b):
    """True when two layer result files have the same columns (both from the
    process-per-library benchmark, or both from the older one)."""
    def new(doc):
        return any("peak_percent" in r for r in doc["rows"])
    return new(a) == new(b)


def main():
    fcn, layers, narrow = load("fcn"), load("layers"), load("layers_narrow")
    if fcn is None or layers is None:
        sys.exit("run benchmarks/bench_fcn.py and benchmarks/bench_layers.py first")
    headline = {"fcn", "layers"}
    if narrow is not None and same_format(layers, narrow):
        headline.add("layers_narrow")
    print(HEADER)
    print("## Headline: FCN-8s and its layers against PyTorch\n")
    print("**Whole network** (one training step: forward, loss, backward, SGD with momentum "
          "and weight decay; median of alternated steps; peak RSS of each library in its own "
          f"process), measured {machine_line(fcn)}:\n")
    print(network_table(fcn) + "\n")
    print("**Layers** (forward+backward; the columns are explained under \"How they measure\"; "
          "the `w1/16` rows are the default training run's convolutions), measured "
          f"{machine_line(layers)}.{clock_note('layers')}\n")
    print(layer_table(*(load(n) for n in ("layers", "layers_narrow") if n in headline)) + "\n")
    print("**Targets** (PyTorch time / npfcn time in the same run):\n")
    print(target_table(layers, fcn) + "\n")
    print("## Every other result file, newest first\n")
    for name, doc in sorted(all_results(), key=lambda item: result_date(item[1]), reverse=True):
        if name not in headline:
            print(with_picture(name, other_section(name, doc)) + "\n")


if __name__ == "__main__":
    main()
