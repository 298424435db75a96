"""The ``npfcn`` command line: train, eval, predict, info, import-vgg16, gradcheck, bench.

``main(argv)`` returns the exit code: 0 on success, 1 on bad input (one line
``npfcn: error: <message>`` on stderr, no traceback), 2 on a usage error
(argparse), 130 after Ctrl-C.
"""
import argparse
import json
import os
import sys

import numpy as np

from . import __version__

DEFAULT_RUNS = "runs"
DEFAULT_CHECKPOINT = os.path.join(DEFAULT_RUNS, "latest")


# --- train ----------------------------------------------------------------------------

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
    from .models import MODEL_NAMES
    from .train import INIT_CHOICES, SYMMETRY_CHOICES, TrainConfig
    from .train.config import CLASS_WEIGHTING_CHOICES

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


def add_threads_flag(parser):
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for BLAS and the C kernel (default: all cores; use 1 when "
                             "other programs keep the CPU busy)")


def apply_threads(args):
    if getattr(args, "threads", None) is not None:
        from .sysinfo import set_threads

        set_threads(args.threads)


def cmd_train(args):
    from .train import TrainConfig, TrainingDiverged, TrainingInterrupted, train
    from .train.distributed import join_world, launched_by_mpi
    from .train.launch import LaunchFailed, mark_started, plan, run_ranks, saved_batch_size
    from .models.registry import check_fits_in_memory
    from .train.setup import open_checked_datasets

    apply_threads(args)
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


# --- eval -----------------------------------------------------------------------------

def add_flip_flag(parser):
    parser.add_argument("--flip", action="store_true",
                        help="average the scores of each image and its mirror image (twice "
                             "the time; smoother, usually better masks)")


def add_max_memory_flag(parser):
    from .tiling import DEFAULT_MAX_MEMORY, format_bytes, parse_bytes

    def size(text):
        try:
            return parse_bytes(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument("--max-memory", type=size, default=DEFAULT_MAX_MEMORY, metavar="SIZE",
                        help="memory one forward pass may use, e.g. 800M or 2G; larger images are "
                             "predicted in overlapping tiles with the same result (default "
                             f"{format_bytes(DEFAULT_MAX_MEMORY)}; the picture itself comes on top)")


def add_eval_parser(subparsers):
    p = subparsers.add_parser(
        "eval", help="score a checkpoint: per-class IoU, pixel/mean accuracy, mean IoU, fwIoU",
        description="Evaluate a checkpoint on a dataset's validation split. Prints the per-class "
                    "IoU table and the summary; writes eval.json and confusion.png.")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="checkpoint file or run folder (default runs/latest: its best.npz)")
    p.add_argument("--data", help="'synthetic' or a dataset folder (default: the training data)")
    p.add_argument("--split", default="val", help="dataset split (default val)")
    p.add_argument("--num-val", type=int, help="synthetic: number of images (default: as trained); "
                   "a folder: at most this many (default: all)")
    p.add_argument("--scale", type=float, help="dataset folders: resize images and masks by this "
                   "factor (default: as trained)")
    p.add_argument("--batch-size", type=int, default=8)
    add_flip_flag(p)
    add_max_memory_flag(p)
    p.add_argument("-o", "--output", help="folder for eval.json and confusion.png "
                                          "(default: <run folder>/eval)")
    add_threads_flag(p)
    p.set_defaults(handler=cmd_eval)


