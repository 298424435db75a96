"""Datasets, transforms and batching for npfcn.

    from npfcn.data import synthetic_splits, iterate_batches
    train, val = synthetic_splits()
    image, mask = train[0]          # (H, W, 3) uint8 RGB, (H, W) uint8 (255 = void)
    for x, y in iterate_batches(train, 8, rng=np.random.default_rng(0)):
        ...                         # x (N, 3, H, W) float32, y (N, H, W) int64
"""
from .batching import iterate_batches
from .folder import FolderDataset, read_image, read_mask
from .colormap import VOID_LABEL, palette_image, save_palette_png, voc_colormap
from .synthetic import SHAPE_CLASSES, SyntheticShapes, synthetic_splits
from .voc import VOC_CLASSES, VOCSegmentation, open_dataset
from .transforms import (PREPROCESSING, Compose, RandomCrop, RandomHorizontalFlip, RandomScale,
                         RandomSymmetry, deprocess, preprocess)

__all__ = [
    "iterate_batches", "VOID_LABEL", "palette_image", "save_palette_png", "voc_colormap",
    "SHAPE_CLASSES", "SyntheticShapes", "synthetic_splits", "PREPROCESSING", "Compose",
    "RandomCrop", "RandomHorizontalFlip", "RandomScale", "RandomSymmetry", "deprocess", "preprocess",
    "FolderDataset", "read_image", "read_mask", "VOC_CLASSES", "VOCSegmentation", "open_dataset",
]
