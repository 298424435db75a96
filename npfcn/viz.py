"""Pictures, drawn with Pillow only: colourised masks, overlays, grids, training curves and
confusion matrices.  Every function takes and returns uint8 RGB arrays (H, W, 3)."""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .data.colormap import VOID_LABEL, voc_colormap

VOID_COLOUR = (224, 224, 192)       # the VOC palette entry 255


def colorize(mask, colormap=None):
    """Class-index ``mask`` (H, W) -> (H, W, 3) uint8 colours (VOC palette; 255 -> VOID_COLOUR).

    ``colormap``: optional (K, 3) uint8 array replacing the VOC colours for classes < K.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if mask.dtype.kind not in "iub":
        raise TypeError(f"mask must hold integers, got dtype {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be class ids in 0..254 or 255 (void), "
                         f"got range {mask.min()}..{mask.max()}")
    table = voc_colormap(256).copy()
    if colormap is not None:
        colormap = np.asarray(colormap, dtype=np.uint8)
        if colormap.ndim != 2 or colormap.shape[1] != 3 or len(colormap) > 255:
            raise ValueError(f"colormap must have shape (K, 3) with K <= 255, got {colormap.shape}")
        table[:len(colormap)] = colormap
    table[VOID_LABEL] = VOID_COLOUR
    return table[mask.astype(np.int64)]


def _check_rgb(image, name="image"):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be a (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    return image


def overlay(image, mask, alpha=0.5):
    """Blend the colourised ``mask`` over ``image`` (H, W, 3) uint8 with weight ``alpha``.

    Background (class 0) pixels keep the plain image so the objects stand out.
    """
    image = _check_rgb(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(mask).astype(np.float64)
    blended = (1 - alpha) * image + alpha * colours
    out = np.where((mask == 0)[..., None], image, np.rint(blended))
    return out.astype(np.uint8)


def save_png(path, array):
    """Write a (H, W, 3) or (H, W) uint8 array as a PNG, creating the folder if needed."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"save_png needs a (H, W), (H, W, 3) or (H, W, 4) uint8 array, "
                         f"got {array.dtype} {array.shape}")
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(os.fspath(path), format="PNG")
    return path
