"""A few data-parallel training steps and a split validation, run by tests/test_distributed.py
in one process and as ``mpiexec -n 2 python tests/mpi_steps.py OUT.npz``.

Every rank builds the same tiny FCN-8s (weights moved off their start the same way), takes
3 SGD steps on fixed batches (sizes 4, 3 and 1: even, uneven and one rank idle) through
``DataParallel``, and scores a small validation set with ``evaluate_split``.  Rank 0
writes the weights and the confusion matrix, for float32 and float64, to OUT.npz.
"""
import sys

import numpy as np

from npfcn.data import synthetic_splits
from npfcn.models import build_model
from npfcn.optim import SGD
from npfcn.train.distributed import DataParallel, evaluate_split, join_world

BATCH_SIZES = (4, 3, 1)
CLASS_WEIGHT = np.array([0.4, 1.0, 2.5])


def perturbed_model(dtype):
    model = build_model("fcn8s", num_classes=3, width=1 / 32, dtype=dtype, learn_upsampling=True,
                        dropout=0.0, seed=1)
    rng = np.random.default_rng(5)
    for value in model.params.values():
        value += (0.05 * rng.standard_normal(value.shape)).astype(value.dtype)
    return model


def batch(n, step):
    rng = np.random.default_rng([step, n])
    x = rng.standard_normal((n, 3, 20, 22))
    y = rng.integers(0, 3, (n, 20, 22))
    y[0, :4] = 255                                   # some ignored pixels
    return x, y


def run(world, dtype):
    """-> ({name: weights after the steps}, confusion matrix, [losses]) on ``world``."""
    model = perturbed_model(dtype)
    parallel = DataParallel(model, world, seed=0, lovasz=0.5)
    optimizer = SGD(model, lr=0.05, momentum=0.9)
    losses = []
    for step, size in enumerate(BATCH_SIZES):
        x, y = batch(size, step)
        loss, _ = parallel.forward_backward(x.astype(dtype), y, CLASS_WEIGHT, step)
        losses.append(loss)
        optimizer.step()
    _, val = synthetic_splits(train_size=1, val_size=5, image_size=24, seed=3)
    model3 = build_model("fcn8s", num_classes=len(val.class_names), width=1 / 32, dtype=dtype, seed=2)
    hist = evaluate_split(world, model3, val, batch_size=2).hist
    return {name: value.copy() for name, value in model.params.items()}, hist, losses


def main(path):
    world = join_world()
    arrays = {}
    for dtype in (np.float32, np.float64):
        weights, hist, losses = run(world, dtype)
        tag = np.dtype(dtype).name
        arrays.update({f"{tag}/{name}": value for name, value in weights.items()})
        arrays[f"{tag}/hist"] = hist
        arrays[f"{tag}/losses"] = np.array(losses)
    arrays["size"] = np.array(world.size)
    if world.is_root:
        np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
