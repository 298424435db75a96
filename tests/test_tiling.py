"""Tiled prediction (npfcn.tiling): the reach of an output pixel, tiles that give the
whole-image result, the memory budget, and the command line's one-line errors.

Equality is checked in float64 with random weights (every layer, score layers included,
so no output is trivially zero): tiled and whole-image scores then agree to float
rounding (1e-9 absolute on scores of order 1; float64 rounding is ~1e-15, the slack
covers kernels that sum in a different order for different sizes).
"""
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from npfcn.cli import main
from npfcn.data.transforms import preprocess
from npfcn.evaluate import evaluate, predict_labels
from npfcn.models import build_model
from npfcn.tiling import (MemoryBudgetError, Tile, TileGeometry, fcn_geometry, format_bytes,
                          forward_bytes, parse_bytes, plan_tiles, predict_tiled, tile_scores,
                          tiles_for)

SCORE_TOLERANCE = 1e-9


def random_model(arch="fcn8s", num_classes=3):
    """A narrow float64 FCN whose every parameter is random (He-scaled)."""
    model = build_model(arch, num_classes=num_classes, width=0.0625, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for value in model.params.values():
        fan_in = max(1, int(np.prod(value.shape[1:])))
        value[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), value.shape)
    return model.eval()


@pytest.fixture(scope="module")
def fcn8s():
    return random_model()


def image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def whole_scores(model, picture, flip=False):
    x = preprocess(picture)[None].astype(model.dtype)
    return predict_labels(model, x, flip=flip)


def columns_limited_to(width):
    """A budget test that lets a tile be at most ``width`` columns wide."""
    return lambda h, w: w <= width


# --- the reach of an output pixel ------------------------------------------------------

@pytest.mark.parametrize("arch", ["fcn8s", "fcn32s"])
def test_an_output_pixel_reaches_exactly_radius_pixels(arch):
    """Perturb one input column at each of the 32 phases of the pools: the changed output
    columns stay within the radius, and some phase reaches it on each side."""
    model = random_model(arch)
    geometry = fcn_geometry(arch)
    x = np.random.default_rng(1).normal(size=(1, 3, 4, 640))
    base = model.forward(x).copy()
    left = right = 0
    for column in range(300, 332):
        bumped = x.copy()
        bumped[..., column] += 10.0
        diff = np.abs(model.forward(bumped) - base).max(axis=(0, 1, 2))
        changed = np.flatnonzero(diff > 1e-12)
        left, right = max(left, column - changed.min()), max(right, changed.max() - column)
    assert geometry.align == 32
    assert left == right == geometry.radius


def test_fcn8s_geometry_is_the_hand_derived_one():
    # conv1_1..pool5 reach [32j-189, 32j+22]; fc6 adds 6*32 on the right; the three
    # transposed convolutions and the crops 5, 9, 31 centre it: y-245 ... y+245.
    assert fcn_geometry("fcn8s") == TileGeometry(align=32, radius=245)
    assert fcn_geometry("fcn8s").halo == 256


# --- the tiles ----------------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(1, 1), (37, 901), (900, 45), (1100, 1300)])
def test_tiles_partition_the_image_start_aligned_with_a_halo(height, width):
    geometry = fcn_geometry()
    tiles = plan_tiles(height, width, geometry, lambda h, w: max(h, w) <= 700)
    covered = np.zeros((height, width), dtype=np.int64)
    for t in tiles:
        covered[t.cy0:t.cy1, t.cx0:t.cx1] += 1
        assert t.y0 % 32 == 0 and t.x0 % 32 == 0
        assert max(t.y1 - t.y0, t.x1 - t.x0) <= 700
        for start, core_start, core_stop, stop, size in ((t.y0, t.cy0, t.cy1, t.y1, height),
                                                         (t.x0, t.cx0, t.cx1, t.x1, width)):
            assert start == 0 or core_start - start >= geometry.radius
            assert stop == size or stop - core_stop >= geometry.radius
    assert np.all(covered == 1)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("height,width", [(37, 901), (901, 29)])
def test_tiled_scores_equal_the_whole_image_scores(fcn8s, height, width, flip):
    """Seams across the columns, then across the rows; widths not on the alignment (the
    mirrored pass must widen its tiles)."""
    picture = image(height, width)
    labels, scores = whole_scores(fcn8s, picture, flip)
    limit = 128 + 2 * fcn_geometry().halo + 31
    tiles = plan_tiles(height, width, fcn_geometry(),
                       lambda h, w: max(h, w) <= limit, flip)
    assert len(tiles) >= 3
    for tile in tiles:
        core = scores[:, :, tile.cy0:tile.cy1, tile.cx0:tile.cx1]
        np.testing.assert_allclose(tile_scores(fcn8s, picture, tile, flip=flip), core,
                                   rtol=0, atol=SCORE_TOLERANCE)
    np.testing.assert_array_equal(predict_tiled(fcn8s, picture, tiles, flip=flip), labels[0])


