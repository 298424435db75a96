"""Tests for npfcn.data: the synthetic dataset, file loaders, transforms, batching, colour map."""
import numpy as np
import pytest
from PIL import Image

from npfcn.data import (PREPROCESSING, VOC_CLASSES, Compose, FolderDataset, RandomCrop,
                        RandomHorizontalFlip, RandomScale, RandomSymmetry, SyntheticShapes, VOCSegmentation,
                        deprocess, iterate_batches, open_dataset, preprocess, synthetic_splits,
                        voc_colormap)
from npfcn.data import synthetic


# --- the synthetic dataset --------------------------------------------------------------

def test_same_seed_gives_identical_items_in_any_access_order():
    a = SyntheticShapes(20, seed=3)
    b = SyntheticShapes(20, seed=3, cache=False)
    forward = [a[i] for i in range(20)]
    backward = [b[i] for i in reversed(range(20))][::-1]
    for (ia, ma), (ib, mb) in zip(forward, backward):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    # item i does not depend on how many items the split has
    np.testing.assert_array_equal(SyntheticShapes(5, seed=3)[4][0], forward[4][0])


def test_different_seed_or_split_gives_different_items():
    base = SyntheticShapes(5, seed=0)[0][0]
    assert not np.array_equal(base, SyntheticShapes(5, seed=1)[0][0])
    assert not np.array_equal(base, SyntheticShapes(5, seed=0, split="val")[0][0])


def test_items_have_documented_shapes_and_dtypes():
    train, val = synthetic_splits(train_size=7, val_size=3, image_size=48)
    assert (len(train), len(val)) == (7, 3)
    image, mask = train[6]
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 48) and mask.dtype == np.uint8
    assert train.num_classes == len(train.class_names) == 5
    assert train.class_names[0] == "background"
    assert len(set(train.names + val.names)) == 10          # names unique across splits
    with pytest.raises(IndexError):
        train[7]


def test_every_class_appears_and_classes_are_roughly_balanced():
    train = SyntheticShapes(200, seed=0)
    masks = np.stack([train[i][1] for i in range(len(train))])
    share = np.bincount(masks.ravel(), minlength=5) / masks.size
    assert masks.max() == 4
    # equal-area shapes drawn with equal probability: each shape class covers a similar
    # share (expected ~7%; 3% to 12% allows for 200 images of sampling noise and occlusion)
    assert np.all((share[1:] > 0.03) & (share[1:] < 0.12)), share
    assert share[0] > 0.5


@pytest.fixture(scope="module")
def colour_samples():
    """Foreground pixel colours and labels from a train and a val split."""
    def pixels(split):
        ds = SyntheticShapes(300, split=split, seed=1)
        images = np.stack([ds[i][0] for i in range(len(ds))]).reshape(-1, 3)
        masks = np.stack([ds[i][1] for i in range(len(ds))]).reshape(-1)
        return images, masks
    return pixels("train"), pixels("val")


def test_every_class_has_about_the_same_mean_colour(colour_samples):
    (images, masks), _ = colour_samples
    means = np.array([images[masks == c].mean(axis=0) for c in range(5)])
    # Colours are uniform over the RGB cube for every class: mean 127.5 per channel.  With
    # ~200 shapes per class the per-shape std of 74 gives ~5 std of the mean (more with
    # pixel weighting); 20 is a generous bound that a class-dependent palette would break.
    assert np.abs(means - 127.5).max() < 20, means


def test_colour_alone_does_not_predict_the_shape_class(colour_samples):
    # The best colour-only classifier: label each colour bin (8 per channel) with the
    # shape class most frequent there in the train split, then score it on val foreground.
    (train_px, train_y), (val_px, val_y) = colour_samples
    def bins(px):
        q = px // 32
        return (q[:, 0].astype(np.int64) * 8 + q[:, 1]) * 8 + q[:, 2]
    fg, vfg = train_y > 0, val_y > 0
    counts = np.zeros((512, 5))
    np.add.at(counts, (bins(train_px[fg]), train_y[fg]), 1)
    rule = counts.argmax(axis=1)
    accuracy = np.mean(rule[bins(val_px[vfg])] == val_y[vfg])
    majority = np.bincount(val_y[vfg]).max() / vfg.sum()
    # four balanced classes: chance ~0.25-0.3; a colour that gave the class would score ~1
    assert accuracy < majority + 0.15, (accuracy, majority)


