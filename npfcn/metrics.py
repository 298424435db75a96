"""Segmentation scores from a confusion matrix, with the FCN reference definitions.

``hist[t, p]`` counts the pixels of true class t predicted as p (pixels labelled
``ignore_index`` are skipped).  Summing the matrices of several images gives the
matrix of the whole dataset, which is how the scores are meant to be computed:
per dataset, not averaged per image.  From it (as in the reference ``score.py``):

* pixel accuracy     = sum_k hist[k, k] / sum hist
* mean accuracy      = mean over classes of hist[k, k] / sum_p hist[k, p]
* IoU_k              = hist[k, k] / (sum_p hist[k, p] + sum_t hist[t, k] - hist[k, k])
* mean IoU           = mean of IoU_k
* frequency weighted = sum_k freq_k * IoU_k, freq_k = sum_p hist[k, p] / sum hist

A class that never occurs in the truth has no accuracy and a class absent from
both truth and prediction has no IoU: they are NaN and left out of the means
(``np.nanmean``), never counted as 0 or 1.

The boundary F1 score (``boundary_f1``, the SegNet paper's BF) is not a confusion
matrix score: it is computed per image, from where the class boundaries lie.
"""
import numpy as np


def confusion_matrix(target, prediction, num_classes, ignore_index=255):
    """``hist`` (num_classes, num_classes) int64 with ``hist[true, pred]`` pixel counts.

    target, prediction: integer arrays of the same shape (any shape: (H, W),
    (N, H, W), ...).  Target pixels equal to ``ignore_index`` are skipped; every
    other label and every prediction must lie in [0, num_classes).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    target, prediction = _labels(target, "target"), _labels(prediction, "prediction")
    if target.shape != prediction.shape:
        raise ValueError(f"target has shape {target.shape} but prediction has shape "
                         f"{prediction.shape}")
    valid = target != ignore_index
    truth, pred = target[valid].astype(np.int64), prediction[valid].astype(np.int64)
    for values, name in ((truth, "target label"), (pred, "predicted class")):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = int(values.min()) if values.min() < 0 else int(values.max())
            extra = f" and is not the ignore_index {ignore_index}" if name == "target label" else ""
            raise ValueError(f"{name} {bad} is outside [0, {num_classes}){extra}")
    # Each (true, pred) pair becomes one index true * K + pred; bincount counts them all at once.
    counts = np.bincount(truth * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _labels(array, name):
    array = np.asarray(array)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    return array


def _check_hist(hist):
    hist = np.asarray(hist)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {hist.shape}")
    if hist.dtype.kind not in "iuf" or (hist.size and not (np.all(np.isfinite(hist))
                                                          and hist.min() >= 0)):
        raise ValueError("confusion matrix must hold non-negative counts (no NaN or inf)")
    return hist.astype(np.float64)


def _ratio(numerator, denominator):
    """numerator / denominator elementwise, NaN where the denominator is 0 (no warnings)."""
    out = np.full(np.shape(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def pixel_accuracy(hist):
    """Fraction of counted pixels whose class is right; NaN if no pixel was counted."""
    hist = _check_hist(hist)
    return float(_ratio(np.trace(hist), hist.sum()))


def accuracy_per_class(hist):
    """Recall of each class, hist[k, k] / sum_p hist[k, p]; NaN for classes absent from the truth."""
    hist = _check_hist(hist)
    return _ratio(np.diag(hist), hist.sum(axis=1))


def mean_accuracy(hist):
    """Mean of the per-class accuracies over the classes present in the truth."""
    return _nanmean(accuracy_per_class(hist))


def iou_per_class(hist):
    """IoU of each class; NaN for classes absent from both truth and prediction."""
    hist = _check_hist(hist)
    true_positive = np.diag(hist)
    union = hist.sum(axis=1) + hist.sum(axis=0) - true_positive
    return _ratio(true_positive, union)


def mean_iou(hist):
    """Mean IoU over the classes that occur in the truth or the prediction."""
    return _nanmean(iou_per_class(hist))


def frequency_weighted_iou(hist):
    """Sum of each class's IoU weighted by its share of the true pixels."""
    hist = _check_hist(hist)
    total = hist.sum()
    if total == 0:
        return float("nan")
    frequency = hist.sum(axis=1) / total
    iou = iou_per_class(hist)
    present = frequency > 0          # a class with weight 0 contributes nothing, even if NaN
    return float(np.sum(frequency[present] * iou[present]))


