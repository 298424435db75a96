"""A run's progress beyond its weights: counters, random streams, history.

Determinism: everything random comes from Generators seeded by ``config.seed``: the
model's initial weights and its dropout masks (``model.rng``) and the data stream
(shuffling and augmentation, ``data_rng``).  A checkpoint stores both Generators'
states, the optimizer state and the position inside the epoch, so resuming replays
exactly the batches and masks the uninterrupted run would have drawn: same seed, same
weights, bit for bit.
"""
import numpy as np


def data_rng(seed):
    """The Generator behind shuffling and augmentation; separate from the model's."""
    return np.random.default_rng([int(seed), 1])


def rng_state(rng):
    return rng.bit_generator.state


def set_rng_state(rng, state):
    rng.bit_generator.state = state


def start_progress(trainer, data_state, dropout_state):
    """Set a fresh run's progress on ``trainer``: completed epochs, steps into the current
    one and that epoch's running sums, the per-epoch history, the best epoch so far.

    data_state: the data Generator's state when the current epoch began (a resume replays
    the epoch's stream from there, skipping the steps already done).
    dropout_state: the dropout Generator's state after the last completed step (a step
    interrupted halfway may already have drawn masks from it).
    """
    trainer.epoch, trainer.step_in_epoch, trainer.global_step = 0, 0, 0
    trainer.epoch_start_rng = data_state
    trainer.dropout_state = dropout_state
    trainer.running = {"loss_sum": 0.0, "batches": 0, "images": 0}
    trainer.history, trainer.best_mean_iou, trainer.best_epoch = [], -1.0, 0


def progress_meta(trainer):
    """The checkpoint metadata entries that describe ``trainer``'s progress."""
    return {"epoch": trainer.epoch, "step_in_epoch": trainer.step_in_epoch,
            "global_step": trainer.global_step,
            "rng": {"dropout": trainer.dropout_state, "data": trainer.epoch_start_rng},
            "running": dict(trainer.running), "history": trainer.history,
            "best_mean_iou": trainer.best_mean_iou, "best_epoch": trainer.best_epoch}


def restore_progress(trainer, meta):
    """Set ``trainer``'s progress and random streams from a checkpoint's metadata."""
    start_progress(trainer, meta["rng"]["data"], meta["rng"]["dropout"])
    set_rng_state(trainer.model.rng, trainer.dropout_state)
    set_rng_state(trainer.data_rng, trainer.epoch_start_rng)
    trainer.epoch = int(meta["epoch"])
    trainer.step_in_epoch = int(meta["step_in_epoch"])
    trainer.global_step = int(meta["global_step"])
    trainer.running = dict(meta["running"])
    trainer.history = list(meta.get("history", []))
    trainer.best_mean_iou = float(meta.get("best_mean_iou", -1.0))
    trainer.best_epoch = int(meta.get("best_epoch", 0))