def test_a_halo_short_of_the_reach_changes_the_scores(fcn8s):
    """The equality above is not automatic: with 160 pixels of overlap it fails."""
    picture = image(37, 901)
    _, scores = whole_scores(fcn8s, picture)
    tiles = plan_tiles(37, 901, TileGeometry(32, 160), columns_limited_to(128 + 320))
    worst = max(np.abs(tile_scores(fcn8s, picture, t)
                       - scores[:, :, t.cy0:t.cy1, t.cx0:t.cx1]).max() for t in tiles)
    assert worst > 1e-3


def test_evaluate_in_tiles_gives_the_whole_image_scores(fcn8s):
    pictures = [image(37, 901, seed) for seed in (1, 2)]
    masks = [np.random.default_rng(seed).integers(0, 3, (37, 901), dtype=np.uint8)
             for seed in (3, 4)]
    masks[1][:5] = 255
    dataset = list(zip(pictures, masks))
    budget = forward_bytes(fcn8s, 1, 37, 700)        # a whole image needs more
    whole = evaluate(fcn8s, dataset, batch_size=2, max_memory=1 << 40, boundary=True)
    tiled = evaluate(fcn8s, dataset, batch_size=2, max_memory=budget, boundary=True)
    assert len(tiles_for(fcn8s, 37, 901, budget)) > 1
    np.testing.assert_array_equal(tiled.hist, whole.hist)
    assert abs(tiled.loss - whole.loss) < SCORE_TOLERANCE
    assert tiled.metrics["boundary_f1"] == whole.metrics["boundary_f1"]


# --- memory ---------------------------------------------------------------------------------

