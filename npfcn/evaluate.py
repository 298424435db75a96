"""Scoring a model on a dataset: confusion matrix, loss and the FCN metrics; sample pictures.

Used by the training loop (validation every epoch) and by ``npfcn eval``.
"""
from dataclasses import dataclass

import numpy as np

from .losses import CrossEntropyLoss
from .metrics import boundary_f1, confusion_matrix, summarize
from .tiling import DEFAULT_MAX_MEMORY, forward_bytes, tile_scores, tiles_for

IGNORE_INDEX = 255


@dataclass
class Evaluation:
    """hist: (K, K) int64 confusion matrix ``hist[true, pred]``; loss: mean per-pixel
    cross-entropy over the dataset; metrics: ``npfcn.metrics.summarize`` of hist."""

    hist: np.ndarray
    loss: float
    metrics: dict

    def as_dict(self):
        return {"loss": self.loss, **self.metrics}


def predict_labels(model, x, score_offset=None, flip=False):
    """x: (N, 3, H, W) float -> (labels (N, H, W) int64, scores (N, K, H, W)); eval mode.

    score_offset: optional (K,) added to every pixel's scores first (the checkpoint's
    ``score_offset``: ``npfcn.losses.prior_correction`` of the class weights it was
    trained with); the returned scores include it.
    flip: also score the left-right mirror image and average the two score maps (the
    second mirrored back): a two-member ensemble of the network with itself, for twice
    the time.  The prediction then mirrors exactly with the input.
    """
    was_training = model.training
    model.eval()
    try:
        scores = model.forward(x)
        if flip:
            scores = scores.copy()      # the second forward may reuse the model's buffers
            mirrored = model.forward(np.ascontiguousarray(x[..., ::-1]))[..., ::-1]
            scores += mirrored
            scores *= scores.dtype.type(0.5)
    finally:
        model.train(was_training)
    if score_offset is not None:
        score_offset = np.asarray(score_offset, dtype=scores.dtype)
        if score_offset.shape != (scores.shape[1],):
            raise ValueError(f"score_offset has shape {score_offset.shape} but the model "
                             f"predicts {scores.shape[1]} classes")
        # A new array: the model may still hold on to the one it returned.
        scores = scores + score_offset[:, None, None]
    return scores.argmax(axis=1), scores


def evaluate(model, dataset, batch_size=8, preprocessing="unit", class_names=None, progress=None,
             score_offset=None, flip=False, max_memory=DEFAULT_MAX_MEMORY, boundary=False):
    """Score ``model`` on every item of ``dataset`` (in order); returns an Evaluation.

    The loss is the pixel-weighted mean over the whole dataset (each batch's mean
    times its counted pixels), so it does not depend on the batch size; it scores the
    same scores the prediction is the argmax of.
    score_offset, flip: see ``predict_labels``.
    max_memory: bytes one forward pass may use; a batch that needs more is scored image
    by image, and an image that needs more in overlapping tiles (``npfcn.tiling``: the
    same scores up to float rounding).
    progress: optional callable ``progress(done_batches, images)`` for a bar.
    boundary: also the mean boundary F1 score over the images (``metrics["boundary_f1"]``,
    npfcn.metrics.boundary_f1).
    """
    from .data.transforms import preprocess, resolve_preprocessing

    num_classes = model.num_classes
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_fn = CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    loss_sum, pixels = 0.0, 0
    boundary_scores = []
    spec = resolve_preprocessing(preprocessing)

    def score(scores, labels, y):
        nonlocal loss_sum, pixels, hist
        counted = int(np.count_nonzero(y != IGNORE_INDEX))
        if counted:
            loss_sum += loss_fn.forward(scores, y) * counted
        pixels += counted
        hist += confusion_matrix(y, labels, num_classes, ignore_index=IGNORE_INDEX)

    for done, start in enumerate(range(0, len(dataset), batch_size), start=1):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        if _fits_as_batch(model, items, flip, max_memory):
            x = np.stack([preprocess(image, spec) for image, _ in items]).astype(model.dtype, copy=False)
            y = np.stack([mask for _, mask in items]).astype(np.int64)
            labels, scores = predict_labels(model, x, score_offset, flip)
            score(scores, labels, y)
            if boundary:
                boundary_scores += [boundary_f1(t, p, num_classes, IGNORE_INDEX)
                                    for t, p in zip(y, labels)]
        else:
            for image, mask in items:           # one at a time, tiled if need be
                height, width = image.shape[:2]
                if mask.shape != (height, width):
                    raise ValueError(f"image {height}x{width} and its mask {mask.shape} differ in size")
                labels = np.empty((height, width), dtype=np.int64) if boundary else None
                for tile in tiles_for(model, height, width, max_memory, flip):
                    scores = tile_scores(model, image, tile, spec, score_offset, flip)
                    y = mask[None, tile.cy0:tile.cy1, tile.cx0:tile.cx1].astype(np.int64)
                    core = scores.argmax(axis=1)
                    score(scores, core, y)
                    if boundary:
                        labels[tile.cy0:tile.cy1, tile.cx0:tile.cx1] = core[0]
                if boundary:
                    boundary_scores.append(boundary_f1(mask.astype(np.int64), labels, num_classes,
                                                       IGNORE_INDEX))
        if progress is not None:
            progress(done, len(items))
    names = class_names if class_names is not None else getattr(dataset, "class_names", None)
    metrics = summarize(hist, names)
    if boundary:
        scored = [v for v in boundary_scores if not np.isnan(v)]
        metrics["boundary_f1"] = float(np.mean(scored)) if scored else float("nan")
    return Evaluation(hist=hist, loss=loss_sum / max(pixels, 1), metrics=metrics)


