"""``npfcn eval`` and ``npfcn predict``: a trained checkpoint on a dataset or on image files."""
import argparse
import json
import os

import numpy as np

from .options import DEFAULT_CHECKPOINT, add_threads_flag, apply_threads

# --- eval -----------------------------------------------------------------------------

def add_flip_flag(parser):
    parser.add_argument("--flip", action="store_true",
                        help="average the scores of each image and its mirror image (twice "
                             "the time; smoother, usually better masks)")


def add_max_memory_flag(parser):
    from ..tiling import DEFAULT_MAX_MEMORY, format_bytes, parse_bytes

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
    from ..checkpoint import load_checkpoint, load_model
    from ..evaluate import evaluate, format_table
    from ..progress import ProgressBar
    from ..train import resolve_checkpoint
    from ..viz import confusion_matrix_image

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
        from ..data import SyntheticShapes

        return SyntheticShapes(args.num_val or trained.get("num_val", 100), split=args.split,
                               seed=trained.get("data_seed", 0),
                               image_size=trained.get("image_size", 64),
                               **trained.get("synthetic_options", {}))
    from ..data import open_dataset

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
    from ..predict import predict_files
    from ..train import resolve_checkpoint

    apply_threads(args)
    path = resolve_checkpoint(args.checkpoint)
    for source, mask_path, overlay_path in predict_files(path, args.images, args.output, args.alpha,
                                                         flip=args.flip, max_memory=args.max_memory):
        print(f"{source} -> {mask_path}, {overlay_path}")
    key = os.path.join(args.output, "legend.png")
    if os.path.isfile(key):
        print(f"colour key: {key}")
    return 0


