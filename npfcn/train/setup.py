"""What a run is built from: its datasets, augmentation, class weights and model.

Each builder takes the ``TrainConfig`` and returns one thing; ``Trainer.__init__`` calls
them in order.  A new dataset or model is added here, in the builder concerned.
"""
import numpy as np

from ..progress import ProgressBar
from .config import IGNORE_INDEX


def build_datasets(config):
    """(train, val) datasets for ``config.data``: "synthetic" or a dataset folder."""
    if config.data == "synthetic":
        from ..data import synthetic_splits

        return synthetic_splits(train_size=config.num_train, val_size=config.num_val,
                                image_size=config.image_size, seed=config.data_seed,
                                **config.synthetic_options)
    from ..data import FolderDataset, open_dataset

    train = open_dataset(config.data, "train")
    if isinstance(train, FolderDataset):
        # Classes may be inferred from the masks: make the val split agree with train.
        val = open_dataset(config.data, "val", num_classes=train.num_classes)
    else:
        val = open_dataset(config.data, "val")
    # At most num_train / num_val images of a folder, each resized by config.scale.
    return (train.limited(config.num_train).rescaled(config.scale),
            val.limited(config.num_val).rescaled(config.scale))


def open_checked_datasets(config, stream, read_all=True):
    """``build_datasets``, refusing empty splits; for a dataset folder (``read_all``) every
    item is read once (``check_dataset``) and images of mixed sizes need a crop or batch 1."""
    train, val = build_datasets(config)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"dataset {config.data} has an empty train or val split")
    if config.data != "synthetic" and read_all:
        sizes = check_dataset(train, "training", stream)
        check_dataset(val, "validation", stream)
        if len(sizes) > 1 and config.batch_size > 1 and not config.crop_size:
            raise ValueError(f"the training images in {config.data} differ in size; "
                             "use --crop-size N (random crops) or --batch-size 1")
    return train, val


def check_dataset(dataset, what, stream):
    """Read every item once, so a bad file stops the run before it starts (not hours into
    it); the loaders raise ValueError/FileNotFoundError naming the file.  Returns the set
    of mask shapes."""
    bar = ProgressBar(len(dataset), f"checking {len(dataset)} {what} images", stream=stream)
    sizes = set()
    for index in range(len(dataset)):
        sizes.add(dataset[index][1].shape)
        bar.update(index + 1, 1)
    bar.clear()
    return sizes


def class_weights(dataset, num_classes, how):
    """Per-class loss weights (K,) or None.

    "sqrt": ``w_c = 1 / sqrt(f_c)`` for the pixel frequency ``f_c`` of class c in the
    training masks, scaled so the average weight per pixel is 1.  Mean IoU counts
    every class equally while the pixels are mostly background; without weights the
    loss is dominated by background and a network from scratch first spends hundreds
    of steps predicting background everywhere.  The square root is the gentler
    version of SegNet's median-frequency balancing (which over-predicts small classes).
    """
    if how == "none":
        return None
    if how == "median":
        from ..data.camvid import median_frequency_weights

        return median_frequency_weights(dataset, num_classes, IGNORE_INDEX)
    counts = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        _, mask = dataset[index]
        counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
    frequency = counts / max(counts.sum(), 1)
    weights = np.where(frequency > 0, 1.0 / np.sqrt(np.maximum(frequency, 1e-12)), 0.0)
    return weights / float(np.sum(frequency * weights))


def build_transform(config):
    """The training augmentation: optional random crop, then random symmetries."""
    from ..data import Compose, RandomCrop, RandomHorizontalFlip, RandomSymmetry

    steps = []
    if config.crop_size:
        steps.append(RandomCrop(config.crop_size))
    symmetries = config.symmetries
    if symmetries == "auto":
        symmetries = "all" if config.data == "synthetic" else "mirror"
    if symmetries == "all":
        steps.append(RandomSymmetry())
    elif symmetries == "mirror":
        steps.append(RandomHorizontalFlip())
    return Compose(steps) if steps else None


def build_model(config, num_classes):
    """The freshly initialised network ``config.model`` (He normal draws from ``config.seed``)."""
    from ..models import build_model as build

    return build(config.model, num_classes=num_classes, width=config.width,
                 learn_upsampling=config.learn_upsampling, scale_skips=config.scale_skips,
                 dropout=config.dropout, seed=config.seed)


def initialise(model, config, train_set):
    """Apply ``config.init`` to a freshly built model: "he" keeps its draw; "lsuv" and
    "orthogonal-lsuv" rescale it on the first (up to 8) training images in order.
    Images of mixed sizes (a folder dataset without --crop-size) cannot share a batch,
    so then only the first.  No random draw: the data stream stays untouched."""
    from ..data import RandomCrop, iterate_batches
    from ..init import lsuv_init, orthogonal_init

    if getattr(model, "batch_norm", False):
        # Batch norm rescales every layer's output on every batch, which is what LSUV
        # sets up once: the BN nets keep their He normal draw.
        return model
    if config.init == "orthogonal-lsuv":
        orthogonal_init(model, config.seed)
    if config.init in ("lsuv", "orthogonal-lsuv"):
        same_size = config.data == "synthetic" or config.crop_size
        crop = RandomCrop(config.crop_size) if config.crop_size else None
        x, _ = next(iterate_batches(train_set, min(len(train_set), 8 if same_size else 1),
                                    transform=crop, preprocessing=config.preprocessing))
        lsuv_init(model, x)
    return model