@pytest.mark.parametrize("raster", [synthetic._disc, synthetic._square, synthetic._triangle,
                                    synthetic._ring])
def test_every_shape_has_area_size_squared(raster):
    yy, xx = np.mgrid[0:200, 0:200] + 0.5
    area = raster(yy, xx, 100.0, 100.0, 60.0, 0.3).sum()
    # pixel-centre sampling of a 3600-pixel shape: error ~ perimeter/2 pixels at worst, < 3%
    assert abs(area - 3600) < 0.03 * 3600


@pytest.mark.parametrize("raster", [synthetic._disc, synthetic._square, synthetic._triangle,
                                    synthetic._ring])
def test_every_shape_lies_inside_the_box_the_generator_rasterises(raster):
    """generate_item draws each shape only inside _box(centre, size): nothing may be cut."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for _ in range(300):
        size, angle = rng.uniform(2, 50), rng.uniform(0, 2 * np.pi)
        cy, cx = rng.uniform(-10, 74, size=2)
        region = raster(yy, xx, cy, cx, size, angle)
        rows, cols = synthetic._box(cy, size, 64), synthetic._box(cx, size, 64)
        outside = region.copy()
        outside[rows, cols] = False
        assert not outside.any(), (size, angle, cy, cx)
        assert region[rows, cols].sum() == region.sum()


def test_ring_has_a_hole_and_disc_has_none():
    yy, xx = np.mgrid[0:100, 0:100] + 0.5
    assert not synthetic._ring(yy, xx, 50.0, 50.0, 40.0, 0.0)[50, 50]
    assert synthetic._disc(yy, xx, 50.0, 50.0, 40.0, 0.0)[50, 50]


def test_synthetic_options_are_checked():
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(3, split="holdout")
    with pytest.raises(ValueError, match="scale"):
        SyntheticShapes(3, min_scale=0.5, max_scale=0.2)
    with pytest.raises(TypeError, match="image_size"):
        SyntheticShapes(3, image_size=64.0)


# --- the colour map ---------------------------------------------------------------------

def test_voc_colormap_known_entries():
    cmap = voc_colormap(256)
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    # from the VOC devkit's palette: background, aeroplane, bicycle, person, void
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[2].tolist() == [0, 128, 0]
    assert cmap[15].tolist() == [192, 128, 128]
    assert cmap[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in cmap}) == 256
    np.testing.assert_array_equal(voc_colormap(21), cmap[:21])


# --- transforms -------------------------------------------------------------------------

def _derived_pair(rng, h=20, w=30):
    """An image and a mask that is a function of it (mask = red // 64), to check alignment."""
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return image, image[..., 0] // 64


def test_crop_and_flip_keep_the_mask_aligned(rng):
    transform = Compose([RandomHorizontalFlip(p=0.5), RandomCrop((9, 11))])
    for _ in range(20):
        image, mask = _derived_pair(rng)
        out_image, out_mask = transform(image, mask, rng)
        assert out_image.shape == (9, 11, 3) and out_mask.shape == (9, 11)
        np.testing.assert_array_equal(out_mask, out_image[..., 0] // 64)


def test_flip_mirrors_both():
    image, mask = _derived_pair(np.random.default_rng(1))
    out_image, out_mask = RandomHorizontalFlip(p=1.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])


def _symmetries(array):
    """The 8 symmetries of a square array's first two axes (4 rotations, each mirrored)."""
    rotations = [np.rot90(array, k) for k in range(4)]
    return rotations + [r[:, ::-1] for r in rotations]


def test_symmetry_draws_each_of_the_eight_and_keeps_the_mask_aligned():
    rng = np.random.default_rng(3)
    image, mask = _derived_pair(rng, h=6, w=6)
    candidates = _symmetries(image)
    # the 8 are distinct for a random image, so the index of the match identifies the draw
    assert len({c.tobytes() for c in candidates}) == 8
    counts = np.zeros(8, dtype=int)
    for _ in range(800):
        out_image, out_mask = RandomSymmetry()(image, mask, rng)
        np.testing.assert_array_equal(out_mask, out_image[..., 0] // 64)
        assert out_image.flags.c_contiguous and out_mask.flags.c_contiguous
        matches = [k for k, c in enumerate(candidates) if np.array_equal(out_image, c)]
        assert len(matches) == 1
        counts[matches[0]] += 1
    # uniform: 100 expected per symmetry, binomial standard deviation ~9.4; 55 and 145
    # are ~4.8 standard deviations away (rng is seeded, so this is also repeatable)
    assert counts.min() > 55 and counts.max() < 145, counts


def test_symmetry_keeps_an_oblong_image_oblong():
    """No transpose for H != W (a batch must keep one size): the 4 symmetries of a rectangle."""
    rng = np.random.default_rng(4)
    image, mask = _derived_pair(rng, h=5, w=8)
    candidates = [image, image[::-1], image[:, ::-1], image[::-1, ::-1]]
    seen = set()
    for _ in range(200):
        out_image, out_mask = RandomSymmetry()(image, mask, rng)
        assert out_image.shape == (5, 8, 3)
        np.testing.assert_array_equal(out_mask, out_image[..., 0] // 64)
        seen.update(k for k, c in enumerate(candidates) if np.array_equal(out_image, c))
    assert seen == {0, 1, 2, 3}


def test_crop_pads_small_images_with_void_labels(rng):
    image, mask = _derived_pair(rng, h=5, w=7)
    out_image, out_mask = RandomCrop(10, fill=(1, 2, 3))(image, mask, rng)
    assert out_image.shape == (10, 10, 3)
    # the original pixels survive (padding goes bottom/right), the rest is void / fill
    np.testing.assert_array_equal(out_image[:5, :7], image)
    np.testing.assert_array_equal(out_mask[:5, :7], mask)
    assert (out_mask == 255).sum() == 100 - 35
    assert np.all(out_image[5:, :] == [1, 2, 3]) and np.all(out_image[:, 7:] == [1, 2, 3])


def test_scale_keeps_the_mask_aligned(rng):
    # 6x6-pixel blocks of one label each, red channel = 40 * label + 20.  Bilinear resizing
    # keeps block interiors exact and nearest resizing moves label edges by < 1 pixel, so
    # nearly all pixels must still satisfy label == (red - 20) / 40.
    labels = rng.integers(0, 5, size=(6, 8))
    mask = np.kron(labels, np.ones((6, 6), dtype=np.int64)).astype(np.uint8)
    image = np.zeros(mask.shape + (3,), dtype=np.uint8)
    image[..., 0] = 40 * mask + 20
    out_image, out_mask = RandomScale(1.5, 1.5)(image, mask, rng)
    assert out_mask.shape == (54, 72) and out_image.shape == (54, 72, 3)
    assert out_mask.dtype == np.uint8 and set(np.unique(out_mask)) <= set(np.unique(mask))
    decoded = np.rint((out_image[..., 0].astype(float) - 20) / 40)
    # block edges are 1/9 of the pixels at this block size; a misaligned mask (shifted by a
    # pixel or more) would disagree on all of them
    assert np.mean(decoded == out_mask) > 0.9


def test_transforms_are_deterministic_given_the_generator():
    image, mask = _derived_pair(np.random.default_rng(2), h=30, w=30)
    t = Compose([RandomScale(0.7, 1.3), RandomHorizontalFlip(), RandomCrop(16)])
    a = t(image, mask, np.random.default_rng(5))
    b = t(image, mask, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_preprocess_specs_by_hand():
    image = np.array([[[255, 0, 51]]], dtype=np.uint8)       # one pixel, R=255 G=0 B=51
    x = preprocess(image, "torchvision")
    assert x.shape == (3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224,
                                            (0.2 - 0.406) / 0.225], rtol=1e-6)
    x = preprocess(image, "caffe")                            # BGR, 0-255 minus mean
    np.testing.assert_allclose(x[:, 0, 0], [51 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-6)
    x = preprocess(image, "unit")
    np.testing.assert_allclose(x[:, 0, 0], [2.0, -2.0, -1.2], rtol=1e-6)
    assert set(PREPROCESSING) == {"torchvision", "caffe", "unit"}


def test_deprocess_inverts_preprocess(rng):
    image = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    for name in PREPROCESSING:
        np.testing.assert_array_equal(deprocess(preprocess(image, name), name), image)


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown preprocessing"):
        preprocess(np.zeros((2, 2, 3), np.uint8), "imagenet")
    with pytest.raises(TypeError, match="uint8"):
        preprocess(np.zeros((2, 2, 3), np.float32), "unit")


# --- batching ---------------------------------------------------------------------------

def test_batches_have_documented_shapes_and_cover_every_item():
    ds = SyntheticShapes(10, image_size=32)
    batches = list(iterate_batches(ds, 4, rng=np.random.default_rng(0)))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert y.shape == (4, 32, 32) and y.dtype == np.int64
    # every item exactly once: match the label maps back to the dataset's
    seen = np.concatenate([y for _, y in batches])
    masks = np.stack([ds[i][1] for i in range(10)]).astype(np.int64)
    order = [next(i for i in range(10) if np.array_equal(m, masks[i])) for m in seen]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert [len(x) for x, _ in iterate_batches(ds, 4, drop_last=True)] == [4, 4]


def test_batches_in_order_without_rng_and_repeatable_with_seed():
    ds = SyntheticShapes(5, image_size=32)
    x, y = next(iterate_batches(ds, 5))
    np.testing.assert_array_equal(y[2], ds[2][1])
    np.testing.assert_array_equal(x[2], preprocess(ds[2][0], "unit"))
    crop = RandomCrop(20)
    a = list(iterate_batches(ds, 2, rng=np.random.default_rng(1), transform=crop))
    b = list(iterate_batches(ds, 2, rng=np.random.default_rng(1), transform=crop))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


class _MixedSizes:
    names = ["small", "large"]

    def __len__(self):
        return 2

    def __getitem__(self, i):
        side = (8, 12)[i]
        return np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.uint8)


def test_batch_of_different_sizes_is_a_clear_error():
    with pytest.raises(ValueError, match="small: 8x8, large: 12x12"):
        list(iterate_batches(_MixedSizes(), 2))
    assert len(list(iterate_batches(_MixedSizes(), 1))) == 2
    (x, y), = iterate_batches(_MixedSizes(), 2, transform=RandomCrop(10))
    assert x.shape == (2, 3, 10, 10)


# --- file datasets: trees written by the tests ------------------------------------------

def _palette_png(path, mask):
    """Write ``mask`` as a palette PNG with Pillow directly (independent of npfcn)."""
    image = Image.new("P", (mask.shape[1], mask.shape[0]))
    image.putdata(mask.ravel().tolist())
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def _write_pair(image_path, mask_path, rng, h=12, w=16, labels=(0, 1, 2, 255)):
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    mask = rng.choice(np.array(labels, dtype=np.uint8), size=(h, w))
    Image.fromarray(image).save(image_path)
    _palette_png(mask_path, mask)
    return image, mask


def _voc_tree(root, rng, splits={"train": ["a", "b"], "val": ["c"]}):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    masks = {}
    for split, ids in splits.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            _, masks[i] = _write_pair(root / "JPEGImages" / f"{i}.jpg",
                                      root / "SegmentationClass" / f"{i}.png", rng,
                                      labels=(0, 5, 20, 255))
    return masks


def test_voc_loader_reads_palette_indices(tmp_path, rng):
    masks = _voc_tree(tmp_path, rng)
    ds = VOCSegmentation(tmp_path, "train")
    assert len(ds) == 2 and ds.names == ["a", "b"]
    assert ds.num_classes == 21 and ds.class_names == list(VOC_CLASSES)
    image, mask = ds[1]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(mask, masks["b"])          # palette index = class, 255 kept
    assert len(VOCSegmentation(tmp_path, "val")) == 1


def test_open_dataset_detects_each_layout(tmp_path, rng):
    _voc_tree(tmp_path / "VOCdevkit" / "VOC2012", rng)
    assert isinstance(open_dataset(tmp_path, "val"), VOCSegmentation)
    folder = tmp_path / "mine"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    _write_pair(folder / "images" / "x.png", folder / "masks" / "x.png", rng)
    assert isinstance(open_dataset(folder, "train"), FolderDataset)
    assert isinstance(open_dataset("synthetic", "val"), SyntheticShapes)
    with pytest.raises(ValueError, match="neither a VOC layout"):
        open_dataset(tmp_path / "mine" / "images", "train")


def test_folder_dataset_grayscale_masks_and_class_file(tmp_path, rng):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = rng.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    mask = np.array([[0, 1, 2, 255, 1, 0, 0, 2, 1]] * 6, dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "images" / "p.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "p.png")            # mode "L"
    ds = FolderDataset(tmp_path)
    assert ds.num_classes == 3                                         # inferred: max 2, plus one
    got_image, got_mask = ds[0]
    np.testing.assert_array_equal(got_image, image)                     # PNG is lossless
    np.testing.assert_array_equal(got_mask, mask)
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\nbike\n")
    ds = FolderDataset(tmp_path)
    assert ds.class_names == ["sky", "road", "car", "bike"] and ds.names == ["p"]


def test_folder_splits_agree_on_the_class_count(tmp_path, rng):
    for split, labels in (("train", (0, 1)), ("val", (0, 3))):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        _write_pair(tmp_path / split / "images" / "i.png", tmp_path / split / "masks" / "i.png",
                    rng, labels=labels)
    assert open_dataset(tmp_path, "train").num_classes == 4
    assert open_dataset(tmp_path, "val").num_classes == 4


# --- file datasets: every error names the file ------------------------------------------

@pytest.fixture
def folder_tree(tmp_path, rng):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("background\nthing\nother\n")
    _write_pair(tmp_path / "images" / "good.png", tmp_path / "masks" / "good.png", rng)
    return tmp_path


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(tmp_path / "nowhere", "train")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="masks"):
        FolderDataset(tmp_path)


def test_empty_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no images in .*images"):
        FolderDataset(tmp_path)


def test_image_without_mask(folder_tree, rng):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder_tree / "images" / "lonely.jpg")
    with pytest.raises(FileNotFoundError, match="lonely.jpg has no mask"):
        FolderDataset(folder_tree)


def test_voc_image_without_mask_and_missing_split(tmp_path, rng):
    _voc_tree(tmp_path, rng)
    (tmp_path / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.jpg has no mask"):
        VOCSegmentation(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        VOCSegmentation(tmp_path, "test")


def test_truncated_image(folder_tree):
    path = folder_tree / "images" / "good.png"
    path.write_bytes(path.read_bytes()[:60])
    ds = FolderDataset(folder_tree)
    with pytest.raises(ValueError, match="cannot read image .*good.png"):
        ds[0]


def test_unreadable_mask(folder_tree):
    (folder_tree / "masks" / "good.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="cannot read mask .*good.png"):
        FolderDataset(folder_tree)[0]


def test_image_and_mask_of_different_sizes(folder_tree):
    _palette_png(folder_tree / "masks" / "good.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"good.png is 16x12 .* mask .*good.png is 5x5"):
        FolderDataset(folder_tree)[0]


def test_mask_value_neither_class_nor_void(folder_tree):
    mask = np.zeros((12, 16), np.uint8)
    mask[3, 4] = 7
    _palette_png(folder_tree / "masks" / "good.png", mask)
    with pytest.raises(ValueError, match=r"masks.good.png has value\(s\) 7, neither a class id \(0..2\)"):
        FolderDataset(folder_tree)[0]


def test_missing_split_folder_names_the_splits_found(tmp_path, rng):
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir()
    _write_pair(tmp_path / "train" / "images" / "i.png", tmp_path / "train" / "masks" / "i.png", rng)
    with pytest.raises(FileNotFoundError, match="no val/images .*splits found: train"):
        open_dataset(tmp_path, "val")
