"""Segmentation datasets stored as files: reading and checking images and masks, and the
plain ``images/`` + ``masks/`` folder layout.

Folder layout (a mask has the same file stem as its image)::

    root/images/cat1.jpg      root/masks/cat1.png     root/classes.txt (optional)

or one such pair of folders per split (``root/train/images``, ``root/val/masks``, ...).
Masks are palette PNGs (the palette index is the class, as VOC) or grayscale PNGs whose
values are class indices; 255 marks void pixels that are never scored.  ``classes.txt``
holds one class name per line (line k = class k); without it the number of classes is
the largest mask value (ignoring 255) plus one, read from every mask under ``root``.

Every problem raises FileNotFoundError or ValueError naming the file.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from .colormap import VOID_LABEL, voc_colormap

# Any extension Pillow can open counts as an image (".jpg", ".png", ".bmp", ".tif", ...).
IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in Image.registered_extensions())
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _open_checked(path, what):
    """Open and fully decode ``path`` with Pillow (so truncated files fail here, not later)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except _PIL_ERRORS as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from None


def read_image(path):
    """The image at ``path`` as (H, W, 3) uint8 RGB (grayscale, palette, RGBA converted)."""
    image = _open_checked(path, "image")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _colours_to_indices(rgb, path):
    """An RGB-coded mask (VOC colours) -> class indices; unknown colours are an error."""
    table = voc_colormap(256).astype(np.int64)
    codes = (table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2]
    lookup = {int(code): index for index, code in enumerate(codes)}
    pixel_codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    unique, inverse = np.unique(pixel_codes, return_inverse=True)
    indices = np.empty(len(unique), dtype=np.uint8)
    for k, code in enumerate(unique):
        if int(code) not in lookup:
            colour = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
            raise ValueError(f"mask {path} is an RGB image with colour {colour}, which is not a "
                             "VOC palette colour; save masks as palette or grayscale PNGs of class ids")
        indices[k] = lookup[int(code)]
    return indices[inverse.reshape(pixel_codes.shape)]


def read_mask(path):
    """The class-index mask at ``path`` as (H, W) uint8.

    Palette ("P") images give their palette indices; grayscale ones their values; RGB ones
    are read as gray when the channels agree, else decoded through the VOC colour map.
    """
    image = _open_checked(path, "mask")
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 255 or np.any(values != np.round(values))):
            raise ValueError(f"mask {path} holds values outside 0..255; class ids must fit in 8 bits")
        return values.astype(np.uint8)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].copy()
    return _colours_to_indices(rgb, path)


def check_mask_values(mask, num_classes, path):
    """ValueError naming ``path`` if a value is neither a class id (< num_classes) nor 255."""
    bad = (mask >= num_classes) & (mask != VOID_LABEL)
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))
        shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
        raise ValueError(f"mask {path} has value(s) {shown}, neither a class id "
                         f"(0..{num_classes - 1}) nor {VOID_LABEL} (void)")


