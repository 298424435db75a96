"""Boundary F1 (BF) on small cases worked by hand."""
import numpy as np
import pytest

from npfcn.metrics import boundary_f1, boundary_pixels


def _halves(rows, cols, split):
    """Class 0 left of column ``split``, class 1 from it on."""
    mask = np.zeros((rows, cols), dtype=np.int64)
    mask[:, split:] = 1
    return mask


def test_boundary_pixels_of_a_square():
    region = np.zeros((5, 5), dtype=bool)
    region[1:4, 1:4] = True
    expected = region.copy()
    expected[2, 2] = False                 # the centre has all 4 neighbours inside
    np.testing.assert_array_equal(boundary_pixels(region), expected)
    assert not boundary_pixels(np.ones((3, 3), bool)).any()    # the image edge is no boundary


def test_perfect_prediction_scores_one():
    truth = _halves(4, 6, 3)
    assert boundary_f1(truth, truth, 2) == 1.0


def test_boundary_one_pixel_off():
    # Truth boundaries: columns 2 (class 0) and 3 (class 1); predicted: columns 3 and 4.
    truth, prediction = _halves(4, 6, 3), _halves(4, 6, 4)
    assert boundary_f1(truth, prediction, 2, tolerance=1.0) == 1.0    # every pixel 1 away
    assert boundary_f1(truth, prediction, 2, tolerance=0.5) == 0.0    # none within 0.5


def test_partial_match_worked_by_hand():
    # 4x8, truth: class 0 in columns 0-3, class 1 in 4-7.  The prediction moves the border
    # two columns right in rows 2-3.  Class 0's predicted boundary: (0,3) (1,3) (2,4) (2,5)
    # (3,5); within 1 pixel of the true column 3: the first three -> precision 3/5.  True
    # boundary (r,3): (0,3) (1,3) (2,3) have a predicted pixel within 1, (3,3) does not
    # (nearest: (2,4) at sqrt 2) -> recall 3/4.  F1 = 2 * 0.6 * 0.75 / 1.35 = 2/3.
    # Class 1 mirrors it: predicted (0,4) (1,4) (1,5) (2,6) (3,6) against column 4: 2/3.
    truth = _halves(4, 8, 4)
    prediction = truth.copy()
    prediction[2:, 4:6] = 0
    assert boundary_f1(truth, prediction, 2, tolerance=1.0) == pytest.approx(2 / 3)


def test_missing_class_scores_zero_and_only_true_classes_count():
    truth = np.zeros((5, 5), dtype=np.int64)
    truth[1:4, 1:4] = 1
    prediction = np.zeros_like(truth)                  # the square is missed entirely
    # class 1: 8 true boundary pixels, no predicted one -> 0; class 0 fills the predicted
    # image (no boundary) while its truth has 12 boundary pixels -> 0.
    assert boundary_f1(truth, prediction, 3, tolerance=1.0) == 0.0
    # A class predicted but absent from the truth is not averaged in: class 2 here.
    prediction = truth.copy()
    prediction[0, 0] = 2
    single = np.zeros_like(truth)
    assert boundary_f1(single, np.where(prediction == 2, 2, 0), 3, tolerance=1.0) == 0.0
    assert boundary_f1(single, single, 3) == 1.0        # one class, no boundary either side


def test_void_pixels_carry_no_predicted_boundary():
    truth = _halves(4, 6, 3)
    truth[:, 5] = 255                    # void column at the right
    prediction = _halves(4, 6, 3)
    prediction[:, 5] = 0                 # a class-0 strip inside the void: not counted
    assert boundary_f1(truth, prediction, 2, tolerance=0.5) == 1.0


def test_default_tolerance_is_0_75_percent_of_the_diagonal():
    # 360x480: diagonal 600, tolerance 4.5 pixels; a border moved by 4 columns still
    # matches, one moved by 5 does not.
    truth = _halves(360, 480, 240)
    assert boundary_f1(truth, _halves(360, 480, 244), 2) == 1.0
    assert boundary_f1(truth, _halves(360, 480, 245), 2) == 0.0


def test_no_scored_class_is_nan_and_bad_shapes_are_refused():
    assert np.isnan(boundary_f1(np.full((3, 3), 255), np.zeros((3, 3), int), 2))
    with pytest.raises(ValueError, match="one shape"):
        boundary_f1(np.zeros((3, 3), int), np.zeros((3, 4), int), 2)
