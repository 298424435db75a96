"""The Lovász-softmax loss and the training loss that adds it to the cross-entropy.

* At one-hot probabilities the Lovász extension must equal the set function it extends:
  for each image, the mean over the classes its labels show of 1 - IoU, with the IoU
  counted here directly from the label arrays (not through npfcn.metrics).
* Gradients: float64 central differences, relative error below 1e-6 (as every layer's,
  see test_gradients).  The loss is piecewise linear in the sorted errors; logits drawn
  from a normal distribution keep every two pixels' errors far apart compared with the
  1e-6 step, so no difference quotient straddles a kink.
* Shards: a batch split in two, each part dividing by the whole batch's weight total and
  image count, must add up to the whole batch's loss and gradient (what replicas rely on).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfcn.gradcheck import gradcheck
from npfcn.lovasz import LovaszSoftmaxLoss, jaccard_steps
from npfcn.losses import CrossEntropyLoss, SegmentationLoss, weight_total

TOL = 1e-6


def examples(n):
    return settings(max_examples=max(1, n * settings.default.max_examples // 25))


def one_hot_logits(labels, num_classes, margin=60.0):
    """Logits whose softmax is one-hot at ``labels`` to within exp(-60) ~ 1e-26."""
    logits = np.zeros((len(labels), num_classes) + labels.shape[1:])
    np.put_along_axis(logits, labels[:, None], margin, axis=1)
    return logits


def direct_lovasz_at_one_hot(target, prediction, num_classes, ignore_index=255):
    """Mean over images of the mean over present classes of 1 - |T & P| / |T | P|."""
    per_image = []
    for t, p in zip(target, prediction):
        counted = t != ignore_index
        present = [c for c in range(num_classes) if np.any(t[counted] == c)]
        if not present:
            per_image.append(0.0)
            continue
        losses = []
        for c in present:
            truth, predicted = (t == c) & counted, (p == c) & counted
            losses.append(1.0 - np.sum(truth & predicted) / np.sum(truth | predicted))
        per_image.append(np.mean(losses))
    return float(np.mean(per_image))


@examples(50)
@given(n=st.integers(1, 3), c=st.integers(2, 5), h=st.integers(1, 6), w=st.integers(1, 6),
       ignore_fraction=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 999))
def test_at_one_hot_probabilities_the_loss_is_one_minus_iou(n, c, h, w, ignore_fraction, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c, (n, h, w))
    target[rng.random((n, h, w)) < ignore_fraction] = 255
    # a prediction that is right about half the time, so the IoUs spread over (0, 1)
    prediction = np.where(rng.random((n, h, w)) < 0.5, np.where(target == 255, 0, target),
                          rng.integers(0, c, (n, h, w)))
    loss = LovaszSoftmaxLoss().forward(one_hot_logits(prediction, c), target)
    assert loss == pytest.approx(direct_lovasz_at_one_hot(target, prediction, c), abs=1e-12)


def test_a_perfect_prediction_costs_nothing_and_a_wrong_one_everything():
    target = np.array([[[0, 1], [1, 2]]])
    assert LovaszSoftmaxLoss().forward(one_hot_logits(target, 3), target) == pytest.approx(0, abs=1e-12)
    wrong = (target + 1) % 3
    assert LovaszSoftmaxLoss().forward(one_hot_logits(wrong, 3), target) == pytest.approx(1.0)


def test_jaccard_steps_are_non_negative_and_sum_to_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        in_class = rng.random(int(rng.integers(1, 40))) < 0.4
        in_class[int(rng.integers(len(in_class)))] = True     # the class is present
        steps = jaccard_steps(in_class)
        assert np.all(steps >= -1e-15)
        assert steps.sum() == pytest.approx(1.0)


@examples(50)
@given(n=st.integers(1, 2), c=st.integers(2, 4), h=st.integers(1, 5), w=st.integers(1, 5),
       ignore_fraction=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 999))
def test_lovasz_gradients(n, c, h, w, ignore_fraction, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c, h, w)) * 2
    target = rng.integers(0, c, (n, h, w))
    target[rng.random((n, h, w)) < ignore_fraction] = 255
    report = gradcheck(LovaszSoftmaxLoss(ignore_index=255), (logits, target))
    assert report.errors, "gradcheck compared nothing"
    report.assert_ok(TOL)


@examples(25)
@given(lovasz=st.sampled_from([0.0, 0.5, 2.0]), weighted=st.booleans(), seed=st.integers(0, 999))
def test_training_loss_gradients(lovasz, weighted, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((2, 3, 4, 5)) * 2
    target = rng.integers(0, 3, (2, 4, 5))
    target[0, 0] = 255
    weight = rng.uniform(0.2, 2.0, 3) if weighted else None
    report = gradcheck(SegmentationLoss(weight=weight, lovasz=lovasz), (logits, target))
    report.assert_ok(TOL)


def test_training_loss_is_cross_entropy_plus_weighted_lovasz():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((2, 4, 6, 6))
    target = rng.integers(0, 4, (2, 6, 6))
    weight = np.array([0.5, 1.0, 2.0, 1.5])
    combined = SegmentationLoss(weight=weight, lovasz=0.7)
    expected = (CrossEntropyLoss(weight=weight).forward(logits, target)
                + 0.7 * LovaszSoftmaxLoss().forward(logits, target))
    assert combined.forward(logits, target) == pytest.approx(expected, rel=1e-12)


def test_shards_add_up_to_the_batch():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((3, 4, 5, 5))
    target = rng.integers(0, 4, (3, 5, 5))
    target[1, :2] = 255
    weight = np.array([0.5, 1.0, 2.0, 1.5])
    whole = SegmentationLoss(weight=weight, lovasz=1.0)
    expected_loss = whole.forward(logits, target)
    expected_grad = whole.backward()
    denominator = weight_total(target, weight)
    loss, grads = 0.0, []
    for part in (slice(0, 2), slice(2, 3)):
        shard = SegmentationLoss(weight=weight, lovasz=1.0)
        loss += shard.forward(logits[part], target[part], denominator=denominator, num_images=3)
        grads.append(shard.backward())
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(np.concatenate(grads), expected_grad, rtol=0, atol=1e-15)


def test_a_fully_ignored_image_adds_nothing():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((2, 3, 4, 4))
    target = rng.integers(0, 3, (2, 4, 4))
    target[1] = 255
    loss = LovaszSoftmaxLoss()
    value = loss.forward(logits, target)
    grad = loss.backward()
    assert np.all(grad[1] == 0)
    # the mean is over both images: the ignored one counts as a loss of 0
    assert value == pytest.approx(LovaszSoftmaxLoss().forward(logits[:1], target[:1]) / 2)


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (x, y + 10), "outside"),
    (lambda x, y: (x, y[:, :2]), "shape"),
    (lambda x, y: (x, y.astype(np.float64)), "integer"),
    (lambda x, y: (x.astype(np.int64), y), "float32 or float64"),
    (lambda x, y: (x[0], y), "4"),
])
def test_bad_input_is_refused_with_a_message(bad, message):
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((2, 3, 4, 4)), rng.integers(0, 3, (2, 4, 4))
    x, y = bad(x, y)
    with pytest.raises((ValueError, TypeError), match=message):
        LovaszSoftmaxLoss().forward(x, y)


def test_num_images_below_the_batch_and_a_negative_weight_are_refused():
    x, y = np.zeros((2, 3, 2, 2)), np.zeros((2, 2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="num_images"):
        LovaszSoftmaxLoss().forward(x, y, num_images=1)
    for bad in (-1.0, float("nan"), True, "3"):
        with pytest.raises(ValueError, match="lovasz"):
            SegmentationLoss(lovasz=bad)


def test_backward_before_forward_is_an_error():
    with pytest.raises(ValueError, match="before forward"):
        LovaszSoftmaxLoss().backward()
