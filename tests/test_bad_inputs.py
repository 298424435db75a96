"""Bad input, everywhere: one test per row of a table over every public entry point.

Each Python row calls one entry point (a layer, the loss, a model, a metric, a data
loader, checkpoint loading) with one bad input and expects one exception type whose
message contains a keyword naming the problem.  Each CLI row runs ``npfcn.cli.main``
with one bad command line and expects a non-zero exit code (1 for bad input, 2 for a
usage error), no traceback, and for bad input exactly one stderr line
``npfcn: error: ...`` containing the keyword.

Rows are registered with ``@row(id, exception, keyword)`` / ``@cli_row(id, code,
keyword)`` right above the function that provokes the error, so the table reads as a
list; ``python tests/test_bad_inputs.py`` prints it as Markdown.
"""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from npfcn.checkpoint import CheckpointError, load_checkpoint, load_into, load_model, save_checkpoint
from npfcn.cli import main
from npfcn.data import (FolderDataset, SyntheticShapes, VOCSegmentation, iterate_batches,
                        open_dataset, preprocess, synthetic_splits)
from npfcn.layers import (Add, Conv2d, ConvTranspose2d, Crop, Dropout, MaxPool2d, MaxUnpool2d,
                          ReLU)
from npfcn.losses import CrossEntropyLoss
from npfcn.metrics import confusion_matrix, mean_iou, summarize
from npfcn.models import build_model
from npfcn.models.vgg_import import load_weights_file, vgg16_to_fcn

F32 = np.float32
TINY = dict(width=0.015625)          # the narrowest FCN: builds in milliseconds

PY_ROWS, CLI_ROWS = [], []


def row(row_id, exception, keyword):
    def register(fn):
        PY_ROWS.append(pytest.param(fn, exception, keyword, id=row_id))
        return fn
    return register


def cli_row(row_id, code, keyword):
    def register(fn):
        CLI_ROWS.append(pytest.param(fn, code, keyword, id=row_id))
        return fn
    return register