def test_the_estimate_bounds_the_measured_peak():
    """forward_bytes is an upper bound of what numpy allocates (traced) in a forward pass,
    and not so loose that tiles get needlessly small (within 3x at this size)."""
    model = build_model("fcn8s", num_classes=5, width=0.0625).eval()
    picture = image(300, 260)
    predict_tiled(model, picture, [Tile(0, 300, 0, 260, 0, 300, 0, 260)])  # workspaces grown
    tracemalloc.start()
    try:
        predict_tiled(model, picture, [Tile(0, 300, 0, 260, 0, 300, 0, 260)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = forward_bytes(model, 1, 300, 260)
    assert peak <= estimate <= 3 * peak + (64 << 20)


def test_a_budget_too_small_for_one_tile_is_refused(fcn8s):
    with pytest.raises(MemoryBudgetError, match="too small"):
        tiles_for(fcn8s, 2000, 2000, max_memory=1 << 20)


def test_the_default_budget_tiles_a_9000_pixel_image():
    model = build_model("fcn8s", num_classes=5, width=0.0625)
    tiles = tiles_for(model, 9000, 9000)
    assert len(tiles) > 1
    assert all(forward_bytes(model, 1, t.y1 - t.y0, t.x1 - t.x0) <= 1 << 30 for t in tiles)


@pytest.mark.parametrize("text,expected", [("1073741824", 1 << 30), ("1.5G", 3 << 29),
                                           ("800M", 800 << 20), ("2GiB", 2 << 30), ("64k", 65536)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "1.5X", "0"])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(3 << 29) == "1.5 GiB" and format_bytes(512) == "512 B"


# --- the command line -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    runs = tmp_path_factory.mktemp("tiling") / "runs"
    assert main(["train", "--width", "0.0625", "--image-size", "24", "--num-train", "2",
                 "--num-val", "2", "--batch-size", "2", "--epochs", "1", "--output", str(runs),
                 "--name", "tiny"]) == 0
    return str(runs / "tiny" / "best.npz")


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("npfcn: error: ")
    return err[0]


def test_predict_in_tiles_writes_the_whole_image_mask(checkpoint, tmp_path):
    Image.fromarray(image(40, 700)).save(tmp_path / "wide.png")
    tile_budget = forward_bytes(build_model("fcn8s", num_classes=5, width=0.0625), 1, 40, 600)
    masks = {}
    for budget in ("100G", str(tile_budget)):
        out = tmp_path / budget
        assert main(["predict", "--checkpoint", checkpoint, str(tmp_path / "wide.png"),
                     "-o", str(out), "--max-memory", budget]) == 0
        with Image.open(out / "wide_mask.png") as mask:
            masks[budget] = np.asarray(mask.convert("RGB"))
    # float32 kernels may round differently in a tile: a near-tie pixel may flip
    agree = np.all(masks["100G"] == masks[str(tile_budget)], axis=2).mean()
    assert agree > 0.999


def test_predict_with_a_budget_too_small_is_one_line(checkpoint, tmp_path, capsys):
    Image.fromarray(image(600, 600)).save(tmp_path / "big.png")
    assert main(["predict", "--checkpoint", checkpoint, str(tmp_path / "big.png"),
                 "-o", str(tmp_path / "out"), "--max-memory", "1M"]) == 1
    assert "too small" in error_line(capsys)


def test_a_bad_max_memory_is_a_usage_error(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--checkpoint", checkpoint, "x.png", "--max-memory", "lots"])
    assert exit_info.value.code == 2
    assert "not a memory size" in capsys.readouterr().err


def test_memory_error_anywhere_is_one_line(checkpoint, tmp_path, capsys, monkeypatch):
    import npfcn.evaluate

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 9.00 GiB for an array with shape (1, 4, 9000, 9000)")

    monkeypatch.setattr(npfcn.evaluate, "evaluate", out_of_memory)
    assert main(["eval", "--checkpoint", checkpoint, "-o", str(tmp_path / "eval")]) == 1
    line = error_line(capsys)
    assert "out of memory" in line and "9.00 GiB" in line


# --- the encoder-decoder nets (npfcn.models.segnet) -------------------------------------------

def random_bn_net(name):
    """A float64 net of npfcn.models.segnet with random weights and BN statistics, in eval."""
    model = build_model(name, num_classes=3, width=0.0625, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for key, value in model.params.items():
        if key.endswith("running_var"):
            value[...] = rng.uniform(0.5, 2.0, value.shape)
        else:
            fan_in = max(1, int(np.prod(value.shape[1:])))
            value[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), value.shape)
    return model.eval()


@pytest.mark.parametrize("name", ["segnet-basic", "fcn-basic", "segnet"])
def test_encoder_decoder_nets_tile_to_the_whole_image_scores(name):
    """Seams across the columns of an image whose width is not on the alignment (and with
    a halo two alignments short they show); the changed outputs of a one-column
    perturbation stay within the radius."""
    from npfcn.tiling import geometry_of

    model = random_bn_net(name)
    geometry = geometry_of(model)
    picture = image(20, 2 * geometry.halo + 3 * geometry.align + 7, seed=3)
    labels, scores = whole_scores(model, picture)
    tiles = plan_tiles(*picture.shape[:2], geometry,
                       columns_limited_to(geometry.align + 2 * geometry.halo))
    assert len(tiles) >= 3
    for tile in tiles:
        np.testing.assert_allclose(tile_scores(model, picture, tile),
                                   scores[:, :, tile.cy0:tile.cy1, tile.cx0:tile.cx1],
                                   rtol=0, atol=SCORE_TOLERANCE)
    short = TileGeometry(geometry.align, geometry.radius - 2 * geometry.align)
    worst = max(np.abs(tile_scores(model, picture, t)
                       - scores[:, :, t.cy0:t.cy1, t.cx0:t.cx1]).max()
                for t in plan_tiles(*picture.shape[:2], short,
                                    columns_limited_to(short.align + 2 * short.halo)))
    assert worst > 1e-3                  # two alignments less overlap: the seams show
    x = preprocess(picture)[None].astype(np.float64)
    column = picture.shape[1] // 2
    bumped = x.copy()
    bumped[..., column] += 10.0
    changed = np.flatnonzero(np.abs(model.forward(bumped) - scores).max(axis=(0, 1, 2)) > 1e-12)
    assert changed.min() >= column - geometry.radius and changed.max() <= column + geometry.radius


@pytest.mark.parametrize("name,width", [("segnet-basic", 0.25), ("fcn-basic", 0.25),
                                        ("segnet", 0.125), ("plain", 0.125)])
def test_the_encoder_decoder_estimate_bounds_the_measured_peak(name, width):
    model = build_model(name, num_classes=11, width=width).eval()
    picture = image(180, 240)
    whole = [Tile(0, 180, 0, 240, 0, 180, 0, 240)]
    predict_tiled(model, picture, whole)
    tracemalloc.start()
    try:
        predict_tiled(model, picture, whole)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = forward_bytes(model, 1, 180, 240) - (64 << 20)     # without the fixed allowance
    assert peak <= estimate <= 4 * peak