def cmd_eval(args):
    from .checkpoint import load_checkpoint, load_model
    from .evaluate import evaluate, format_table
    from .progress import ProgressBar
    from .train import resolve_checkpoint
    from .viz import confusion_matrix_image

    apply_threads(args)
    path = resolve_checkpoint(args.checkpoint)
    checkpoint = load_checkpoint(path)
    model = load_model(checkpoint)
    meta = checkpoint.meta
    trained = (meta.get("config") or {}).get("train") or {}
    preprocessing = meta.get("preprocessing", "unit")
    dataset = _eval_dataset(args, trained)
    class_names = meta.get("class_names") or list(dataset.class_names)
    if len(dataset.class_names) != model.num_classes:
        raise ValueError(f"{path} predicts {model.num_classes} classes but the dataset "
                         f"{args.data or trained.get('data', 'synthetic')} has {len(dataset.class_names)}")
    batch_size = args.batch_size if (args.data or trained.get("data", "synthetic")) == "synthetic" else 1
    bar = ProgressBar(-(-len(dataset) // batch_size), "evaluating")
    result = evaluate(model, dataset, batch_size=batch_size, preprocessing=preprocessing,
                      class_names=class_names, progress=lambda done, n: bar.update(done, n),
                      score_offset=meta.get("score_offset"), flip=args.flip,
                      max_memory=args.max_memory, boundary=True)
    bar.close()
    print(f"{path}: {len(dataset)} images")
    print("\n".join(format_table(result.metrics)))
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(path)), "eval")
    os.makedirs(output, exist_ok=True)
    document = {"checkpoint": os.path.abspath(path), "images": len(dataset), "loss": result.loss,
                **result.metrics, "confusion_matrix": result.hist.tolist(), "class_names": class_names}
    with open(os.path.join(output, "eval.json"), "w", encoding="utf-8") as handle:
        json.dump(_nan_to_none(document), handle, indent=2)
    confusion_matrix_image(result.hist, class_names, os.path.join(output, "confusion.png"))
    print(f"wrote {os.path.join(output, 'eval.json')} and {os.path.join(output, 'confusion.png')}")
    return 0


def _eval_dataset(args, trained):
    data = args.data or trained.get("data", "synthetic")
    if data == "synthetic":
        from .data import SyntheticShapes

        return SyntheticShapes(args.num_val or trained.get("num_val", 100), split=args.split,
                               seed=trained.get("data_seed", 0),
                               image_size=trained.get("image_size", 64),
                               **trained.get("synthetic_options", {}))
    from .data import open_dataset

    dataset = open_dataset(data, args.split)
    if args.num_val:
        dataset.limited(args.num_val)
    return dataset.rescaled(args.scale or trained.get("scale", 1.0))


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --- predict --------------------------------------------------------------------------

def add_predict_parser(subparsers):
    p = subparsers.add_parser(
        "predict", help="segment images: colourised mask + overlay PNG per input",
        description="Segment images of any size and format Pillow reads. Writes "
                    "<stem>_mask.png and <stem>_overlay.png per input into OUT.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="checkpoint file or run folder (default runs/latest: its best.npz)")
    p.add_argument("-o", "--output", default="predictions", help="output folder (default predictions)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default 0.5)")
    add_flip_flag(p)
    add_max_memory_flag(p)
    add_threads_flag(p)
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args):
    from .predict import predict_files
    from .train import resolve_checkpoint

    apply_threads(args)
    path = resolve_checkpoint(args.checkpoint)
    for source, mask_path, overlay_path in predict_files(path, args.images, args.output, args.alpha,
                                                         flip=args.flip, max_memory=args.max_memory):
        print(f"{source} -> {mask_path}, {overlay_path}")
    return 0


# --- info -----------------------------------------------------------------------------

def add_info_parser(subparsers):
    p = subparsers.add_parser("info", help="version, kernel backend, BLAS and thread counts")
    p.set_defaults(handler=cmd_info)


def cmd_info(args):
    from .sysinfo import info
    from .train.launch import describe_mpi

    details = info()
    details["mpi"] = describe_mpi()
    width = max(len(k) for k in details)
    for key, value in details.items():
        print(f"{key:<{width}}  {value if value is not None else 'unknown'}")
    return 0


# --- import-vgg16 ---------------------------------------------------------------------

def add_import_parser(subparsers):
    p = subparsers.add_parser(
        "import-vgg16", help="turn torchvision-layout VGG16 weights into an FCN checkpoint",
        description="Convert VGG16 weights in torchvision's layout (features.N.*, classifier.0/3) "
                    "from a .npz (or a .pth when PyTorch is installed) into an FCN checkpoint "
                    "that records the preprocessing the weights expect.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.npz)")
    p.add_argument("--model", choices=("fcn8s", "fcn16s", "fcn32s", "segnet"), default="fcn8s",
                   help="segnet: VGG16's convolutions fill its encoder (default fcn8s)")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--preprocessing", choices=("torchvision", "caffe"), default="torchvision",
                   help="input normalisation the weights were trained with (default torchvision)")
    p.add_argument("--width", type=float, default=1.0,
                   help="channel width of the VGG16 in FILE (default 1: the real VGG16)")
    p.set_defaults(handler=cmd_import_vgg16)