class FileSegmentationDataset:
    """Items read from disk on access: ``ds[i] -> (image (H, W, 3) uint8, mask (H, W) uint8)``.

    Subclasses fill ``names``, ``image_paths``, ``mask_paths``, ``class_names``.
    """

    names: list
    image_paths: list
    mask_paths: list
    class_names: list
    scale = 1.0         # resize factor applied as items are read (``rescaled``)

    def read_mask(self, path):
        """The mask file at ``path`` as class ids (a layout with its own coding overrides this)."""
        return read_mask(path)

    def rescaled(self, factor):
        """Resize every item by ``factor`` from now on (images bilinear, masks nearest); self."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
                or not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"scale must be a positive number, got {factor!r}")
        self.scale = float(factor)
        return self

    def limited(self, count):
        """Keep only the first ``count`` items (all of them if there are fewer); self."""
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"number of images must be a positive integer, got {count!r}")
        self.names, self.image_paths, self.mask_paths = (
            self.names[:count], self.image_paths[:count], self.mask_paths[:count])
        return self

    @property
    def num_classes(self):
        return len(self.class_names)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        image_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(image_path)
        mask = self.read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but "
                             f"its mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}")
        check_mask_values(mask, self.num_classes, mask_path)
        if self.scale != 1.0:
            image, mask = resize_pair(image, mask, self.scale)
        return image, mask

    def __repr__(self):
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} items, {self.num_classes} classes)"


def resize_pair(image, mask, factor):
    """Image (H, W, 3) bilinear and mask (H, W) nearest to round(H*factor) x round(W*factor)
    (at least 1x1): labels must not be blended into classes nobody drew."""
    h, w = mask.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return image.copy(), mask.copy()


def _files_by_stem(folder, what):
    """{stem: path} for the image files in ``folder``; ValueError on two files with one stem."""
    by_stem = {}
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            if path.stem in by_stem:
                raise ValueError(f"two {what} files share the name {path.stem!r}: "
                                 f"{by_stem[path.stem]} and {path}")
            by_stem[path.stem] = path
    return by_stem


def read_class_names(path):
    """Class names from a text file, one per line (blank lines and '#' comments skipped)."""
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"class list {path} is empty")
    if len(names) > VOID_LABEL:
        raise ValueError(f"class list {path} has {len(names)} classes; at most {VOID_LABEL} fit "
                         "beside the void label 255")
    if len(set(names)) != len(names):
        raise ValueError(f"class list {path} names a class twice")
    return names


def find_layout_folder(root, split):
    """The folder holding ``images/`` and ``masks/`` for ``split``: ``root/split`` if it has
    them, else ``root`` itself (one folder used for every split)."""
    root = Path(root)
    if split is not None and (root / split / "images").is_dir():
        return root / split
    if not (root / "images").is_dir():
        splits = sorted(p.parent.name for p in root.glob("*/images") if p.is_dir())
        if splits:
            raise FileNotFoundError(f"no {split}/images folder under {root} "
                                    f"(splits found: {', '.join(splits)})")
    return root


class FolderDataset(FileSegmentationDataset):
    """The ``images/`` + ``masks/`` layout (see the module docstring).

    ``num_classes``: force the class count (for a val split, pass the train split's count so
    both agree); otherwise it comes from ``classes.txt`` or is inferred from the masks.
    """

    def __init__(self, root, split=None, num_classes=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root}")
        self.split = split
        folder = find_layout_folder(self.root, split)
        images_dir, masks_dir = folder / "images", folder / "masks"
        for d in (images_dir, masks_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"folder not found: {d} (expected images/ and masks/ "
                                        f"under {folder})")
        images = _files_by_stem(images_dir, "image")
        if not images:
            raise ValueError(f"no images in {images_dir}")
        masks = _files_by_stem(masks_dir, "mask")
        missing = [stem for stem in images if stem not in masks]
        if missing:
            raise FileNotFoundError(f"image {images[missing[0]]} has no mask "
                                    f"(expected {masks_dir / (missing[0] + '.png')})"
                                    + (f" and {len(missing) - 1} more images lack masks" if len(missing) > 1 else ""))
        self.names = list(images)
        self.image_paths = [images[s] for s in self.names]
        self.mask_paths = [masks[s] for s in self.names]
        self.class_names = self._class_names(folder, num_classes)

    def _class_names(self, folder, num_classes):
        for candidate in (folder / "classes.txt", self.root / "classes.txt"):
            if candidate.is_file():
                names = read_class_names(candidate)
                if num_classes is not None and num_classes != len(names):
                    raise ValueError(f"num_classes={num_classes} but {candidate} lists {len(names)} classes")
                return names
        if num_classes is None:
            num_classes = self._infer_num_classes()
        if not 1 <= num_classes <= VOID_LABEL:
            raise ValueError(f"num_classes must be in 1..{VOID_LABEL}, got {num_classes}")
        return [f"class_{k}" for k in range(num_classes)]

    def _infer_num_classes(self):
        # Read every mask under the root (all splits), so train and val agree on the count.
        largest = -1
        for masks_dir in sorted({p.parent for p in self.root.glob("**/masks/*")}):
            for path in _files_by_stem(masks_dir, "mask").values():
                values = np.unique(read_mask(path))
                values = values[values != VOID_LABEL]
                if values.size:
                    largest = max(largest, int(values.max()))
        if largest < 0:
            raise ValueError(f"cannot infer the number of classes: every mask under {self.root} "
                             "is void; add a classes.txt")
        return largest + 1
