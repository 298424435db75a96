"""``npfcn explain iou``: the course's 4x4 example of per-class IoU and their mean.

Every count comes from ``npfcn.metrics`` (the confusion matrix ``hist[true, pred]``):
TP = hist[k, k], FP = column sum - TP, FN = row sum - TP, union = TP + FP + FN.
"""
from fractions import Fraction

import numpy as np

from ... import metrics
from .. import draw

# The course text's example.
TRUTH = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
PREDICTION = np.array([[1, 0, 0, 0], [1, 3, 0, 1], [2, 2, 2, 3], [3, 1, 0, 0]])


def counts(truth, prediction, num_classes):
    """Per class (TP, FP, FN) from npfcn's confusion matrix, and the matrix."""
    hist = metrics.confusion_matrix(truth, prediction, num_classes)
    tp = np.diag(hist)
    return tp, hist.sum(axis=0) - tp, hist.sum(axis=1) - tp, hist


def run(output, say, truth=TRUTH, prediction=PREDICTION):
    num_classes = int(max(truth.max(), prediction.max())) + 1
    tp, fp, fn, hist = counts(truth, prediction, num_classes)
    iou = metrics.iou_per_class(hist)
    mean = metrics.mean_iou(hist)
    say("IoU of each class, from the confusion matrix (npfcn/metrics.py: confusion_matrix, "
        "iou_per_class, mean_iou)")
    say("truth        prediction")
    for t, p in zip(truth, prediction):
        say(f"{''.join(map(str, t))}         {''.join(map(str, p))}")
    say("")
    say("class  TP  FP  FN  intersection  union  IoU")
    fractions = []
    for k in range(num_classes):
        union = int(tp[k] + fp[k] + fn[k])
        text = f"{int(tp[k])}/{union}"
        fractions.append(text)
        say(f"{k:>5}  {int(tp[k]):>2}  {int(fp[k]):>2}  {int(fn[k]):>2}  {int(tp[k]):>12}  "
            f"{union:>5}  {text:<5} = {iou[k]:.3f}")
    exact = sum(Fraction(int(tp[k]), int(tp[k] + fp[k] + fn[k])) for k in range(num_classes)) \
        / num_classes
    say(f"mean IoU = ({' + '.join(fractions)}) / {num_classes} = {exact} = {mean:.3f}")

    rows = []
    for k in range(num_classes):
        is_true, is_pred = truth == k, prediction == k
        left = draw.grid(truth, draw.colours_where(is_true, draw.HIGHLIGHT),
                         title=f"class {k}: truth")
        colours = draw.colours_where(is_true & is_pred, draw.CREAM)
        colours = draw.colours_where(~is_true & is_pred, draw.ORANGE, colours)
        colours = draw.colours_where(is_true & ~is_pred, draw.YELLOW, colours)
        right = draw.grid(prediction, colours, title="prediction")
        stats = draw.text_panel([f"TP = {int(tp[k])}", f"FP = {int(fp[k])}", f"FN = {int(fn[k])}",
                                 f"IoU = {fractions[k]} = {iou[k]:.3f}"])
        rows.append(draw.row([left, right, stats]))
    legend = draw.row([draw.grid(np.array([["TP"]]), [[draw.CREAM]], fmt=str),
                       draw.grid(np.array([["FP"]]), [[draw.ORANGE]], fmt=str),
                       draw.grid(np.array([["FN"]]), [[draw.YELLOW]], fmt=str),
                       draw.text_panel([f"mean IoU = {mean:.3f}"])])
    path = draw.save(draw.column(rows + [legend], title="IoU per class (course example)"),
                     output, "iou.png")
    say(f"picture: {path}  (true positives cream, false positives orange, false negatives "
        "yellow)")
    return {"tp": tp, "fp": fp, "fn": fn, "iou": iou, "mean_iou": mean, "fractions": fractions,
            "pictures": [path]}
