"""The C softmax cross-entropy (csrc/softmax.c, npfcn/kernels/softmax.py) against the
reference (npfcn/reference/softmax.py), an independent NumPy computation.

Tolerances: the loss is summed in double on both sides from float32 terms, 1e-6
relative; the gradient is float32 per element, its exponentials from C's own polynomial
(about 2 ulp) where the reference uses NumPy's exp: 1e-5 relative to the largest entry.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npfcn import losses
from npfcn.kernels import backend, dispatch, softmax
from npfcn.reference import softmax as reference

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


def relative(a, b):
    scale = max(float(np.abs(b).max()), 1e-30) if np.size(b) else 1.0
    return float(np.abs(np.asarray(a, np.float64) - b).max()) / scale if np.size(b) else 0.0


@st.composite
def cases(draw):
    spatial = draw(st.sampled_from([(1,), (7,), (3, 5), (16,), (17, 19), (9, 40)]))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 23))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.1, 3.0, 40.0]))
    logits = (rng.standard_normal((N, C, *spatial)) * scale).astype(np.float32)
    target = rng.integers(0, C, (N, *spatial))
    target[rng.random(target.shape) < draw(st.sampled_from([0.0, 0.3, 1.0]))] = 255
    weight = rng.random(C).astype(np.float32) if draw(st.booleans()) else None
    reduction = draw(st.sampled_from(["mean", "sum"]))
    denominator = draw(st.sampled_from([None, 7.5])) if reduction == "mean" else None
    return logits, target, weight, reduction, denominator


@settings(max_examples=80, deadline=None)
@given(case=cases(), dloss=st.sampled_from([1.0, 0.25]))
def test_equals_the_reference(case, dloss):
    """Shapes that do and do not fill a 16-pixel vector or a 256-pixel chunk, ignored
    pixels (none, some, all), class weights, both reductions, a given denominator."""
    logits, target, weight, reduction, denominator = case
    loss0, cache0 = reference.softmax_cross_entropy_forward(logits, target, weight, 255,
                                                            reduction, denominator)
    loss1, cache1 = softmax.cross_entropy_forward(logits, target, weight, 255, reduction,
                                                  denominator)
    assert abs(loss1 - loss0) <= 1e-6 * max(abs(loss0), 1e-30)
    grad0 = reference.softmax_cross_entropy_backward(dloss, cache0)
    grad1 = softmax.cross_entropy_backward(dloss, cache1)
    assert grad1.dtype == np.float32 and grad1.shape == logits.shape
    assert np.array_equal(grad1, grad0) or relative(grad1, grad0) < 1e-5


def test_probabilities_over_the_whole_range_of_exp():
    """Two classes, scores 0 and x for x from -87 to 0 (the polynomial's range), and far
    below it, the pixel labelled 0: the gradient of the class scored x is its
    probability e^x / (1 + e^x)."""
    x = np.concatenate([np.linspace(-87, 0, 4001), [-100.0, -1e4]]).astype(np.float32)
    logits = np.stack([np.zeros_like(x), x])[None]             # (1, 2, P)
    target = np.zeros((1, x.size), dtype=np.int64)
    _, cache = softmax.cross_entropy_forward(logits, target, reduction="sum")
    grad = softmax.cross_entropy_backward(1.0, cache)
    expected = np.exp(x.astype(np.float64)) / (1 + np.exp(x.astype(np.float64)))
    inside = x >= -87
    rel = np.abs(grad[0, 1, inside] - expected[inside]) / expected[inside]
    assert rel.max() < 5e-7                 # a few float32 ulps
    assert np.all(np.abs(grad[0, 1, ~inside]) < 1e-37)      # e^x clamped at e^-87


def test_extreme_scores_stay_finite_and_right():
    logits = np.array([[[1000.0], [-1000.0], [0.0]]], dtype=np.float32)   # (1, 3, 1)
    for label, expected in ((0, 0.0), (2, 1000.0)):
        loss, cache = softmax.cross_entropy_forward(logits, np.array([[label]]))
        assert loss == pytest.approx(expected, abs=1e-3)
        assert np.all(np.isfinite(softmax.cross_entropy_backward(1.0, cache)))


def test_labels_outside_the_classes_are_refused_before_c():
    logits = np.zeros((1, 3, 4), dtype=np.float32)
    for bad in (3, -1, 254):
        with pytest.raises(ValueError, match="labels must lie in"):
            softmax.cross_entropy_forward(logits, np.array([[0, 1, bad, 2]]))


def test_the_loss_takes_this_path_for_float32_on_the_c_backend():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    target = rng.integers(0, 5, (2, 6, 7))
    with backend.using("c"):
        assert dispatch.cross_entropy_path(np.float32) == "c"
        assert dispatch.cross_entropy_path(np.float64) == "reference"
        loss_fn = losses.CrossEntropyLoss(ignore_index=255)
        loss = loss_fn.forward(logits, target)
        assert loss_fn._cache[0] == "c"
        grad = loss_fn.backward()
    loss0, cache0 = reference.softmax_cross_entropy_forward(logits, target)
    assert loss == pytest.approx(loss0, rel=1e-6)
    assert relative(grad, reference.softmax_cross_entropy_backward(1.0, cache0)) < 1e-5
