"""The PASCAL VOC colour map and palette PNG helpers.

VOC stores a segmentation mask as a palette ("P" mode) PNG: each pixel holds a
class index and the palette says how to show it.  The palette is built by
spreading the bits of the index over the three channels, most significant
bit first, so neighbouring class ids get very different colours:

    bit 0 of i -> bit 7 of red,   bit 3 of i -> bit 6 of red,   ...
    bit 1 of i -> bit 7 of green, bit 4 of i -> bit 6 of green, ...
    bit 2 of i -> bit 7 of blue,  bit 5 of i -> bit 6 of blue,  ...

Index 0 (background) is black and index 255 (void) is (224, 224, 192).
"""
import numpy as np
from PIL import Image

VOID_LABEL = 255

# The 21 PASCAL VOC classes; index = class id = palette index.
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(n=256):
    """The first ``n`` VOC colours as an ``(n, 3)`` uint8 array (row i = colour of class i)."""
    if not 1 <= int(n) <= 256:
        raise ValueError(f"voc_colormap size must be in 1..256, got {n}")
    index = np.arange(int(n), dtype=np.int64)
    cmap = np.zeros((int(n), 3), dtype=np.int64)
    # Eight rounds; round j takes three bits of the index and puts one into
    # bit (7 - j) of each channel.
    for j in range(8):
        for channel in range(3):
            bit = (index >> (3 * j + channel)) & 1
            cmap[:, channel] |= bit << (7 - j)
    return cmap.astype(np.uint8)


def palette_image(mask):
    """A ``(H, W)`` uint8 class-index mask as a PIL palette image with the VOC palette."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError("mask values must be in 0..255 to be stored in a palette PNG")
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette(voc_colormap(256).reshape(-1).tolist())
    return image


def save_palette_png(path, mask):
    """Write ``mask`` (H, W) of class indices as a VOC-style palette PNG."""
    palette_image(mask).save(str(path), format="PNG")
