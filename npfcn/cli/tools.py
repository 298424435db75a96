"""``npfcn info``, ``import-vgg16``, ``gradcheck`` and ``bench``: the machine, weights, gradients, speed."""
import argparse
import os

import numpy as np

# --- info -----------------------------------------------------------------------------

def add_info_parser(subparsers):
    p = subparsers.add_parser("info", help="version, kernel backend, BLAS and thread counts")
    p.set_defaults(handler=cmd_info)


def cmd_info(args):
    from ..sysinfo import info
    from ..train.launch import describe_mpi

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
    from ..checkpoint import save_checkpoint
    from ..models.vgg_import import load_weights_file, vgg16_to_fcn

    if args.num_classes < 1:
        raise ValueError(f"--num-classes must be positive, got {args.num_classes}")
    state = load_weights_file(args.file)
    if args.model == "segnet":
        from ..models.segnet import vgg16_to_segnet

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
    from ..data import VOC_CLASSES

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
    from .. import layers
    from ..losses import CrossEntropyLoss
    from ..lovasz import LovaszSoftmaxLoss

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
                             "windows can pick one index twice, and unpooling keeps only one "
                             "of the two values (no gradient for the other)")
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
    from ..gradcheck import gradcheck

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


