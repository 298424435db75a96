"""Segmenting pictures with a trained checkpoint (``npfcn predict``).

Any size and any format Pillow reads: the FCN takes the image as it is (no
resizing), with the preprocessing recorded in the checkpoint.  An image whose
forward pass would need more than the memory budget (``max_memory``, default
``npfcn.tiling.DEFAULT_MAX_MEMORY``) is predicted in overlapping tiles whose
result equals the whole-image prediction (see ``npfcn.tiling``).
"""
import os

import numpy as np

from .checkpoint import load_checkpoint, load_model
from .data import read_image      # any format Pillow reads -> (H, W, 3) uint8 RGB, clear errors
from .tiling import DEFAULT_MAX_MEMORY, predict_tiled, tiles_for

_BAND_ROWS = 256        # rows coloured at a time, so the pictures need no float copy of the image


def predict_image(model, image, preprocessing="unit", score_offset=None, flip=False,
                  max_memory=DEFAULT_MAX_MEMORY):
    """image (H, W, 3) uint8 -> labels (H, W) uint8 (class ids); score_offset, flip: see
    ``npfcn.evaluate.predict_labels``.  Tiled when the whole image would need more than
    ``max_memory`` bytes; MemoryBudgetError (a ValueError) when even a tile would."""
    tiles = tiles_for(model, image.shape[0], image.shape[1], max_memory, flip)
    return predict_tiled(model, image, tiles, preprocessing, score_offset, flip)


def _check_readable(path):
    """Open ``path``'s header only (cheap), so a missing or non-image file is reported
    before any prediction; the pixels are read when the file's turn comes."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path):
            pass
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def _save_pictures(image, labels, mask_path, overlay_path, alpha, colormap=None):
    """Write the colourised mask and the overlay, a band of rows at a time.

    The overlay is written over ``image`` (the caller's copy is not needed any more):
    the pictures cost one (H, W, 3) uint8 buffer besides the image, not float copies.
    """
    from .viz import colorize, overlay, save_png

    picture = np.empty_like(image)
    for r in range(0, len(labels), _BAND_ROWS):
        picture[r:r + _BAND_ROWS] = colorize(labels[r:r + _BAND_ROWS], colormap)
    save_png(mask_path, picture)
    del picture
    for r in range(0, len(labels), _BAND_ROWS):
        image[r:r + _BAND_ROWS] = overlay(image[r:r + _BAND_ROWS], labels[r:r + _BAND_ROWS], alpha,
                                          colormap)
    save_png(overlay_path, image)


def predict_files(checkpoint_path, images, output, alpha=0.5, flip=False,
                  max_memory=DEFAULT_MAX_MEMORY):
    """Segment every file in ``images``; yields (input, mask png, overlay png) per file,
    after writing ``output``/legend.png (the colour of each class) when the checkpoint
    names its classes.

    Every input is opened before the first prediction, so a missing or unreadable
    file is reported before any work is done; one image is in memory at a time.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model = load_model(checkpoint)
    preprocessing = checkpoint.meta.get("preprocessing", "unit")
    score_offset = checkpoint.meta.get("score_offset")
    colours = checkpoint.meta.get("colormap")       # the training data's colours (CamVid's)
    colormap = None if colours is None else np.asarray(colours, dtype=np.uint8)
    for path in images:
        _check_readable(path)
    os.makedirs(output, exist_ok=True)
    names = checkpoint.meta.get("class_names")
    if names:       # one colour key for every mask and overlay of the folder
        from .viz import legend, save_png
        save_png(os.path.join(output, "legend.png"), legend(names, colormap))
    used = set()
    for path in images:
        image = read_image(path)
        labels = predict_image(model, image, preprocessing, score_offset, flip, max_memory)
        stem = os.path.splitext(os.path.basename(path))[0]
        unique, n = stem, 1
        while unique in used:        # two inputs called a.png in different folders
            n += 1
            unique = f"{stem}-{n}"
        used.add(unique)
        mask_path = os.path.join(output, f"{unique}_mask.png")
        overlay_path = os.path.join(output, f"{unique}_overlay.png")
        _save_pictures(image, labels, mask_path, overlay_path, alpha, colormap)
        del image, labels
        yield path, mask_path, overlay_path
