"""Tests for npfcn.viz: colourised masks, overlays, PNG writing, grids, curves, confusion matrix."""
import numpy as np
import pytest
from PIL import Image

from npfcn.viz import (VOID_COLOUR, colorize, confusion_matrix_image, image_grid, legend,
                       overlay, plot_curves, save_png, with_legend)


def test_colorize_uses_the_voc_palette_and_a_void_colour():
    mask = np.array([[0, 1], [15, 255]], dtype=np.int64)
    out = colorize(mask)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [128, 0, 0]          # VOC aeroplane
    assert out[1, 0].tolist() == [192, 128, 128]      # VOC person
    assert out[1, 1].tolist() == list(VOID_COLOUR)
    custom = colorize(mask, colormap=[[1, 2, 3], [4, 5, 6]])
    assert custom[0, 1].tolist() == [4, 5, 6] and custom[1, 1].tolist() == list(VOID_COLOUR)


def test_colorize_rejects_bad_masks():
    with pytest.raises(ValueError, match="0..254 or 255"):
        colorize(np.array([[300]]))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        colorize(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(TypeError, match="integers"):
        colorize(np.zeros((2, 2), np.float32))


def test_overlay_blends_objects_and_keeps_background():
    image = np.full((1, 2, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1]])
    out = overlay(image, mask, alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100]                  # background untouched
    assert out[0, 1].tolist() == [114, 50, 50]                    # (100 + (128, 0, 0)) / 2
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((2, 2), np.int64))


def test_save_png_round_trip(tmp_path, rng):
    array = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = save_png(tmp_path / "sub" / "a.png", array)               # folder created
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "b.png", array.astype(np.float32))


def test_image_grid_places_cells_with_padding(rng):
    a = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    b = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    grid = image_grid([[a, b], [b]], scale=1, pad=2)
    # 2 columns of 6 plus 3 gaps of 2; 2 rows of 4 plus 3 gaps of 2
    assert grid.shape == (2 * 4 + 3 * 2, 2 * 6 + 3 * 2, 3)
    np.testing.assert_array_equal(grid[2:6, 2:8], a)
    np.testing.assert_array_equal(grid[2:6, 10:16], b)
    np.testing.assert_array_equal(grid[8:12, 2:8], b)
    assert np.all(grid[8:12, 10:16] == 255)                            # empty cell stays white
    big = image_grid([[a]], scale=3, pad=0)
    np.testing.assert_array_equal(big[::3, ::3], a)


def test_image_grid_titles_add_a_text_row(rng):
    a = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    plain = image_grid([[a, a]], scale=1)
    titled = image_grid([[a, a]], titles=["image", "truth"], scale=1)
    per_cell = image_grid([[a, a], [a, a]], titles=[["x", "y"], ["z", "w"]], scale=1)
    assert titled.shape[0] > plain.shape[0] and titled.shape[1] == plain.shape[1]
    assert per_cell.shape[0] > 2 * plain.shape[0] - 4
    header = titled[: titled.shape[0] - plain.shape[0]]
    assert (header < 128).any()                                          # dark text pixels drawn
    with pytest.raises(ValueError, match="column titles"):
        image_grid([[a]], titles=["one", "two"])


def test_plot_curves_writes_a_legible_png(tmp_path):
    history = [{"epoch": e, "train_loss": 2.0 / e, "val": {"mean_iou": 0.2 * e}} for e in range(1, 5)]
    path = tmp_path / "curves.png"
    picture = plot_curves(history, path)
    assert path.is_file()
    np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert (31, 119, 180) in colours          # the loss line
    assert (44, 160, 44) in colours           # the mean-IoU line (nested key was found)
    with pytest.raises(TypeError, match="per-epoch dicts"):
        plot_curves([1, 2], tmp_path / "bad.png")


def test_confusion_matrix_image_shades_by_row_share(tmp_path):
    hist = np.array([[90, 10, 0], [0, 0, 0], [5, 5, 90]])
    path = tmp_path / "cm.png"
    picture = confusion_matrix_image(hist, ["bg", "a", "b"], path, cell=30)
    assert path.is_file() and picture.dtype == np.uint8
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert (200, 200, 200) in colours          # the empty row "a" is grey
    # 90% of a row: white (247, 251, 255) 90% of the way to dark blue (8, 48, 107)
    assert tuple(int(round(l + 0.9 * (h - l))) for l, h in zip((247, 251, 255), (8, 48, 107))) in colours
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_image(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix_image(np.eye(2), ["a"])


def _colours(picture):
    return {tuple(int(v) for v in p) for p in picture.reshape(-1, 3)}


def test_legend_shows_the_chosen_classes_in_their_colours():
    names, colours = ["road", "sky", "car"], [[255, 0, 0], [0, 0, 255], [0, 255, 0]]
    everything = legend(names, colours, width=400)
    assert everything.dtype == np.uint8 and everything.shape[1] == 400
    assert {(255, 0, 0), (0, 0, 255), (0, 255, 0)} <= _colours(everything)
    some = legend(names, colours, width=400, classes=[1, 255])
    assert (0, 0, 255) in _colours(some) and VOID_COLOUR in _colours(some)
    assert (255, 0, 0) not in _colours(some) and (0, 255, 0) not in _colours(some)
    # a narrow key wraps into more rows
    assert legend(names * 4, colours * 4, width=120).shape[0] > everything.shape[0]


def test_with_legend_puts_the_key_under_the_picture(rng):
    picture = rng.integers(0, 256, (30, 200, 3), dtype=np.uint8)
    both = with_legend(picture, ["a", "b"], [[10, 20, 30], [40, 50, 60]])
    assert both.shape[1] == 200 and both.shape[0] > 30
    np.testing.assert_array_equal(both[:30], picture)
    assert {(10, 20, 30), (40, 50, 60)} <= _colours(both[30:])


def test_samples_picture_has_a_key_of_the_classes_it_shows():
    """samples.png (evaluate.sample_grid) is the image / truth / prediction grid with a
    colour key below it naming exactly the classes in those masks."""
    from npfcn.data import SyntheticShapes
    from npfcn.evaluate import predict_labels, sample_grid
    from npfcn.data.transforms import preprocess
    from npfcn.models import build_model

    data = SyntheticShapes(size=2, image_size=32, seed=0)
    model = build_model("fcn8s", num_classes=5, width=1 / 32).eval()
    picture = sample_grid(model, data, range(2))
    rows, shown = [], set()
    for i in range(2):
        image, mask = data[i]
        labels = predict_labels(model, preprocess(image)[None], None)[0][0].astype(np.uint8)
        shown |= set(np.unique(mask).tolist()) | set(np.unique(labels).tolist())
        rows.append([image, colorize(mask), colorize(labels)])
    grid = image_grid(rows, titles=["image", "truth", "prediction"])
    assert picture.shape[0] > grid.shape[0] and picture.shape[1] == grid.shape[1]
    np.testing.assert_array_equal(picture[:grid.shape[0]], grid)
    key = picture[grid.shape[0]:]
    palette = colorize(np.arange(5, dtype=np.uint8)[None])[0]
    for c in range(5):
        assert (tuple(int(v) for v in palette[c]) in _colours(key)) == (c in shown or c == 0)
