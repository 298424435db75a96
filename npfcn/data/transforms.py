"""Joint image/mask transforms and the input normalisations.

Every transform is a callable ``transform(image, mask, rng) -> (image, mask)`` with
``image`` (H, W, 3) uint8 RGB, ``mask`` (H, W) uint8 and ``rng`` a numpy Generator (all
randomness comes from it, so a seeded run is repeatable).  Geometric transforms move the
image and the mask together, so every pixel keeps its label.

``preprocess(image, spec)`` turns a uint8 (H, W, 3) image into the float32 (3, H, W) input a
network expects; ``PREPROCESSING`` names the three specs npfcn knows.
"""
import numpy as np
from PIL import Image

from .colormap import VOID_LABEL

# A spec says how raw RGB uint8 pixels become network input:
#   x = (pixels[channel_order] * scale - mean) / std, then HWC -> CHW.
PREPROCESSING = {
    # torchvision's pretrained VGG16: RGB in [0, 1], ImageNet mean/std.
    "torchvision": {"channel_order": "RGB", "scale": 1.0 / 255.0,
                    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    # The Caffe reference FCN / VGG16: BGR in 0-255 minus the ImageNet mean (BGR order).
    "caffe": {"channel_order": "BGR", "scale": 1.0,
              "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0)},
    # For training from scratch (the synthetic data): RGB in [0, 1], centred at 0.5 and
    # scaled so a uniform [0, 1] channel has a standard deviation close to 1.
    "unit": {"channel_order": "RGB", "scale": 1.0 / 255.0,
             "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
}


def resolve_preprocessing(spec):
    """A full spec dict from a name in ``PREPROCESSING`` or a dict (validated)."""
    if isinstance(spec, str):
        if spec not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {spec!r}; choose one of {sorted(PREPROCESSING)}")
        return dict(PREPROCESSING[spec])
    if not isinstance(spec, dict):
        raise TypeError(f"preprocessing must be a name or a dict, got {type(spec).__name__}")
    missing = {"channel_order", "scale", "mean", "std"} - set(spec)
    if missing:
        raise ValueError(f"preprocessing spec is missing {sorted(missing)}")
    if spec["channel_order"] not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {spec['channel_order']!r}")
    if len(spec["mean"]) != 3 or len(spec["std"]) != 3 or min(spec["std"]) <= 0:
        raise ValueError("preprocessing mean and std need 3 values each, std > 0")
    return dict(spec)


def _check_image(image):
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError("image must be a uint8 numpy array of shape (H, W, 3)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")


def _check_pair(image, mask):
    _check_image(image)
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f"mask must be a (H, W) array, got {getattr(mask, 'shape', type(mask))}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")


def preprocess(image, spec="unit"):
    """``image`` (H, W, 3) uint8 RGB -> float32 (3, H, W) normalised as ``spec`` says."""
    _check_image(image)
    spec = resolve_preprocessing(spec)
    x = image.astype(np.float32)
    if spec["channel_order"] == "BGR":
        x = x[:, :, ::-1]
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    x = (x * np.float32(spec["scale"]) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def deprocess(x, spec="unit"):
    """Undo ``preprocess``: float (3, H, W) -> (H, W, 3) uint8 RGB (rounded and clipped)."""
    spec = resolve_preprocessing(spec)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"x must have shape (3, H, W), got {x.shape}")
    hwc = x.transpose(1, 2, 0) * np.asarray(spec["std"]) + np.asarray(spec["mean"])
    hwc = hwc / spec["scale"]
    if spec["channel_order"] == "BGR":
        hwc = hwc[:, :, ::-1]
    return np.clip(np.rint(hwc), 0, 255).astype(np.uint8)


class Compose:
    """Apply ``transforms`` in order: ``Compose([RandomScale(), RandomCrop(64)])``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, mask, rng):
        for transform in self.transforms:
            image, mask = transform(image, mask, rng)
        return image, mask

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class RandomCrop:
    """A random ``size`` crop (int or (h, w)) of image and mask at the same place.

    An image smaller than the crop is first padded at the bottom/right: the image with
    ``fill`` (``"mean"``: the image's mean colour, so it normalises to about 0; or an
    RGB triple / int), the mask with ``ignore_index`` (255), so the padding is never
    scored or trained on.
    """

    def __init__(self, size, fill="mean", ignore_index=VOID_LABEL):
        if isinstance(size, (int, np.integer)):
            size = (int(size), int(size))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"crop size must be a positive int or pair, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.fill = fill
        self.ignore_index = int(ignore_index)

    def __call__(self, image, mask, rng):
        _check_pair(image, mask)
        ch, cw = self.size
        h, w = mask.shape
        if h < ch or w < cw:
            image, mask = self._pad(image, mask, max(ch, h), max(cw, w))
            h, w = mask.shape
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return (image[top:top + ch, left:left + cw].copy(),
                mask[top:top + ch, left:left + cw].copy())

    def _pad(self, image, mask, h, w):
        if isinstance(self.fill, str) and self.fill == "mean":
            fill = np.rint(image.reshape(-1, 3).mean(axis=0)) if image.size else np.zeros(3)
        else:
            fill = np.broadcast_to(np.asarray(self.fill, dtype=np.float64), (3,))
        padded = np.empty((h, w, 3), dtype=np.uint8)
        padded[...] = fill.astype(np.uint8)
        padded[:image.shape[0], :image.shape[1]] = image
        padded_mask = np.full((h, w), self.ignore_index, dtype=mask.dtype)
        padded_mask[:mask.shape[0], :mask.shape[1]] = mask
        return padded, padded_mask

    def __repr__(self):
        return f"RandomCrop(size={self.size}, fill={self.fill!r}, ignore_index={self.ignore_index})"


class RandomHorizontalFlip:
    """Mirror image and mask left-right with probability ``p``."""

    def __init__(self, p=0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image, mask, rng):
        _check_pair(image, mask)
        if rng.random() < self.p:
            return image[:, ::-1].copy(), mask[:, ::-1].copy()
        return image, mask

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class RandomSymmetry:
    """Apply one of the symmetries of the image's frame, drawn uniformly: for a square
    image the 8 of the dihedral group (4 rotations by 90 degrees, each optionally
    mirrored), for an oblong one the 4 that keep its height and width (identity, the
    left-right and up-down mirrors, and both: a rotation by 180 degrees).

    Worth it when the classes do not care which way up they are (the synthetic shapes are
    drawn at every angle), not for photographs: sky is not at the bottom.  Every symmetry
    is a composition of a transpose and the two mirrors, so three coin flips draw it.
    """

    def __call__(self, image, mask, rng):
        _check_pair(image, mask)
        transpose, flip_rows, flip_cols = rng.random(3) < 0.5
        if transpose and mask.shape[0] == mask.shape[1]:
            image, mask = image.transpose(1, 0, 2), mask.T
        if flip_rows:
            image, mask = image[::-1], mask[::-1]
        if flip_cols:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def __repr__(self):
        return "RandomSymmetry()"


class RandomScale:
    """Resize by a factor drawn uniformly from [min_scale, max_scale]: the image bilinearly,
    the mask with nearest neighbour (labels must not be blended into new classes)."""

    def __init__(self, min_scale=0.5, max_scale=2.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)

    def __call__(self, image, mask, rng):
        _check_pair(image, mask)
        factor = rng.uniform(self.min_scale, self.max_scale)
        h, w = mask.shape
        new_w = max(1, int(round(w * factor)))
        new_h = max(1, int(round(h * factor)))
        # PIL maps pixel centres the same way for both filters, so image and mask stay aligned.
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((new_w, new_h), Image.NEAREST))
        return image.copy(), mask.copy()

    def __repr__(self):
        return f"RandomScale(min_scale={self.min_scale}, max_scale={self.max_scale})"
