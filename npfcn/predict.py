"""Segmenting pictures with a trained checkpoint (``npfcn predict``).

Any size and any format Pillow reads: the FCN takes the whole image at once
(no resizing), with the preprocessing recorded in the checkpoint.
"""
import os

import numpy as np

from .checkpoint import load_checkpoint, load_model
from .data import read_image      # any format Pillow reads -> (H, W, 3) uint8 RGB, clear errors
from .evaluate import predict_labels


def predict_image(model, image, preprocessing="unit", score_offset=None, flip=False):
    """image (H, W, 3) uint8 -> labels (H, W) uint8 (class ids); score_offset, flip: see
    ``npfcn.evaluate.predict_labels``."""
    from .data.transforms import preprocess

    x = preprocess(image, preprocessing).astype(model.dtype, copy=False)[None]
    labels, _ = predict_labels(model, x, score_offset, flip)
    return labels[0].astype(np.uint8)


def predict_files(checkpoint_path, images, output, alpha=0.5, flip=False):
    """Segment every file in ``images``; yields (input, mask png, overlay png) per file.

    Every input is read before the first prediction, so a bad file is reported
    before any work is done.
    """
    from .viz import colorize, overlay, save_png

    checkpoint = load_checkpoint(checkpoint_path)
    model = load_model(checkpoint)
    preprocessing = checkpoint.meta.get("preprocessing", "unit")
    score_offset = checkpoint.meta.get("score_offset")
    pictures = [(path, read_image(path)) for path in images]
    os.makedirs(output, exist_ok=True)
    used = set()
    for path, image in pictures:
        labels = predict_image(model, image, preprocessing, score_offset, flip)
        stem = os.path.splitext(os.path.basename(path))[0]
        unique, n = stem, 1
        while unique in used:        # two inputs called a.png in different folders
            n += 1
            unique = f"{stem}-{n}"
        used.add(unique)
        mask_path = os.path.join(output, f"{unique}_mask.png")
        overlay_path = os.path.join(output, f"{unique}_overlay.png")
        save_png(mask_path, colorize(labels))
        save_png(overlay_path, overlay(image, labels, alpha))
        yield path, mask_path, overlay_path
