"""npfcn.gradcheck itself: it must catch planted wrong gradients, pass correct
ones, and compute numerical gradients and relative errors correctly."""
import numpy as np
import pytest

from npfcn.gradcheck import GradcheckReport, gradcheck, numerical_gradient, relative_error
from npfcn.layers import Conv2d, ConvTranspose2d, Crop, Dropout, ReLU
from npfcn.losses import CrossEntropyLoss

TOL = 1e-6   # the float64 tolerance the gradient tests use


class ScaledWeightGradConv(Conv2d):
    """Planted bug: dw 1 % too large."""

    def backward(self, dy):
        before = self.grads["weight"].copy()
        dx = super().backward(dy)
        self.grads["weight"] = before + (self.grads["weight"] - before) * 1.01
        return dx


class NoBiasGradConv(Conv2d):
    """Planted bug: the bias gradient is dropped."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["bias"][...] = 0
        return dx


class SlightlyWrongInputGradConvTranspose(ConvTranspose2d):
    """Planted bug: dx off by one part in 10^4."""

    def backward(self, dy):
        return super().backward(dy) * 1.0001


class LeakyBackwardReLU(ReLU):
    """Planted bug: the backward pass lets 1 % of the gradient through negative inputs."""

    def backward(self, dy):
        positive = self._cache[-1]      # functional's cache: (path, shape, dtype, y)
        return super().backward(dy) + np.where(positive, 0, 0.01 * dy)


class UnweightedGradLoss(CrossEntropyLoss):
    """Planted bug: forward uses the class weights, backward forgets them."""

    def backward(self, grad=1.0):
        path, (prob, target, pixel_weight, scale) = self._cache     # float64: the reference's
        self._cache = (path, (prob, target, (pixel_weight > 0).astype(prob.dtype), scale))
        return super().backward(grad)


def conv_input():
    return np.random.default_rng(0).standard_normal((2, 2, 5, 5))


@pytest.mark.parametrize("make, inputs, bad_tensor", [
    (lambda: ScaledWeightGradConv(2, 3, 3, padding=1, dtype=np.float64, rng=0),
     lambda: (conv_input(),), "weight"),
    (lambda: NoBiasGradConv(2, 3, 3, stride=2, dtype=np.float64, rng=0),
     lambda: (conv_input(),), "bias"),
    (lambda: SlightlyWrongInputGradConvTranspose(2, 2, 3, stride=2, dtype=np.float64, rng=0),
     lambda: (conv_input(),), "input0"),
    (lambda: LeakyBackwardReLU(), lambda: (conv_input(),), "input0"),
    (lambda: UnweightedGradLoss(weight=[0.5, 2.0, 1.0]),
     lambda: (conv_input()[:, :, :3].transpose(0, 2, 1, 3).copy(),
              np.random.default_rng(1).integers(0, 3, (2, 2, 5))), "input0"),
], ids=["dw x1.01", "no bias grad", "dx x1.0001", "leaky relu", "loss without weights"])
def test_planted_wrong_gradient_is_caught(make, inputs, bad_tensor):
    report = gradcheck(make(), inputs())
    assert report.errors[bad_tensor] > TOL
    assert not report.passed(TOL)
    with pytest.raises(AssertionError, match=bad_tensor):
        report.assert_ok(TOL)
    # The other tensors of the module are still correct.
    assert all(err < TOL for name, err in report.errors.items() if name != bad_tensor)


def test_error_size_reflects_the_planted_scale():
    # dw * 1.01: |1.01 g - g| / (1.01 |g|max) = 0.01 / 1.01 exactly (up to the ~1e-10 noise).
    report = gradcheck(ScaledWeightGradConv(2, 3, 3, dtype=np.float64, rng=0), (conv_input(),))
    assert report.errors["weight"] == pytest.approx(0.01 / 1.01, rel=1e-5)


@pytest.mark.parametrize("make", [
    lambda: Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0),
    lambda: ConvTranspose2d(2, 2, 3, stride=2, dtype=np.float64, rng=0),
    lambda: Dropout(0.5, rng=0),
], ids=["conv", "conv_transpose", "dropout"])
def test_correct_gradients_pass(make):
    module = make()
    report = gradcheck(module, (conv_input(),))
    expected = {"input0"} | set(getattr(module, "params", {}))
    assert set(report.errors) == expected
    report.assert_ok(TOL)
    assert report.passed(TOL)


def test_dropout_without_rng_restoring_would_fail():
    # gradcheck restores the layer's rng before each forward; a Dropout whose
    # generator is swapped for a fresh one on every call draws new masks, and the
    # numerical gradient no longer matches - evidence the restoring matters.
    class FreshMaskDropout(Dropout):
        calls = 0

        def forward(self, x):
            FreshMaskDropout.calls += 1
            self.rng = np.random.default_rng(FreshMaskDropout.calls)
            return super().forward(x)

    report = gradcheck(FreshMaskDropout(0.5), (conv_input(),))
    assert report.errors["input0"] > TOL


def test_gradcheck_requires_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(Conv2d(2, 3, 3, rng=0), (conv_input(),))          # float32 parameters
    with pytest.raises(TypeError, match="float64"):
        gradcheck(ReLU(), (conv_input().astype(np.float32),))


def test_gradcheck_leaves_inputs_and_parameters_unchanged():
    x = conv_input()
    layer = Conv2d(2, 3, 3, dtype=np.float64, rng=0)
    weight = layer.params["weight"].copy()
    gradcheck(layer, (x,))
    np.testing.assert_array_equal(x, conv_input())
    np.testing.assert_array_equal(layer.params["weight"], weight)


def test_numerical_gradient_of_a_known_function():
    # f(a) = sum(a**3) has gradient 3 a**2; central differences are exact up to
    # eps**2 * a = 1e-12 truncation plus ~1e-10 rounding.
    a = np.random.default_rng(2).standard_normal((3, 4))
    grad = numerical_gradient(lambda: float(np.sum(a ** 3)), a, eps=1e-6)
    np.testing.assert_allclose(grad, 3 * a ** 2, rtol=0, atol=1e-8)


def test_relative_error_definition():
    assert relative_error([1.0, 2.0], [1.0, 2.02]) == pytest.approx(0.02 / 2.02)
    assert relative_error([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert relative_error(np.ones((1, 3)), np.ones((2, 3))) == np.inf   # no broadcasting
    assert relative_error([1e-20, 0.0], [0.0, 0.0]) == 1.0   # scale is the larger side
    report = GradcheckReport({"input0": 1e-9, "weight": 2e-3})
    assert report.max_error == 2e-3 and not report.passed(1e-6)
    assert "weight" in str(report) and "2.000e-03" in str(report)


def test_input_without_a_returned_gradient_counts_as_zero():
    # Crop's size may be a reference array: it does not affect the output, so
    # its numerical gradient is zero and backward (returning only d/dx) agrees.
    x = np.random.default_rng(4).standard_normal((1, 2, 5, 5))
    report = gradcheck(Crop(1), (x, np.zeros((1, 2, 3, 3))))
    assert set(report.errors) == {"input0", "input1"} and report.errors["input1"] == 0.0
    report.assert_ok(TOL)


def test_wrong_shaped_gradient_is_caught():
    class SummedBatchGradReLU(ReLU):
        """Planted bug: d/dx summed over the batch, shape (1, C, H, W)."""

        def backward(self, dy):
            return super().backward(dy).sum(axis=0, keepdims=True)

    x = np.random.default_rng(5).uniform(0.5, 1.0, (2, 1, 3, 3))
    report = gradcheck(SummedBatchGradReLU(), (x,))
    assert report.errors["input0"] == np.inf
    with pytest.raises(AssertionError):
        report.assert_ok(TOL)
