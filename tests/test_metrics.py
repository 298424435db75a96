"""Confusion matrix and the FCN reference scores, including the course's worked example."""
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npfcn.metrics import (accuracy_per_class, confusion_matrix, frequency_weighted_iou,
                           iou_per_class, mean_accuracy, mean_iou, pixel_accuracy, summarize)

TRUTH = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
PREDICTION = np.array([[1, 0, 0, 0], [1, 3, 0, 1], [2, 2, 2, 3], [3, 1, 0, 0]])


def test_the_worked_example_of_the_course():
    hist = confusion_matrix(TRUTH, PREDICTION, 4)
    np.testing.assert_array_equal(hist, [[3, 1, 0, 0],
                                         [1, 2, 0, 1],
                                         [0, 0, 3, 1],
                                         [2, 1, 0, 1]])
    np.testing.assert_allclose(iou_per_class(hist), [3 / 7, 2 / 6, 3 / 4, 1 / 6], rtol=1e-15)
    assert mean_iou(hist) == pytest.approx((3 / 7 + 2 / 6 + 3 / 4 + 1 / 6) / 4, rel=1e-15)
    assert round(mean_iou(hist), 3) == 0.420
    assert pixel_accuracy(hist) == 9 / 16
    assert mean_accuracy(hist) == pytest.approx((3 / 4 + 2 / 4 + 3 / 4 + 1 / 4) / 4, rel=1e-15)
    # Every class covers a quarter of the truth, so fwIoU equals the mean IoU here.
    assert frequency_weighted_iou(hist) == pytest.approx(mean_iou(hist), rel=1e-15)


def test_hist_is_int64_true_by_predicted():
    hist = confusion_matrix(np.array([0, 0, 1]), np.array([1, 1, 1]), 2)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, [[0, 2], [0, 1]])        # row = truth, column = prediction


def test_ignore_index_is_skipped():
    truth = np.array([[0, 255, 1], [255, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 3, 1], [0, 0, 1]], dtype=np.int64)       # a 3 under a void pixel is fine
    hist = confusion_matrix(truth, pred, 2)
    np.testing.assert_array_equal(hist, [[1, 0], [1, 2]])
    hist = confusion_matrix(np.array([0, 7, 1]), np.array([0, 0, 1]), 2, ignore_index=7)
    np.testing.assert_array_equal(hist, [[1, 0], [0, 1]])


def test_accumulates_over_a_dataset():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, (6, 9, 7))
    truth[rng.random(truth.shape) < 0.1] = 255
    pred = rng.integers(0, 5, (6, 9, 7))
    whole = confusion_matrix(truth, pred, 5)
    parts = sum(confusion_matrix(t, p, 5) for t, p in zip(truth, pred))
    np.testing.assert_array_equal(whole, parts)


def test_absent_classes_are_nan_and_left_out_of_the_means():
    # Class 2 never occurs in truth or prediction; class 3 only in the prediction.
    truth = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 3, 0])
    hist = confusion_matrix(truth, pred, 4)
    iou = iou_per_class(hist)
    np.testing.assert_allclose(iou[[0, 1, 3]], [2 / 3, 2 / 4, 0.0], rtol=1e-15)
    assert math.isnan(iou[2])
    assert mean_iou(hist) == pytest.approx((2 / 3 + 2 / 4 + 0.0) / 3, rel=1e-15)
    acc = accuracy_per_class(hist)
    assert math.isnan(acc[2]) and math.isnan(acc[3])              # absent from the truth
    assert mean_accuracy(hist) == pytest.approx((2 / 3 + 2 / 3) / 2, rel=1e-15)
    # fwIoU: weights 3/6 and 3/6 for classes 0 and 1; class 3 has weight 0.
    assert frequency_weighted_iou(hist) == pytest.approx(0.5 * 2 / 3 + 0.5 * 2 / 4, rel=1e-15)


def test_empty_matrix_gives_nan_not_an_error():
    hist = confusion_matrix(np.full((2, 2), 255), np.zeros((2, 2), int), 3)
    assert hist.sum() == 0
    for score in (pixel_accuracy, mean_accuracy, mean_iou, frequency_weighted_iou):
        assert math.isnan(score(hist))


def test_summarize_is_json_ready():
    hist = confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 3)
    summary = summarize(hist, class_names=["background", "disc", "square"])
    assert set(summary) == {"pixel_accuracy", "mean_accuracy", "mean_iou",
                            "frequency_weighted_iou", "iou_per_class"}
    assert summary["iou_per_class"] == {"background": 0.5, "disc": 0.5, "square": None}
    assert summary["mean_iou"] == 0.5 and summary["pixel_accuracy"] == pytest.approx(2 / 3)
    json.dumps(summary, allow_nan=False)
    assert list(summarize(hist)["iou_per_class"]) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="2 class names"):
        summarize(hist, class_names=["a", "b"])


@pytest.mark.parametrize("truth, pred, k, error, message", [
    (np.zeros((2, 3), int), np.zeros((3, 2), int), 2, ValueError, "shape"),
    (np.array([0, 2]), np.array([0, 1]), 2, ValueError, "target label 2 is outside"),
    (np.array([0, -1]), np.array([0, 1]), 2, ValueError, "target label -1"),
    (np.array([0, 1]), np.array([0, 5]), 2, ValueError, "predicted class 5"),
    (np.array([0, 1]), np.array([0, -3]), 2, ValueError, "predicted class -3"),
    (np.array([0.0, 1.0]), np.array([0, 1]), 2, TypeError, "integer"),
    (np.array([0, 1]), np.array([0.0, 1.0]), 2, TypeError, "integer"),
    (np.array([0, 1]), np.array([0, 1]), 0, ValueError, "num_classes"),
])
def test_bad_input(truth, pred, k, error, message):
    with pytest.raises(error, match=message):
        confusion_matrix(truth, pred, k)


def test_bad_confusion_matrix():
    with pytest.raises(ValueError, match="square"):
        mean_iou(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        mean_iou(np.array([[1, -1], [0, 1]]))


@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 5), st.integers(1, 6)),
                  elements=st.integers(0, 3)),
       st.data())
def test_matches_a_pixel_by_pixel_count(truth, data):
    pred = data.draw(hnp.arrays(np.int64, truth.shape, elements=st.integers(0, 3)))
    void = data.draw(hnp.arrays(np.bool_, truth.shape))
    truth = np.where(void, 255, truth)
    expected = np.zeros((4, 4), np.int64)
    for t, p in zip(truth.ravel(), pred.ravel()):
        if t != 255:
            expected[t, p] += 1
    hist = confusion_matrix(truth, pred, 4)
    np.testing.assert_array_equal(hist, expected)
    # IoU from its definition, |T ∩ P| / |T ∪ P| over the counted pixels.
    counted = truth != 255
    for k in range(4):
        t, p = (truth == k) & counted, (pred == k) & counted
        union = np.sum(t | p)
        iou = iou_per_class(hist)[k]
        if union == 0:
            assert math.isnan(iou)
        else:
            assert iou == pytest.approx(np.sum(t & p) / union, rel=1e-12)