class Files:
    """Files a row needs, made on demand in the test's temporary folder."""

    def __init__(self, root, monkeypatch):
        self.root = root
        self.monkeypatch = monkeypatch

    def pretend_memory(self, nbytes):
        """Make the model builder believe the machine has ``nbytes`` of RAM, so the refusal
        of models too large for memory is tested with small ones (were the check missing,
        the real thing would allocate until the OOM killer struck)."""
        import npfcn.models.fcn
        self.monkeypatch.setattr(npfcn.models.fcn, "physical_memory_bytes", lambda: nbytes)

    def path(self, name):
        return str(self.root / name)

    def checkpoint(self, name="good.npz", model="fcn32s", num_classes=3):
        net = build_model(model, num_classes=num_classes, **TINY)
        return save_checkpoint(self.path(name), net, meta={
            "class_names": [f"c{k}" for k in range(num_classes)], "preprocessing": "unit"})

    def truncated_checkpoint(self):
        data = open(self.checkpoint(), "rb").read()
        with open(self.path("truncated.npz"), "wb") as handle:
            handle.write(data[:len(data) // 2])
        return self.path("truncated.npz")

    def corrupted_checkpoint(self):
        """One byte of the largest array flipped: the zip CRC or the checksum catches it."""
        data = bytearray(open(self.checkpoint(), "rb").read())
        data[len(data) // 2] ^= 0xFF
        with open(self.path("corrupted.npz"), "wb") as handle:
            handle.write(bytes(data))
        return self.path("corrupted.npz")

    def nan_checkpoint(self):
        """A checkpoint with a NaN weight and a VALID checksum (written by hand, since
        save_checkpoint refuses non-finite weights)."""
        import hashlib
        good = load_checkpoint(self.checkpoint())
        arrays = {f"model/{k}": v.copy() for k, v in good.model_state.items()}
        arrays[sorted(arrays)[0]].flat[0] = np.nan
        digest = hashlib.sha256()
        for name in sorted(arrays):
            a = np.ascontiguousarray(arrays[name])
            digest.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
            digest.update(a.tobytes())
        meta = dict(good.meta, format="npfcn-checkpoint", version=1, checksum=digest.hexdigest())
        np.savez(self.path("nan.npz"), **arrays,
                 __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        return self.path("nan.npz")

    def bomb_checkpoint(self):
        """An .npz whose one array header claims 10**12 float64 (8 TB) but holds 16 bytes."""
        import io
        import zipfile
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
        with zipfile.ZipFile(self.path("bomb.npz"), "w") as archive:
            archive.writestr("model/conv1_1.weight.npy", header.getvalue() + bytes(16))
        return self.path("bomb.npz")

    def text_file(self, name="notes.npz"):
        with open(self.path(name), "w") as handle:
            handle.write("this is not a checkpoint\n")
        return self.path(name)

    def image(self, name="img.png", size=(8, 8), folder=None):
        path = (self.root / folder / name) if folder else (self.root / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros(size + (3,), np.uint8)).save(path)
        return str(path)

    def mask(self, name, values, folder):
        path = self.root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(values, np.uint8)).save(path)
        return str(path)

    def truncated_image(self, folder=None):
        """A PNG whose pixel data stops halfway (the header still reads)."""
        noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noisy).save(self.path("whole.png"))
        data = open(self.path("whole.png"), "rb").read()
        path = (self.root / folder / "cut.png") if folder else (self.root / "cut.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[:len(data) // 2])
        return str(path)

    def folder_dataset(self, kind):
        """An images/ + masks/ dataset with one defect (or none: kind="good")."""
        root = self.root / f"data-{kind}"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir(parents=True)
        if kind == "empty":
            return str(root)
        (root / "classes.txt").write_text("background\nthing\n")
        if kind == "truncated-image":
            self.truncated_image(folder=f"data-{kind}/images")
            self.mask("cut.png", np.zeros((64, 64)), f"data-{kind}/masks")
            return str(root)
        if kind == "garbage-image":
            (root / "images" / "a.png").write_bytes(b"\x89PNG garbage" * 20)
            self.mask("a.png", np.zeros((8, 8)), f"data-{kind}/masks")
            return str(root)
        self.image("a.png", folder=f"data-{kind}/images")
        if kind == "no-mask":
            return str(root)
        values = np.zeros((8, 8))
        if kind == "mask-value":
            values[2, 3] = 7                       # two classes: 7 is neither a class nor 255
        if kind == "mask-size":
            values = np.zeros((6, 8))
        self.mask("a.png", values, f"data-{kind}/masks")
        return str(root)


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)      # CLI defaults (runs/, predictions/) land here
    return Files(tmp_path, monkeypatch)


def x(shape=(1, 3, 8, 8), dtype=F32):
    return np.ones(shape, dtype=dtype)


# --- layers -----------------------------------------------------------------------------------

@row("conv2d-wrong-rank", ValueError, "4 dimensions")
def _(f): Conv2d(3, 4, 3).forward(x((3, 8, 8)))
@row("conv2d-wrong-channel-count", ValueError, "channels")
def _(f): Conv2d(3, 4, 3).forward(x((1, 2, 8, 8)))
@row("conv2d-integer-input", TypeError, "int64")
def _(f): Conv2d(3, 4, 3).forward(x(dtype=np.int64))
@row("conv2d-float16-input", TypeError, "float16")
def _(f): Conv2d(3, 4, 3).forward(x(dtype=np.float16))
@row("conv2d-object-input", TypeError, "object")
def _(f): Conv2d(3, 4, 3).forward(x(dtype=object))
@row("conv2d-input-dtype-differs-from-weights", TypeError, "dtype")
def _(f): Conv2d(3, 4, 3).forward(x(dtype=np.float64))
@row("conv2d-kernel-larger-than-input", ValueError, "larger than the padded input")
def _(f): Conv2d(3, 4, 5).forward(x((1, 3, 2, 2)))
@row("conv2d-stride-0", ValueError, "stride")
def _(f): Conv2d(3, 4, 3, stride=0)
@row("conv2d-negative-padding", ValueError, "padding")
def _(f): Conv2d(3, 4, 3, padding=-1)
@row("conv2d-backward-before-forward", ValueError, "before forward")
def _(f): Conv2d(3, 4, 3).backward(x((1, 4, 6, 6)))
@row("conv2d-gradient-wrong-shape", ValueError, "shape")
def _(f):
    conv = Conv2d(3, 4, 3)
    conv.forward(x())
    conv.backward(x((1, 4, 5, 5)))
@row("conv_transpose2d-output-padding-too-large", ValueError, "output_padding")
def _(f): ConvTranspose2d(3, 4, 3, stride=2, output_padding=2)
@row("conv_transpose2d-wrong-channel-count", ValueError, "channels")
def _(f): ConvTranspose2d(3, 4, 3).forward(x((1, 5, 4, 4)))
@row("conv_transpose2d-integer-input", TypeError, "int32")
def _(f): ConvTranspose2d(3, 4, 3).forward(x(dtype=np.int32))
@row("max_pool2d-kernel-larger-than-input", ValueError, "larger than the padded input")
def _(f): MaxPool2d(4).forward(x((1, 3, 2, 2)))
@row("max_pool2d-padding-over-half-kernel", ValueError, "half the kernel")
def _(f): MaxPool2d(2, padding=2).forward(x())
@row("max_pool2d-window-only-padding", ValueError, "entirely in the padding")
def _(f): MaxPool2d(2, stride=1, padding=1, dilation=2).forward(x((1, 3, 1, 3)))
@row("max_pool2d-wrong-rank", ValueError, "4 dimensions")
def _(f): MaxPool2d(2).forward(x((8, 8)))
@row("max_unpool2d-index-out-of-range", ValueError, "out of range")
def _(f): MaxUnpool2d(2).forward(x((1, 3, 2, 2)), np.full((1, 3, 2, 2), 16, np.int64))
@row("max_unpool2d-negative-index", ValueError, "out of range")
def _(f): MaxUnpool2d(2).forward(x((1, 3, 2, 2)), np.full((1, 3, 2, 2), -1, np.int64))
@row("max_unpool2d-float-indices", TypeError, "integer")
def _(f): MaxUnpool2d(2).forward(x((1, 3, 2, 2)), np.zeros((1, 3, 2, 2)))
@row("max_unpool2d-indices-wrong-shape", ValueError, "shape")
def _(f): MaxUnpool2d(2).forward(x((1, 3, 2, 2)), np.zeros((1, 3, 2, 3), np.int64))
@row("max_unpool2d-output-size-impossible", ValueError, "output_size")
def _(f): MaxUnpool2d(2).forward(x((1, 3, 2, 2)), np.zeros((1, 3, 2, 2), np.int64), (9, 9))
@row("relu-object-input", TypeError, "object")
def _(f): ReLU().forward(x(dtype=object))
@row("dropout-probability-above-1", ValueError, "probability")
def _(f): Dropout(1.5)
@row("crop-larger-than-input", ValueError, "does not fit")
def _(f): Crop(2).forward(x(), (8, 8))
@row("add-shapes-differ", ValueError, "crop first")
def _(f): Add().forward(x(), x((1, 3, 8, 9)))


# --- loss --------------------------------------------------------------------------------------

def logits(classes=3):
    return np.zeros((1, classes, 2, 2), F32)


@row("cross_entropy-label-outside-classes", ValueError, "outside [0, 3)")
def _(f): CrossEntropyLoss().forward(logits(), np.array([[[0, 1], [2, 3]]]))
@row("cross_entropy-negative-label", ValueError, "outside [0, 3)")
def _(f): CrossEntropyLoss().forward(logits(), np.array([[[0, 1], [2, -1]]]))
@row("cross_entropy-float-labels", TypeError, "integer")
def _(f): CrossEntropyLoss().forward(logits(), np.zeros((1, 2, 2)))
@row("cross_entropy-labels-wrong-shape", ValueError, "shape")
def _(f): CrossEntropyLoss().forward(logits(), np.zeros((1, 2, 3), np.int64))
@row("cross_entropy-float16-logits", TypeError, "float16")
def _(f): CrossEntropyLoss().forward(logits().astype(np.float16), np.zeros((1, 2, 2), np.int64))
@row("cross_entropy-class-weight-length", ValueError, "class weight")
def _(f): CrossEntropyLoss(weight=[1.0, 2.0]).forward(logits(), np.zeros((1, 2, 2), np.int64))
@row("cross_entropy-nan-class-weight", ValueError, "finite")
def _(f): CrossEntropyLoss(weight=[1.0, np.nan, 1.0])
@row("cross_entropy-backward-before-forward", ValueError, "before forward")
def _(f): CrossEntropyLoss().backward()


# --- models --------------------------------------------------------------------------------------

@row("model-wrong-channel-count", ValueError, "3 channels")
def _(f): build_model("fcn8s", num_classes=3, **TINY).forward(x((1, 1, 8, 8)))
@row("model-wrong-rank", ValueError, "4 dimensions")
def _(f): build_model("fcn8s", num_classes=3, **TINY).forward(x((3, 8, 8)))
@row("model-integer-image", TypeError, "uint8")
def _(f): build_model("fcn8s", num_classes=3, **TINY).forward(x(dtype=np.uint8))
@row("model-float16-image", TypeError, "float16")
def _(f): build_model("fcn8s", num_classes=3, **TINY).forward(x(dtype=np.float16))
@row("model-object-image", TypeError, "object")
def _(f): build_model("fcn8s", num_classes=3, **TINY).forward(x(dtype=object))
@row("model-empty-image", ValueError, "at least 1x1")
def _(f): build_model("fcn8s", num_classes=3, **TINY).forward(x((1, 3, 0, 8)))
@row("model-weights-exceed-memory", ValueError, "GiB")
def _(f):
    f.pretend_memory(2 ** 20)
    build_model("fcn8s", num_classes=3, width=0.25)
@row("model-unknown-architecture", ValueError, "unknown model")
def _(f): build_model("fcn4s", num_classes=3, **TINY)
@row("model-zero-classes", ValueError, "num_classes")
def _(f): build_model("fcn8s", num_classes=0, **TINY)
@row("model-state-from-other-class-count", ValueError, "shape")
def _(f):
    build_model("fcn8s", num_classes=3, **TINY).load_state_dict(
        build_model("fcn8s", num_classes=5, **TINY).state_dict())
@row("model-state-from-other-architecture", ValueError, "does not match")
def _(f):
    build_model("fcn8s", num_classes=3, **TINY).load_state_dict(
        build_model("fcn32s", num_classes=3, **TINY).state_dict())
@row("model-state-with-nan", ValueError, "NaN")
def _(f):
    model = build_model("fcn8s", num_classes=3, **TINY)
    state = model.state_dict()
    state["score_fr.bias"][0] = np.nan
    model.load_state_dict(state)
@row("model-backward-before-forward", ValueError, "before forward")
def _(f): build_model("fcn8s", num_classes=3, **TINY).backward(x((1, 3, 8, 8)))


# --- metrics -------------------------------------------------------------------------------------

@row("confusion_matrix-label-outside-classes", ValueError, "outside [0, 3)")
def _(f): confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)
@row("confusion_matrix-prediction-outside-classes", ValueError, "outside [0, 3)")
def _(f): confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
@row("confusion_matrix-float-labels", TypeError, "integer")
def _(f): confusion_matrix(np.array([0.0, 1.0]), np.array([0, 1]), 3)
@row("confusion_matrix-shapes-differ", ValueError, "shape")
def _(f): confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
@row("confusion_matrix-zero-classes", ValueError, "num_classes")
def _(f): confusion_matrix(np.zeros(2, int), np.zeros(2, int), 0)
@row("mean_iou-non-square-matrix", ValueError, "square")
def _(f): mean_iou(np.zeros((2, 3)))
@row("mean_iou-nan-counts", ValueError, "NaN")
def _(f): mean_iou(np.full((2, 2), np.nan))
@row("summarize-class-names-count", ValueError, "class names")
def _(f): summarize(np.eye(3, dtype=np.int64), ["only one"])


# --- data ------------------------------------------------------------------------------------------

@row("folder-dataset-empty", ValueError, "no images")
def _(f): FolderDataset(f.folder_dataset("empty"))
@row("folder-dataset-image-without-mask", FileNotFoundError, "has no mask")
def _(f): FolderDataset(f.folder_dataset("no-mask"))
@row("folder-dataset-truncated-image", ValueError, "cannot read image")
def _(f): FolderDataset(f.folder_dataset("truncated-image"))[0]
@row("folder-dataset-corrupted-image", ValueError, "cannot read image")
def _(f): FolderDataset(f.folder_dataset("garbage-image"))[0]
@row("folder-dataset-mask-value-not-a-class", ValueError, "neither a class id")
def _(f): FolderDataset(f.folder_dataset("mask-value"))[0]
@row("folder-dataset-mask-size-differs", ValueError, "its mask")
def _(f): FolderDataset(f.folder_dataset("mask-size"))[0]
@row("folder-dataset-missing-folder", FileNotFoundError, "not found")
def _(f): FolderDataset(f.path("nowhere"))
@row("voc-missing-layout", FileNotFoundError, "no VOC layout")
def _(f): VOCSegmentation(f.folder_dataset("empty"))
@row("open_dataset-path-is-a-file", ValueError, "is a file")
def _(f): open_dataset(f.text_file("data.txt"))
@row("open_dataset-unknown-layout", ValueError, "neither a VOC layout")
def _(f):
    (f.root / "plain").mkdir()
    open_dataset(f.path("plain"))
@row("synthetic-negative-size", ValueError, "size")
def _(f): SyntheticShapes(-1)
@row("synthetic-image-too-small", ValueError, "image_size")
def _(f): synthetic_splits(train_size=1, val_size=1, image_size=0)
@row("iterate_batches-batch-size-0", ValueError, "batch_size")
def _(f): next(iter(iterate_batches(SyntheticShapes(2), 0)))
@row("iterate_batches-rng-not-a-generator", TypeError, "Generator")
def _(f): next(iter(iterate_batches(SyntheticShapes(2), 1, rng=0)))
@row("preprocess-float-image", TypeError, "uint8")
def _(f): preprocess(np.ones((4, 4, 3)), "unit")
@row("preprocess-unknown-name", ValueError, "unknown preprocessing")
def _(f): preprocess(np.ones((4, 4, 3), np.uint8), "imagenet21k")


# --- checkpoints and weight files --------------------------------------------------------------

@row("checkpoint-missing-file", FileNotFoundError, "not found")
def _(f): load_checkpoint(f.path("missing.npz"))
@row("checkpoint-truncated", CheckpointError, "truncated or corrupted")
def _(f): load_checkpoint(f.truncated_checkpoint())
@row("checkpoint-corrupted-byte", CheckpointError, "corrupted")
def _(f): load_checkpoint(f.corrupted_checkpoint())
@row("checkpoint-not-a-checkpoint", CheckpointError, "not a readable npfcn checkpoint")
def _(f): load_checkpoint(f.text_file())
@row("checkpoint-plain-npz", CheckpointError, "not an npfcn checkpoint")
def _(f):
    np.savez(f.path("plain.npz"), w=np.ones(3))
    load_checkpoint(f.path("plain.npz"))
@row("checkpoint-array-header-claims-terabytes", CheckpointError, "declares shape")
def _(f): load_checkpoint(f.bomb_checkpoint())
@row("checkpoint-nan-weights", CheckpointError, "NaN or inf")
def _(f): load_checkpoint(f.nan_checkpoint())
@row("checkpoint-corrupted-metadata", CheckpointError, "corrupted metadata")
def _(f):
    with np.load(f.checkpoint()) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    meta["config"]["model"]["num_classes"] = 7        # the JSON is outside the checksum
    np.savez(f.path("edited.npz"), **arrays,
             __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    load_model(f.path("edited.npz"))
@row("checkpoint-other-class-count", CheckpointError, "different model")
def _(f): load_into(f.checkpoint(num_classes=5), build_model("fcn32s", num_classes=3, **TINY))
@row("checkpoint-other-architecture", CheckpointError, "different model")
def _(f): load_into(f.checkpoint(model="fcn8s"), build_model("fcn32s", num_classes=3, **TINY))
@row("checkpoint-save-nan-weights", CheckpointError, "NaN or inf")
def _(f):
    model = build_model("fcn32s", num_classes=3, **TINY)
    model.params["score_fr.weight"][...] = np.inf
    save_checkpoint(f.path("diverged.npz"), model)
@row("load_model-nan-weights", CheckpointError, "NaN or inf")
def _(f): load_model(f.nan_checkpoint())
@row("vgg-weights-missing-file", FileNotFoundError, "no such weights file")
def _(f): load_weights_file(f.path("vgg16.npz"))
@row("vgg-weights-not-an-archive", ValueError, "not a readable .npz")
def _(f): load_weights_file(f.text_file("vgg16.npz"))
@row("vgg-weights-missing-layer", ValueError, "features.0.weight")
def _(f): vgg16_to_fcn({"features.2.weight": np.ones((64, 64, 3, 3), F32)})


@pytest.mark.parametrize("provoke, exception, keyword", PY_ROWS)
def test_bad_python_input(provoke, exception, keyword, files):
    with pytest.raises(exception) as info:
        provoke(files)
    assert keyword in str(info.value), f"message {str(info.value)!r} lacks {keyword!r}"


# --- the command line ------------------------------------------------------------------------------

@cli_row("cli-no-command", 2, "required")
def _(f): return []
@cli_row("cli-unknown-command", 2, "invalid choice")
def _(f): return ["fly"]
@cli_row("cli-train-unknown-flag", 2, "unrecognized arguments")
def _(f): return ["train", "--speed", "11"]
@cli_row("cli-train-negative-learning-rate", 1, "learning rate")
def _(f): return ["train", "--lr", "-1"]
@cli_row("cli-train-zero-epochs", 1, "epochs")
def _(f): return ["train", "--epochs", "0"]
@cli_row("cli-train-model-exceeds-memory", 1, "GiB")
def _(f):
    f.pretend_memory(2 ** 20)
    return ["train", "--width", "0.25"]
@cli_row("cli-train-empty-dataset-folder", 1, "no images")
def _(f): return ["train", "--data", f.folder_dataset("empty")]
@cli_row("cli-train-image-without-mask", 1, "has no mask")
def _(f): return ["train", "--data", f.folder_dataset("no-mask")]
@cli_row("cli-train-resume-missing-run", 1, "not found")
def _(f): return ["train", "--resume", f.path("no-such-run")]
@cli_row("cli-train-resume-non-training-checkpoint", 1, "not a training checkpoint")
def _(f): return ["train", "--resume", f.checkpoint()]
@cli_row("cli-train-resume-truncated-checkpoint", 1, "truncated or corrupted")
def _(f): return ["train", "--resume", f.truncated_checkpoint()]
@cli_row("cli-eval-missing-checkpoint", 1, "not found")
def _(f): return ["eval", "--checkpoint", f.path("missing.npz")]
@cli_row("cli-eval-truncated-checkpoint", 1, "truncated or corrupted")
def _(f): return ["eval", "--checkpoint", f.truncated_checkpoint()]
@cli_row("cli-eval-corrupted-checkpoint", 1, "corrupted")
def _(f): return ["eval", "--checkpoint", f.corrupted_checkpoint()]
@cli_row("cli-predict-array-header-claims-terabytes", 1, "declares shape")
def _(f): return ["predict", "--checkpoint", f.bomb_checkpoint(), f.image()]
@cli_row("cli-eval-nan-weights", 1, "NaN or inf")
def _(f): return ["eval", "--checkpoint", f.nan_checkpoint()]
@cli_row("cli-eval-dataset-with-other-class-count", 1, "classes")
def _(f): return ["eval", "--checkpoint", f.checkpoint(num_classes=3), "--data", "synthetic"]
@cli_row("cli-eval-empty-dataset-folder", 1, "no images")
def _(f): return ["eval", "--checkpoint", f.checkpoint(), "--data", f.folder_dataset("empty")]
@cli_row("cli-predict-missing-image", 1, "not found")
def _(f): return ["predict", "--checkpoint", f.checkpoint(), f.path("missing.png")]
@cli_row("cli-predict-truncated-image", 1, "cannot read image")
def _(f): return ["predict", "--checkpoint", f.checkpoint(), f.truncated_image()]
@cli_row("cli-predict-not-an-image", 1, "cannot read image")
def _(f): return ["predict", "--checkpoint", f.checkpoint(), f.text_file("photo.png")]
@cli_row("cli-predict-truncated-checkpoint", 1, "truncated or corrupted")
def _(f): return ["predict", "--checkpoint", f.truncated_checkpoint(), f.image()]
@cli_row("cli-predict-no-image-given", 2, "required")
def _(f): return ["predict", "--checkpoint", f.checkpoint()]
@cli_row("cli-info-extra-argument", 2, "unrecognized arguments")
def _(f): return ["info", "verbose"]
@cli_row("cli-import-vgg16-missing-file", 1, "no such weights file")
def _(f): return ["import-vgg16", f.path("vgg16.npz"), "-o", f.path("fcn.npz")]
@cli_row("cli-import-vgg16-wrong-weights", 1, "features.0.weight")
def _(f):
    np.savez(f.path("resnet.npz"), **{"conv1.weight": np.ones((64, 3, 7, 7), F32)})
    return ["import-vgg16", f.path("resnet.npz"), "-o", f.path("fcn.npz")]
@cli_row("cli-import-vgg16-truncated-file", 1, "not a readable .npz")
def _(f):
    np.savez(f.path("vgg16.npz"), **{"features.0.weight": np.ones((64, 3, 3, 3), F32)})
    data = open(f.path("vgg16.npz"), "rb").read()
    open(f.path("vgg16.npz"), "wb").write(data[:len(data) // 2])
    return ["import-vgg16", f.path("vgg16.npz"), "-o", f.path("fcn.npz")]
@cli_row("cli-import-vgg16-array-header-claims-terabytes", 1, "declares shape")
def _(f): return ["import-vgg16", f.bomb_checkpoint(), "-o", f.path("fcn.npz")]
@cli_row("cli-import-vgg16-zero-classes", 1, "num-classes")
def _(f): return ["import-vgg16", f.path("vgg16.npz"), "-o", f.path("fcn.npz"), "--num-classes", "0"]
@cli_row("cli-gradcheck-unknown-layer", 2, "invalid choice")
def _(f): return ["gradcheck", "lstm"]
@cli_row("cli-gradcheck-stride-0", 1, "stride")
def _(f): return ["gradcheck", "conv2d", "--stride", "0"]
@cli_row("cli-gradcheck-negative-size", 1, "--size")
def _(f): return ["gradcheck", "conv2d", "--size", "-1"]
@cli_row("cli-gradcheck-kernel-larger-than-input", 1, "larger than the padded input")
def _(f): return ["gradcheck", "conv2d", "--kernel-size", "9"]
@cli_row("cli-bench-unknown-flag", 2, "unrecognized arguments")
def _(f): return ["bench", "--turbo"]


@pytest.mark.parametrize("argv, code, keyword", CLI_ROWS)
def test_bad_command_line(argv, code, keyword, files, capsys):
    args = argv(files)
    capsys.readouterr()                      # drop anything printed while making files
    try:
        returned = main(args)
    except SystemExit as exc:                # argparse's usage errors
        returned = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert returned == code, f"exit code {returned}, expected {code}; stderr: {err}"
    assert "Traceback" not in err
    assert lines and keyword in lines[-1], f"last stderr line lacks {keyword!r}: {err!r}"
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("npfcn: error: "), err
    else:
        assert lines[-1].startswith("npfcn") and "error:" in lines[-1], err


def test_a_real_process_exits_1_with_one_line(tmp_path):
    """The same contract end to end: ``python -m npfcn`` as a user runs it."""
    import subprocess
    result = subprocess.run([sys.executable, "-m", "npfcn", "eval", "--checkpoint",
                             str(tmp_path / "missing.npz")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"npfcn: error: checkpoint not found: "
                                          f"{tmp_path / 'missing.npz'}"]


def markdown_table():
    """The table above as Markdown (``python tests/test_bad_inputs.py``)."""
    out = ["| # | row | expected |", "| --- | --- | --- |"]
    for number, param in enumerate(PY_ROWS + CLI_ROWS, 1):
        provoke, expected, keyword = param.values
        what = (f"exit {expected}" if isinstance(expected, int) else expected.__name__)
        out.append(f"| {number} | {param.id} | {what}, \"{keyword}\" |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