def _fits_as_batch(model, items, flip, max_memory):
    """Whether the (image, mask) items are all one size and fit in one forward pass."""
    sizes = {image.shape[:2] for image, _ in items} | {mask.shape for _, mask in items}
    if len(sizes) != 1:
        return False
    (height, width), = sizes
    needed = forward_bytes(model, len(items), height, width, flip)
    return needed is None or needed <= max_memory


def sample_grid(model, dataset, indices, preprocessing="unit", score_offset=None):
    """Rows of (image, truth, prediction) pictures for ``dataset[i]``, i in ``indices``,
    with a colour key of the classes they show when the dataset names its classes.

    Returns an (H, W, 3) uint8 picture built by ``npfcn.viz.image_grid``.
    """
    from .data.transforms import preprocess
    from .viz import colorize, image_grid, with_legend

    rows, shown = [], set()
    colours = getattr(dataset, "colormap", None)     # the dataset's own colours, if any
    for i in indices:
        image, mask = dataset[i]
        labels, _ = predict_labels(model, preprocess(image, preprocessing)[None], score_offset)
        predicted = labels[0].astype(np.uint8)
        shown.update(np.unique(mask).tolist(), np.unique(predicted).tolist())
        rows.append([image, colorize(mask, colours), colorize(predicted, colours)])
    grid = image_grid(rows, titles=["image", "truth", "prediction"])
    names = getattr(dataset, "class_names", None)
    return grid if names is None else with_legend(grid, names, colours, classes=shown)


def format_table(metrics, class_names=None):
    """The per-class IoU table and the summary as text lines (for ``npfcn eval``)."""
    per_class = metrics["iou_per_class"]
    names = list(per_class) if isinstance(per_class, dict) else list(class_names or [])
    values = list(per_class.values()) if isinstance(per_class, dict) else list(per_class)
    width = max([len("class")] + [len(str(n)) for n in names])
    lines = [f"{'class':<{width}}  IoU"]
    for name, value in zip(names, values):
        shown = "  n/a (absent)" if value is None or (isinstance(value, float) and np.isnan(value)) \
            else f"{value:.4f}"
        lines.append(f"{name:<{width}}  {shown}")
    lines.append("")
    for key, label in (("pixel_accuracy", "pixel accuracy"), ("mean_accuracy", "mean accuracy"),
                       ("mean_iou", "mean IoU"), ("frequency_weighted_iou", "frequency-weighted IoU"),
                       ("boundary_f1", "boundary F1 (BF)")):
        if key in metrics:
            lines.append(f"{label:<24}{metrics[key]:.4f}")
    return lines