def cmd_import_vgg16(args):
    from .checkpoint import save_checkpoint
    from .models.vgg_import import load_weights_file, vgg16_to_fcn

    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be positive, got {args.num_classes}")
    state = load_weights_file(args.file)
    if args.model == "segnet":
        from .models.segnet import vgg16_to_segnet

        model = vgg16_to_segnet(state, num_classes=args.num_classes, width=args.width)
    else:
        model = vgg16_to_fcn(state, model=args.model, num_classes=args.num_classes, width=args.width)
    class_names = _default_class_names(args.num_classes)
    save_checkpoint(args.output, model, meta={
        "config": {"model": dict(model.config)}, "class_names": class_names,
        "preprocessing": args.preprocessing, "source": os.path.abspath(args.file)})
    learned = sum(model.params[n].size for n in model.trainable)
    print(f"wrote {args.output}: {args.model}, {args.num_classes} classes, {learned:,} learned "
          f"parameters, preprocessing {args.preprocessing!r} (score layers are untrained)")
    return 0


def _default_class_names(num_classes):
    from .data import VOC_CLASSES

    if len(VOC_CLASSES) == num_classes:
        return list(VOC_CLASSES)
    return [f"class{i}" for i in range(num_classes)]


# --- gradcheck ------------------------------------------------------------------------

GRADCHECK_LAYERS = ("conv2d", "conv_transpose2d", "maxpool", "unpool", "relu", "dropout",
                    "crop", "add", "cross_entropy", "lovasz")


def add_gradcheck_parser(subparsers):
    p = subparsers.add_parser(
        "gradcheck", help="numerical vs analytic gradients of one layer, per tensor",
        description="Build a small float64 layer, compare its backward pass with central "
                    "differences and print the worst relative error per tensor. Exit code 1 "
                    "if any error exceeds --tol.")
    p.add_argument("layer", choices=GRADCHECK_LAYERS)
    p.add_argument("--kernel-size", type=int, help="default 3 (convolutions), 2 (pooling)")
    p.add_argument("--stride", type=int, help="default 1 (convolutions), the kernel size (pooling)")
    p.add_argument("--padding", type=int, default=0)
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument("--output-padding", type=int, default=0, help="conv_transpose2d only")
    p.add_argument("--ceil-mode", action="store_true", help="maxpool only")
    p.add_argument("--offset", type=int, default=1, help="crop only")
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--size", type=int, default=5, help="input height and width (default 5)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-6, help="largest accepted relative error")
    p.set_defaults(handler=cmd_gradcheck)


def gradcheck_case(args):
    """(module, inputs) of a small float64 instance of ``args.layer``."""
    from . import layers
    from .losses import CrossEntropyLoss
    from .lovasz import LovaszSoftmaxLoss

    for key in ("channels", "size", "batch"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key} must be positive, got {getattr(args, key)}")
    rng = np.random.default_rng(args.seed)
    f64 = np.float64
    n, c, s = args.batch, args.channels, args.size
    x = rng.standard_normal((n, c, s, s))
    kind = args.layer
    if kind in ("conv2d", "conv_transpose2d"):
        # "is None", not "or": an explicit --stride 0 must reach the layer's check.
        k = 3 if args.kernel_size is None else args.kernel_size
        stride = 1 if args.stride is None else args.stride
        if kind == "conv2d":
            module = layers.Conv2d(c, c + 1, k, stride, args.padding, args.dilation,
                                   dtype=f64, rng=args.seed)
        else:
            module = layers.ConvTranspose2d(c, c + 1, k, stride, args.padding, args.output_padding,
                                            args.dilation, dtype=f64, rng=args.seed)
        return module, (x,)
    if kind in ("maxpool", "unpool"):
        k = 2 if args.kernel_size is None else args.kernel_size
        stride = k if args.stride is None else args.stride
        # Distinct values at least 0.01 apart: a tie (or a near tie closer than the
        # finite-difference step) would make the numerical gradient meaningless.
        distinct = (rng.permutation(n * c * s * s).reshape(n, c, s, s) * 0.01).astype(f64)
        if kind == "maxpool":
            return layers.MaxPool2d(k, stride, args.padding, args.dilation, args.ceil_mode), (distinct,)
        if stride < k:
            raise ValueError(f"unpool gradcheck needs --stride >= --kernel-size: overlapping "
                             f"windows can pick one index twice, and unpooling keeps only one "
                             f"of the two values (no gradient for the other)")
        pooled, indices = layers.MaxPool2d(k, stride, args.padding, return_indices=True).forward(distinct)
        module = layers.MaxUnpool2d(k, stride, args.padding)
        return module, (rng.standard_normal(pooled.shape), indices, (s, s))
    if kind == "relu":
        return layers.ReLU(), (np.sign(x) * (0.1 + np.abs(x)),)   # keep away from the kink at 0
    if kind == "dropout":
        return layers.Dropout(0.5, rng=args.seed), (x,)
    if kind == "crop":
        size = s - args.offset
        if size < 1:
            raise ValueError(f"--offset {args.offset} leaves nothing of a {s}x{s} input")
        return layers.Crop(args.offset), (x, (size, size))
    if kind == "add":
        return layers.Add(), (x, rng.standard_normal(x.shape))
    # cross_entropy, lovasz: logits over c + 1 classes, some pixels ignored (255).  The
    # Lovász loss is piecewise linear in the sorted errors: random logits keep the
    # difference quotients away from its kinks (ties between two pixels' errors).
    classes = c + 1
    target = rng.integers(0, classes, (n, s, s))
    target[rng.random((n, s, s)) < 0.2] = 255
    loss = LovaszSoftmaxLoss if kind == "lovasz" else CrossEntropyLoss
    return loss(ignore_index=255), (rng.standard_normal((n, classes, s, s)), target)


