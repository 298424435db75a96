"""The PASCAL VOC segmentation layout, and ``open_dataset`` which recognises every layout.

VOC layout::

    root/JPEGImages/2007_000032.jpg
    root/SegmentationClass/2007_000032.png      palette PNG: index = class, 255 = void
    root/ImageSets/Segmentation/train.txt       one image id per line (also val.txt, ...)

``root`` may also be a folder holding ``VOC2012/`` or ``VOCdevkit/VOC2012/``.
"""
from pathlib import Path

from .colormap import VOC_CLASSES
from .folder import FileSegmentationDataset, FolderDataset


def find_voc_root(root):
    """The folder that holds ``JPEGImages`` and ``SegmentationClass``, or None."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    return None


class VOCSegmentation(FileSegmentationDataset):
    """PASCAL VOC segmentation split ``split`` ("train", "val", "trainval", ...) under ``root``."""

    class_names = list(VOC_CLASSES)

    def __init__(self, root, split="train"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        voc = find_voc_root(self.root)
        if voc is None:
            raise FileNotFoundError(f"no VOC layout under {self.root}: expected JPEGImages/ and "
                                    "SegmentationClass/ folders")
        self.split = split
        list_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            available = sorted(p.stem for p in list_file.parent.glob("*.txt")) if list_file.parent.is_dir() else []
            raise FileNotFoundError(f"split list not found: {list_file}"
                                    + (f" (available splits: {', '.join(available)})" if available else ""))
        with open(list_file, encoding="utf-8") as handle:
            ids = [line.split()[0] for line in handle if line.strip()]
        if not ids:
            raise ValueError(f"split list {list_file} names no images")
        self.names = ids
        self.image_paths = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
        self.mask_paths = [voc / "SegmentationClass" / f"{i}.png" for i in ids]
        for image_path, mask_path in zip(self.image_paths, self.mask_paths):
            if not image_path.is_file():
                raise FileNotFoundError(f"image not found: {image_path} (listed in {list_file})")
            if not mask_path.is_file():
                raise FileNotFoundError(f"image {image_path} has no mask (expected {mask_path})")


def open_dataset(path, split="train", **options):
    """A dataset from ``path``: ``"synthetic"`` (the built-in shapes; ``options`` go to
    ``SyntheticShapes``), ``"camvid:DIR"`` or a folder in CamVid's layout (npfcn.data.camvid),
    a VOC-layout folder, or an ``images/`` + ``masks/`` folder
    (``options`` go to ``FolderDataset``, e.g. ``num_classes``).  The layout is detected."""
    if isinstance(path, str) and path == "synthetic":
        from .synthetic import SyntheticShapes
        return SyntheticShapes(split=split, **options)
    from .camvid import PREFIX, is_camvid_layout, open_camvid
    if isinstance(path, str) and path.startswith(PREFIX):
        return open_camvid(path, split)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"dataset path {root} is a file, not a folder")
    if find_voc_root(root) is not None:
        if options:
            raise TypeError(f"VOC datasets take no options, got {sorted(options)}")
        return VOCSegmentation(root, split)
    if (root / "images").is_dir() or any(p.is_dir() for p in root.glob("*/images")):
        return FolderDataset(root, split, **options)
    if is_camvid_layout(root):
        return open_camvid(root, split)
    raise ValueError(f"{root} is neither a VOC layout (JPEGImages/, SegmentationClass/, "
                     "ImageSets/Segmentation/) nor an images/ + masks/ folder")
