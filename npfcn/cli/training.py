"""``npfcn train``: its flags and the command (one process, or MPI ranks that share every batch)."""
import argparse
import os
import sys

from .options import DEFAULT_RUNS, add_threads_flag, apply_threads

# CLI flag -> TrainConfig field.  Flags default to None so that "not given" is visible
# (a resumed run takes its settings from the checkpoint, not from the defaults).
TRAIN_FLAGS = {
    "model": "model", "width": "width", "data": "data", "epochs": "epochs",
    "batch_size": "batch_size", "crop_size": "crop_size", "optimizer": "optimizer", "lr": "lr",
    "schedule": "schedule", "warmup": "warmup", "weight_decay": "weight_decay", "momentum": "momentum",
    "seed": "seed", "output": "output", "name": "name", "num_train": "num_train",
    "num_val": "num_val", "image_size": "image_size", "learn_upsampling": "learn_upsampling",
    "dropout": "dropout", "preprocessing": "preprocessing",
    "class_weighting": "class_weighting", "init": "init",
    "anneal_class_weights": "anneal_class_weights", "lars": "lars",
    "lovasz": "lovasz", "symmetries": "symmetries", "scale": "scale",
}


def add_train_parser(subparsers):
    from ..models import MODEL_NAMES
    from ..train import INIT_CHOICES, SYMMETRY_CHOICES, TrainConfig
    from ..train.config import CLASS_WEIGHTING_CHOICES

    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train an FCN (default: a narrow FCN-8s on the synthetic shapes)",
        description="Train an FCN. With no arguments: a narrow FCN-8s on the built-in synthetic "
                    "shapes (measured times: docs/training-notes.md). Writes OUTPUT/NAME/ with checkpoints, "
                    "metrics.json, curves.png and samples.png; OUTPUT/latest points at it.")
    p.add_argument("--model", choices=MODEL_NAMES, help=f"architecture (default {d.model})")
    p.add_argument("--width", type=float, help=f"channel width multiplier (default {d.width:g}; 1 = the paper's)")
    p.add_argument("--data", help="'synthetic', 'camvid:DIR' or a dataset folder (VOC layout, "
                   "CamVid layout or images/ + masks/)")
    p.add_argument("--scale", type=float, help="dataset folders: resize images (bilinear) and "
                   f"masks (nearest) by this factor (default {d.scale:g})")
    p.add_argument("--epochs", type=int, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--crop-size", type=int, help="random square crops of this size (default: none)")
    p.add_argument("--symmetries", choices=SYMMETRY_CHOICES,
                   help="random symmetries of the training images: all (rotations by 90 degrees "
                        "and mirrors), mirror (left-right), none; auto: all for the synthetic "
                        f"shapes, mirror for a folder (default {d.symmetries})")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help=f"default {d.optimizer}")
    p.add_argument("--lr", type=float, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--schedule", choices=("poly", "constant"), help=f"learning-rate schedule (default {d.schedule})")
    p.add_argument("--warmup", type=float, metavar="FRACTION",
                   help=f"raise the learning rate linearly over this fraction of the run's steps "
                        f"(default {d.warmup:g})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum:g})")
    p.add_argument("--lars", type=float, metavar="TRUST",
                   help=f"layer-wise adaptive rate scaling for SGD: each encoder layer steps by "
                        f"lr*TRUST of its weights' norm; 0: off (default {d.lars:g}; "
                        f"SGD only, as --momentum)")
    p.add_argument("--weight-decay", type=float, help=f"default {d.weight_decay:g}")
    p.add_argument("--dropout", type=float, help=f"dropout after fc6/fc7 (default {d.dropout:g})")
    p.add_argument("--learn-upsampling", action=argparse.BooleanOptionalAction, default=None,
                   help="learn the transposed convolutions, initialised bilinear (default "
                        f"{'on' if d.learn_upsampling else 'off: frozen bilinear'})")
    p.add_argument("--class-weighting", choices=CLASS_WEIGHTING_CHOICES,
                   help=f"loss weights per class (default {d.class_weighting}: 1/sqrt(frequency))")
    p.add_argument("--lovasz", type=float, metavar="WEIGHT",
                   help=f"add WEIGHT x the Lovász-softmax loss (a surrogate of 1 - IoU) to the "
                        f"cross-entropy; 0: cross-entropy alone (default {d.lovasz:g})")
    p.add_argument("--anneal-class-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="fade the class weights to 1 over the run (default "
                        f"{'on' if d.anneal_class_weights else 'off'})")
    p.add_argument("--init", choices=INIT_CHOICES,
                   help=f"initialisation (default {d.init}): he = He normal; lsuv = He normal "
                        "rescaled to unit variance on data; orthogonal-lsuv = orthonormal, rescaled")
    p.add_argument("--preprocessing", choices=("unit", "torchvision", "caffe"),
                   help=f"input normalisation (default {d.preprocessing})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--num-train", type=int, help=f"training images: synthetic ones drawn, at most "
                   f"this many of a folder (default {d.num_train})")
    p.add_argument("--num-val", type=int, help=f"validation images: synthetic ones drawn, at most "
                   f"this many of a folder (default {d.num_val})")
    p.add_argument("--image-size", type=int, help=f"synthetic image side (default {d.image_size})")
    p.add_argument("--output", help=f"runs folder (default {d.output})")
    p.add_argument("--name", help="run name (default: <model>-<UTC time>)")
    add_threads_flag(p)
    p.add_argument("--procs", type=int, metavar="N",
                   help="processes (MPI ranks) that share every batch, the threads divided "
                        "among them (default: one per core, at most one per image of a batch; "
                        "needs pip install 'npfcn[mpi]'; other counts give the same run up to "
                        "float rounding)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="the old name of --procs (goes in the next release)")
    p.add_argument("--resume", nargs="?", const="", metavar="RUN",
                   help="continue a run: a run folder or checkpoint (default: OUTPUT/NAME or "
                        "OUTPUT/latest); --epochs may extend it")
    p.set_defaults(handler=cmd_train)




def cmd_train(args):
    from ..allocator import keep_freed_memory
    from ..train import TrainConfig, TrainingDiverged, TrainingInterrupted, train
    from ..train.distributed import join_world, launched_by_mpi
    from ..train.launch import LaunchFailed, mark_started, plan, run_ranks, saved_batch_size
    from ..models.registry import check_fits_in_memory
    from ..train.setup import open_checked_datasets

    apply_threads(args)
    keep_freed_memory()     # each step's arrays reuse the last step's pages (npfcn/allocator.py)
    procs = args.procs
    if args.replicas is not None:
        print("npfcn: --replicas is now --procs (MPI processes); --replicas goes in the next "
              "release", file=sys.stderr)
        procs = args.replicas if procs is None else procs
    if procs is not None and procs < 0:
        raise ValueError(f"--procs must be >= 0 (0: one per core), got {procs}")
    given = {TRAIN_FLAGS[k]: v for k, v in vars(args).items() if k in TRAIN_FLAGS and v is not None}
    target = None
    if args.resume is not None:
        ignored = sorted(set(given) - {"epochs", "output", "name"})
        if ignored:
            raise ValueError(f"--resume continues a run with its saved settings; drop "
                             f"{', '.join('--' + k.replace('_', '-') for k in ignored)}")
        target = args.resume or os.path.join(given.get("output", DEFAULT_RUNS),
                                             given.get("name") or "latest")
    if not launched_by_mpi():
        config = None if target is not None else TrainConfig(**given).validate()
        count = plan(procs, saved_batch_size(target) if config is None else config.batch_size)
        if count > 1:
            # What can refuse the run refuses it here, once, with its one-line error,
            # before any rank starts: bad data and a model too large for this machine.
            if config is not None:
                train_set, _ = open_checked_datasets(config, sys.stderr,
                                                     read_all=config.data != "synthetic")
                check_fits_in_memory(config.model, len(train_set.class_names), config.width)
            try:
                return run_ranks(count, getattr(args, "argv", None) or sys.argv[1:],
                                 data_checked=config is not None)
            except LaunchFailed as exc:
                if procs:
                    raise ValueError(f"{exc}; --procs 1 trains without MPI") from None
                print(f"npfcn: {exc}; training in one process", file=sys.stderr)
    elif join_world().is_root:
        mark_started()
    try:
        if target is not None:
            train(resume=target, epochs=given.get("epochs"))
        else:
            train(TrainConfig(**given))
    except (TrainingInterrupted, TrainingDiverged) as exc:
        world = join_world()
        if world.size > 1 and isinstance(exc, TrainingInterrupted):
            # Every rank stopped cleanly: exit 0, so MPI reports no failed process (the
            # launcher that passed the Ctrl-C on returns 130).  Rank 0 says where it saved.
            if world.is_root:
                print(f"npfcn: {exc}", file=sys.stderr)
            return 0
        if world.is_root:
            raise
        return 1            # as rank 0, which says why
    return 0