def cmd_gradcheck(args):
    from .gradcheck import gradcheck

    module, inputs = gradcheck_case(args)
    shapes = ", ".join(str(a.shape) for a in inputs if isinstance(a, np.ndarray))
    print(f"gradcheck {args.layer} ({type(module).__name__}, float64, inputs {shapes})")
    report = gradcheck(module, inputs)
    print(report)
    if report.passed(args.tol):
        print(f"PASS: worst relative error {report.max_error:.3e} <= {args.tol:g}")
        return 0
    print(f"FAIL: worst relative error {report.max_error:.3e} > {args.tol:g}")
    return 1


# --- bench ----------------------------------------------------------------------------

def add_bench_parser(subparsers):
    p = subparsers.add_parser("bench", help="layer and model throughput (npfcn.bench)",
                              add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args):
    import importlib
    import importlib.util

    if importlib.util.find_spec("npfcn.bench") is None:
        raise ValueError("the benchmark module npfcn.bench is not available in this installation")
    bench = importlib.import_module("npfcn.bench")
    return int(bench.main(args.bench_args) or 0)


# --- main -----------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog="npfcn", description="Fully convolutional networks for semantic segmentation in NumPy.")
    parser.add_argument("--version", action="version", version=f"npfcn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in (add_train_parser, add_eval_parser, add_predict_parser, add_info_parser,
                add_import_parser, add_gradcheck_parser, add_bench_parser):
        add(subparsers)
    from .teach.cli import add_parsers as add_teach_parsers   # explain, check
    add_teach_parsers(subparsers)
    return parser


def _message(exc):
    """One line for an exception; OSErrors as '<file>: <reason>'."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing entry {text}"
    return " ".join(text.split())


def main(argv=None):
    """Run the ``npfcn`` command line; returns the exit code."""
    from .checkpoint import CheckpointError
    from .train import TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # argparse's REMAINDER does not take a leading option ("bench --full" was an
        # "unrecognized arguments" error), so bench's arguments bypass this parser.
        args = parser.parse_args(["bench"])
        args.bench_args = argv[1:]
    else:
        args = parser.parse_args(argv)      # usage errors: argparse prints them and exits 2
        args.argv = argv                    # train --procs starts the same command N times
    try:
        return args.handler(args)
    except TrainingInterrupted as exc:
        print(f"npfcn: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nnpfcn: aborted", file=sys.stderr)
        return 130
    except (CheckpointError, TrainingDiverged, ValueError, TypeError, OSError,
            KeyError) as exc:
        print(f"npfcn: error: {_message(exc)}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        # numpy says which allocation failed ("Unable to allocate 161. MiB for an array ...").
        detail = f" ({_message(exc)})" if str(exc) else ""
        print(f"npfcn: error: out of memory{detail}; use fewer or smaller images, a smaller "
              "--batch-size or --max-memory, or fewer --threads", file=sys.stderr)
        return 1
