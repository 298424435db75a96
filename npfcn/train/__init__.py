"""Training FCNs: configuration, the loop, run folders, checkpoints.

    from npfcn.train import TrainConfig, train
    result = train(TrainConfig(epochs=2, width=0.0625))   # writes runs/<name>/

Read in this order:

    config.py        TrainConfig: every setting of a run, validated
    setup.py         what a run is built from: datasets, augmentation, class weights, model
    optimization.py  the optimizer, the learning-rate schedule, gradient clipping
    loop.py          Trainer: steps, epochs, validation, saving; ``train()``
    distributed.py   data-parallel steps on MPI: every process takes a slice of each batch
    launch.py        how many processes pay here, and mpiexec to start them
    state.py         counters and random streams a checkpoint stores to resume exactly
    stopping.py      Ctrl-C and divergence
    runs.py          run folders, ``latest``, metrics.json, pictures
    checkpoint.py    the checkpoint file: versioned, checksummed, written atomically
"""
from .checkpoint import (Checkpoint, CheckpointError, check_compatible, load_checkpoint, load_into,
                         load_model, save_checkpoint)
from .config import CLASS_WEIGHTING_CHOICES, IGNORE_INDEX, INIT_CHOICES, SYMMETRY_CHOICES, TrainConfig
from .distributed import DataParallel, World, join_world, shard_bounds
from .launch import process_count
from .loop import RunResult, Trainer, train
from .optimization import build_optimizer, build_schedule, clip_gradients
from .runs import BEST, LAST, new_run_dir, point_latest, resolve_checkpoint
from .setup import build_datasets, build_model, build_transform, check_dataset, class_weights, \
    initialise
from .state import data_rng, rng_state, set_rng_state
from .stopping import StopRequest, TrainingDiverged, TrainingInterrupted

__all__ = [
    "BEST", "CLASS_WEIGHTING_CHOICES", "Checkpoint", "CheckpointError", "IGNORE_INDEX",
    "DataParallel", "INIT_CHOICES", "LAST", "RunResult", "SYMMETRY_CHOICES", "StopRequest", "TrainConfig",
    "Trainer", "TrainingDiverged", "TrainingInterrupted", "build_datasets", "build_model",
    "build_optimizer", "build_schedule", "build_transform", "check_compatible", "check_dataset",
    "class_weights", "clip_gradients", "data_rng", "initialise", "load_checkpoint", "load_into",
    "load_model", "new_run_dir", "point_latest", "process_count", "resolve_checkpoint",
    "rng_state", "save_checkpoint", "set_rng_state", "shard_bounds", "train", "World", "join_world",
]
