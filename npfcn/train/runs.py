"""Run folders: where a run writes, the ``latest`` pointer, metrics.json and the pictures.

A run folder ``<output>/<name>/`` holds

    last.npz      the newest state (every epoch, and on Ctrl-C): resume from it
    best.npz      the state with the best validation mean IoU so far
    metrics.json  per-epoch and final metrics (loss, pixel/mean accuracy, mean IoU, fwIoU, per class)
    curves.png    loss and mean IoU per epoch
    samples.png   image / truth / prediction for a few validation images

and ``<output>/latest`` points at the newest run folder (a relative symlink; a
one-line text file naming the folder where symlinks are not available).
"""
import json
import math
import os
import time

import numpy as np

LAST, BEST = "last.npz", "best.npz"


def new_run_dir(output, name, model):
    """Create ``output/name`` (a fresh timestamped name when ``name`` is empty)."""
    if not name:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name, suffix = f"{model}-{stamp}", 1
        while os.path.exists(os.path.join(output, name)):
            suffix += 1
            name = f"{model}-{stamp}-{suffix}"
    run_dir = os.path.join(output, name)
    if os.path.exists(os.path.join(run_dir, LAST)):
        raise ValueError(f"run folder {run_dir} already holds a checkpoint; continue it with "
                         f"--resume {run_dir} or choose another --name")
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


def point_latest(output, run_dir):
    """Make ``output/latest`` point at ``run_dir``: a relative symlink, swapped atomically;
    where symlinks are not possible, a one-line text file naming the folder."""
    link = os.path.join(output, "latest")
    target = os.path.relpath(run_dir, output)
    tmp = os.path.join(output, f".latest.tmp-{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if os.path.isdir(link) and not os.path.islink(link):
            return  # a real folder named "latest" (a run called so): leave it alone
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(target + "\n")
        os.replace(tmp, link)


def resolve_checkpoint(path, prefer=BEST):
    """A checkpoint file from a file, a run folder (its ``prefer`` checkpoint, else the
    other one) or the ``latest`` pointer (symlink or text file)."""
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.getsize(path) < 4096 and not _is_zip(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            pointed = os.path.join(os.path.dirname(path), handle.read().strip())
        if os.path.isdir(pointed):
            path = pointed
    if os.path.isdir(path):
        for name in (prefer, LAST if prefer == BEST else BEST):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"no checkpoint ({BEST} or {LAST}) in folder {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _is_zip(path):
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def write_metrics(run_dir, document):
    """Write ``document`` to ``run_dir/metrics.json`` atomically (a temporary file renamed
    over it), NumPy numbers as Python numbers and NaN as null."""
    path = os.path.join(run_dir, "metrics.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(jsonable(document), handle, indent=2)
    os.replace(tmp, path)


def write_pictures(run_dir, model, val_set, history, count, preprocessing, score_offset):
    """samples.png (image / truth / prediction of the first ``count`` validation images)
    and curves.png (loss and mean IoU per epoch of ``history``)."""
    from ..evaluate import sample_grid
    from ..viz import plot_curves, save_png

    count = min(count, len(val_set))
    if count:
        grid = sample_grid(model, val_set, range(count), preprocessing, score_offset)
        save_png(os.path.join(run_dir, "samples.png"), grid)
    plot_curves(history, os.path.join(run_dir, "curves.png"))


def jsonable(value):
    """NumPy scalars -> Python numbers, NaN -> None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