def _nanmean(values):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def summarize(hist, class_names=None):
    """All scores as plain Python numbers (JSON-ready; a NaN per-class IoU becomes None)."""
    hist = np.asarray(hist)
    num_classes = hist.shape[0] if hist.ndim == 2 else 0
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-class confusion matrix")
    iou = iou_per_class(hist)
    return {
        "pixel_accuracy": pixel_accuracy(hist),
        "mean_accuracy": mean_accuracy(hist),
        "mean_iou": mean_iou(hist),
        "frequency_weighted_iou": frequency_weighted_iou(hist),
        "iou_per_class": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
    }


# --- boundary F1 (BF) score ----------------------------------------------------------

BF_TOLERANCE = 0.0075       # of the image diagonal, as the SegNet paper scores CamVid


def boundary_pixels(region):
    """(H, W) bool -> (H, W) bool: the pixels of ``region`` with a 4-neighbour outside it.

    The image's edge is not a boundary (nothing is known beyond it).
    """
    region = np.asarray(region, dtype=bool)
    edge = np.zeros_like(region)
    edge[:-1] |= region[:-1] & ~region[1:]
    edge[1:] |= region[1:] & ~region[:-1]
    edge[:, :-1] |= region[:, :-1] & ~region[:, 1:]
    edge[:, 1:] |= region[:, 1:] & ~region[:, :-1]
    return edge


def _within(points, radius):
    """(H, W) bool -> the pixels at Euclidean distance <= radius from a True pixel."""
    h, w = points.shape
    near = points.copy()
    r = int(np.floor(radius))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                near[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                    points[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return near


def boundary_f1(target, prediction, num_classes, ignore_index=255, tolerance=None):
    """The BF score of one image (Csurka et al. 2013, as the SegNet paper uses it).

    target, prediction: (H, W) class ids.  For every class c the truth has: the boundary
    pixels of {target == c} and of {prediction == c} (``boundary_pixels``); precision =
    share of predicted boundary pixels within ``tolerance`` pixels (Euclidean) of a true
    one, recall = share of true boundary pixels within ``tolerance`` of a predicted one,
    F1 = 2PR / (P + R) (0 when either is 0; a class whose truth has no boundary, filling
    the whole image, scores 1 if the prediction has none either).  Pixels the truth marks
    ``ignore_index`` carry no predicted boundary.  Returns the mean F1 over the classes
    present in the truth, or NaN if there are none.

    tolerance: pixels; default ``BF_TOLERANCE`` (0.75 %) of the image diagonal.
    """
    target, prediction = _labels(target, "target"), _labels(prediction, "prediction")
    if target.shape != prediction.shape or target.ndim != 2:
        raise ValueError(f"target and prediction must be (H, W) of one shape, got "
                         f"{target.shape} and {prediction.shape}")
    if tolerance is None:
        tolerance = BF_TOLERANCE * float(np.hypot(*target.shape))
    valid = target != ignore_index
    scores = []
    for c in np.unique(target[valid]):
        if not 0 <= c < num_classes:
            continue
        true_edge = boundary_pixels(target == c)
        pred_edge = boundary_pixels(prediction == c) & valid
        n_true, n_pred = int(true_edge.sum()), int(pred_edge.sum())
        if n_true == 0 and n_pred == 0:
            scores.append(1.0)
            continue
        if n_true == 0 or n_pred == 0:
            scores.append(0.0)
            continue
        precision = np.count_nonzero(pred_edge & _within(true_edge, tolerance)) / n_pred
        recall = np.count_nonzero(true_edge & _within(pred_edge, tolerance)) / n_true
        total = precision + recall
        scores.append(0.0 if total == 0 else 2 * precision * recall / total)
    return float(np.mean(scores)) if scores else float("nan")
