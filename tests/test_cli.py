"""The ``npfcn`` command line end to end, and its one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from npfcn.train import load_checkpoint
from npfcn.cli import main

TINY_TRAIN = ["--width", "0.03125", "--image-size", "24", "--num-train", "4", "--num-val", "2",
              "--batch-size", "2", "--epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run made through the command line: (runs folder, run folder)."""
    runs = tmp_path_factory.mktemp("cli") / "runs"
    assert main(["train", *TINY_TRAIN, "--output", str(runs), "--name", "tiny"]) == 0
    return runs, runs / "tiny"


def error_line(capsys):
    """The command's stderr, checked to be exactly one 'npfcn: error:' line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("npfcn: error: ")
    return err[0]


def test_train_writes_the_run_folder(trained):
    runs, run = trained
    for name in ("last.npz", "best.npz", "metrics.json", "curves.png", "samples.png"):
        assert (run / name).is_file(), name
    assert os.path.realpath(runs / "latest") == os.path.realpath(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["train"]["width"] == 0.03125 and len(metrics["epochs"]) == 1
    with Image.open(run / "samples.png") as picture:
        assert picture.mode == "RGB" and picture.width > 3 * 24


def test_eval_prints_table_and_writes_json_and_picture(trained, tmp_path, capsys):
    runs, run = trained
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(runs / "latest"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for word in ("background", "disc", "ring", "mean IoU", "pixel accuracy", "frequency-weighted IoU"):
        assert word in printed
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 2
    hist = np.array(report["confusion_matrix"])
    assert hist.shape == (5, 5) and hist.sum() == 2 * 24 * 24      # every val pixel counted once
    assert abs(report["pixel_accuracy"] - np.trace(hist) / hist.sum()) < 1e-12
    assert (out / "confusion.png").is_file()


def test_predict_any_size_and_format(trained, tmp_path, capsys):
    runs, run = trained
    rng = np.random.default_rng(0)
    inputs = {"odd.png": (37, 51), "photo.jpg": (20, 9), "gray.bmp": (1, 1)}
    for name, (h, w) in inputs.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        picture = Image.fromarray(pixels)
        (picture.convert("L") if name.endswith(".bmp") else picture).save(tmp_path / name)
    out = tmp_path / "out"
    paths = [str(tmp_path / name) for name in inputs]
    assert main(["predict", "--checkpoint", str(run / "best.npz"), *paths, "-o", str(out)]) == 0
    for name, (h, w) in inputs.items():
        stem = os.path.splitext(name)[0]
        for kind in ("mask", "overlay"):
            with Image.open(out / f"{stem}_{kind}.png") as result:
                assert result.size == (w, h)
    # one colour key for the folder: every class's colour (the synthetic data's 5: VOC's
    # first five, the background black) appears in it
    from npfcn.viz import colorize
    assert f"colour key: {out / 'legend.png'}" in capsys.readouterr().out
    with Image.open(out / "legend.png") as key:
        pixels = {tuple(p) for p in np.asarray(key.convert("RGB")).reshape(-1, 3)}
    for colour in colorize(np.arange(5, dtype=np.uint8)[None])[0]:
        assert tuple(colour) in pixels


def test_predict_applies_the_checkpoints_correction_and_flip(trained, tmp_path):
    """The mask is the argmax of the corrected (and with --flip, mirror-averaged) scores."""
    from npfcn.train import load_model, save_checkpoint
    from npfcn.data.transforms import preprocess
    from npfcn.evaluate import predict_labels
    from npfcn.viz import colorize

    runs, run = trained
    checkpoint = load_checkpoint(run / "best.npz")
    model = load_model(checkpoint)
    # A copy whose correction is large enough to decide every pixel: class 1 everywhere.
    forced = dict(checkpoint.meta, score_offset=[0.0, 1e4, 0.0, 0.0, 0.0])
    save_checkpoint(str(tmp_path / "forced.npz"), model, meta=forced)
    image = np.random.default_rng(3).integers(0, 256, (29, 33, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    x = preprocess(image, checkpoint.meta["preprocessing"])[None]
    cases = [(run / "best.npz", checkpoint.meta["score_offset"], False),
             (run / "best.npz", checkpoint.meta["score_offset"], True),
             (tmp_path / "forced.npz", forced["score_offset"], False)]
    for index, (path, offset, flip) in enumerate(cases):
        out = tmp_path / f"out{index}"
        assert main(["predict", "--checkpoint", str(path), str(tmp_path / "in.png"), "-o", str(out),
                     *(["--flip"] if flip else [])]) == 0
        labels = predict_labels(model, x, offset, flip=flip)[0][0].astype(np.uint8)
        with Image.open(out / "in_mask.png") as mask:
            np.testing.assert_array_equal(np.asarray(mask.convert("RGB")), colorize(labels))
    assert np.all(labels == 1)


def test_resume_through_the_cli_extends_the_run(trained, tmp_path):
    runs, run = trained
    copy = tmp_path / "runs"
    copy.mkdir()
    (copy / "tiny").mkdir()
    for name in ("last.npz", "best.npz"):
        (copy / "tiny" / name).write_bytes((run / name).read_bytes())
    assert main(["train", "--resume", str(copy / "tiny"), "--epochs", "2"]) == 0
    meta = load_checkpoint(copy / "tiny" / "last.npz").meta
    assert meta["epoch"] == 2 and len(meta["history"]) == 2


def test_resume_through_latest_keeps_the_link_and_writes_into_the_run(trained, tmp_path):
    # Resuming by OUTPUT/latest once wrote into "latest" itself and pointed the link at
    # itself ("latest -> latest"), losing the way to the run.
    runs, run = trained
    copy = tmp_path / "runs"
    (copy / "tiny").mkdir(parents=True)
    for name in ("last.npz", "best.npz"):
        (copy / "tiny" / name).write_bytes((run / name).read_bytes())
    os.symlink("tiny", copy / "latest")
    assert main(["train", "--resume", str(copy / "latest"), "--epochs", "2", "--procs", "1"]) == 0
    assert os.readlink(copy / "latest") == "tiny"
    assert load_checkpoint(copy / "tiny" / "last.npz").meta["epoch"] == 2


def test_resume_refuses_changed_settings(trained, capsys):
    runs, run = trained
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 1
    assert "--lr" in error_line(capsys)


def test_info_and_gradcheck(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "kernel backend" in out and "BLAS" in out and "npfcn" in out
    assert main(["gradcheck", "conv2d", "--stride", "2", "--padding", "1"]) == 0
    out = capsys.readouterr().out
    assert "weight" in out and "bias" in out and "input0" in out and "PASS" in out
    assert main(["gradcheck", "cross_entropy"]) == 0
    assert main(["gradcheck", "unpool", "--kernel-size", "3", "--stride", "3", "--size", "7"]) == 0


def test_gradcheck_fails_when_the_tolerance_cannot_be_met(capsys):
    # No float64 central difference is exact to 1e-30, so this must report FAIL, exit 1.
    assert main(["gradcheck", "relu", "--tol", "1e-30"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_import_vgg16_records_the_preprocessing(tmp_path, capsys):
    # A narrow VGG16 (width 1/32) in torchvision's layout, generated here.
    from npfcn.models.vgg import encoder_conv_specs
    from npfcn.models.vgg_import import TORCHVISION_TO_FCN

    rng = np.random.default_rng(0)
    specs = {name: (cin, cout, k) for name, cin, cout, k, _ in encoder_conv_specs(1 / 32)}
    state = {}
    for source, target in TORCHVISION_TO_FCN.items():
        cin, cout, k = specs[target]
        shape = (cout, cin * k * k) if source.startswith("classifier") else (cout, cin, k, k)
        state[f"{source}.weight"] = rng.standard_normal(shape).astype(np.float32)
        state[f"{source}.bias"] = rng.standard_normal(cout).astype(np.float32)
    np.savez(tmp_path / "vgg.npz", **state)
    out = tmp_path / "fcn.npz"
    assert main(["import-vgg16", str(tmp_path / "vgg.npz"), "-o", str(out), "--width", "0.03125",
                 "--num-classes", "21"]) == 0
    checkpoint = load_checkpoint(out)
    assert checkpoint.meta["preprocessing"] == "torchvision"
    assert checkpoint.meta["class_names"][15] == "person"
    np.testing.assert_array_equal(checkpoint.model_state["fc6.weight"],
                                  state["classifier.0.weight"].reshape(checkpoint.model_state["fc6.weight"].shape))


# --- errors: one line, the file named, no traceback -------------------------------------

def write_folder_dataset(root, image_size=(8, 8), mask_size=(8, 8), bad_value=None):
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        Image.fromarray(np.zeros((*image_size, 3), np.uint8)).save(root / split / "images" / "a.png")
        mask = np.zeros(mask_size, np.uint8)
        if bad_value is not None:
            mask[0, 0] = bad_value
        Image.fromarray(mask).save(root / split / "masks" / "a.png")
    (root / "classes.txt").write_text("background\nthing\n")
    return root


@pytest.mark.parametrize("argv,needle", [
    (["eval", "--checkpoint", "{tmp}/missing.npz"], "missing.npz"),
    (["predict", "--checkpoint", "{tmp}/missing.npz", "x.png"], "missing.npz"),
    (["eval", "--checkpoint", "{tmp}/garbage.npz"], "garbage.npz"),
    (["train", "--data", "{tmp}/nowhere", "--epochs", "1"], "nowhere"),
    (["import-vgg16", "{tmp}/missing.npz", "-o", "{tmp}/o.npz"], "missing.npz"),
    (["train", "--epochs", "0"], "epochs"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 this is no zip file at all" * 10)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 1
    assert needle in error_line(capsys)


def test_image_and_mask_of_different_sizes(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", image_size=(8, 8), mask_size=(8, 9))
    assert main(["train", "--data", str(data), "--epochs", "1", "--width", "0.03125",
                 "--output", str(tmp_path / "runs")]) == 1
    line = error_line(capsys)
    assert "a.png" in line and "mask" in line


def test_mask_value_neither_class_nor_void(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data", bad_value=7)
    assert main(["train", "--data", str(data), "--epochs", "1", "--width", "0.03125",
                 "--output", str(tmp_path / "runs")]) == 1
    line = error_line(capsys)
    assert "a.png" in line and "7" in line


def test_checkpoint_for_a_different_model(trained, tmp_path, capsys):
    # The tiny run predicts 5 synthetic classes; this dataset has 2.
    runs, run = trained
    data = write_folder_dataset(tmp_path / "data")
    assert main(["eval", "--checkpoint", str(run / "best.npz"), "--data", str(data)]) == 1
    line = error_line(capsys)
    assert "best.npz" in line and "5 classes" in line


def test_checkpoint_that_is_not_a_training_run_cannot_be_resumed(tmp_path, capsys):
    from npfcn.train import save_checkpoint
    from npfcn.models import build_model

    path = save_checkpoint(tmp_path / "plain.npz", build_model(num_classes=2, width=1 / 32))
    assert main(["train", "--resume", str(path)]) == 1
    assert "plain.npz" in error_line(capsys)


def test_subprocess_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "npfcn", "predict", "--checkpoint",
                             str(tmp_path / "nope.npz"), "x.png"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"npfcn: error: checkpoint not found: {tmp_path / 'nope.npz'}"]


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "fcn4s"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_mixed_image_sizes_need_a_crop_or_batch_1(tmp_path, capsys):
    data = write_folder_dataset(tmp_path / "data")
    extra = np.zeros((12, 10), np.uint8)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(data / "train" / "images" / "b.png")
    Image.fromarray(extra).save(data / "train" / "masks" / "b.png")
    common = ["train", "--data", str(data), "--epochs", "1", "--width", "0.03125",
              "--output", str(tmp_path / "runs")]
    assert main(common + ["--batch-size", "2"]) == 1
    assert "--crop-size" in error_line(capsys)
    assert not (tmp_path / "runs").exists()          # refused before any run folder is made
    assert main(common + ["--batch-size", "2", "--crop-size", "8"]) == 0
