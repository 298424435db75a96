"""BatchNorm2d: gradients against central differences (float64) and PyTorch parity
(float32) in training and eval mode, running statistics over several steps."""
import numpy as np
import pytest

from npfcn.gradcheck import gradcheck, numerical_gradient, relative_error
from npfcn.kernels import backend, batchnorm as batchnorm_kernel
from npfcn.layers import BatchNorm2d
from npfcn.reference.batchnorm import batch_norm2d_backward, batch_norm2d_forward


def _bn64(channels=3, **kwargs):
    bn = BatchNorm2d(channels, dtype=np.float64, **kwargs)
    rng = np.random.default_rng(1)
    if bn.affine:    # away from 1 / 0 so a swapped gamma/beta would show
        bn.params["weight"][...] = rng.uniform(0.5, 2.0, channels)
        bn.params["bias"][...] = rng.normal(size=channels)
    return bn


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 3, 1), (4, 3, 1, 1)])
def test_gradcheck_training_mode(shape):
    # float64 central differences: a correct backward agrees to ~1e-9 (see npfcn.gradcheck).
    # Not seed 0: gradcheck projects the output on a seed-0 draw, and for x drawn from the
    # same stream sum(BN(x) * r) sits at a stationary point (every gradient ~0, pure noise).
    x = np.random.default_rng(7).normal(2.0, 3.0, shape)
    gradcheck(_bn64(), (x,)).assert_ok(1e-6)


def test_gradcheck_eval_mode_and_without_affine():
    # Eval mode: the module keeps nothing for backward, so the reference pair is checked
    # (running statistics given, training=False) against central differences.
    rng = np.random.default_rng(7)
    x, dy = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    gamma, beta = rng.uniform(0.5, 2.0, 3), rng.normal(size=3)
    mean, var = np.array([0.5, -1.0, 2.0]), np.array([0.3, 2.0, 1.5])

    def loss():
        return float(np.sum(batch_norm2d_forward(x, gamma, beta, mean, var, False)[0] * dy))

    _, cache = batch_norm2d_forward(x, gamma, beta, mean, var, training=False)
    dx, dgamma, dbeta = batch_norm2d_backward(dy, cache)
    for analytic, array in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        assert relative_error(analytic, numerical_gradient(loss, array)) < 1e-6
    gradcheck(_bn64(affine=False), (x,)).assert_ok(1e-6)
    gradcheck(_bn64(track_running_stats=False), (x,)).assert_ok(1e-6)


def test_normalises_by_hand():
    # One channel, values 1, 2, 3, 6: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5,
    # unbiased 14 / 3.
    x = np.array([1.0, 2.0, 3.0, 6.0]).reshape(2, 1, 2, 1)
    bn = BatchNorm2d(1, eps=0.0, momentum=0.5, dtype=np.float64)
    y = bn.forward(x)
    np.testing.assert_allclose(y.ravel(), (np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5), rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_mean"], [0.5 * 0 + 0.5 * 3])
    np.testing.assert_allclose(bn.buffers["running_var"], [0.5 * 1 + 0.5 * 14 / 3])
    bn.eval()
    np.testing.assert_allclose(bn.forward(x).ravel(),
                               (np.array([1, 2, 3, 6]) - 1.5) / np.sqrt(0.5 + 7 / 3), rtol=1e-12)


def test_single_value_per_channel_is_refused_in_training():
    with pytest.raises(ValueError, match="more than one value"):
        BatchNorm2d(2).forward(np.ones((1, 2, 1, 1), np.float32))
    BatchNorm2d(2).eval().forward(np.ones((1, 2, 1, 1), np.float32))    # eval: fine


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="3 channels"):
        BatchNorm2d(3).forward(np.ones((2, 4, 2, 2), np.float32))


def test_functional_backward_without_affine_returns_none():
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 3))
    _, cache = batch_norm2d_forward(x, None, None, None, None, training=True)
    dx, dgamma, dbeta = batch_norm2d_backward(np.ones_like(x), cache)
    assert dgamma is None and dbeta is None
    np.testing.assert_allclose(dx, 0, atol=1e-12)   # sum of xhat is constant (0): no gradient


def test_pytorch_parity_training_and_eval_over_steps():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    channels = 5
    ours = BatchNorm2d(channels, momentum=0.2)
    theirs = torch.nn.BatchNorm2d(channels, momentum=0.2)
    weight, bias = rng.uniform(0.5, 2, channels), rng.normal(size=channels)
    ours.params["weight"][...] = weight
    ours.params["bias"][...] = bias
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(weight))
        theirs.bias.copy_(torch.from_numpy(bias))
    # float32 against float32: sums of a few hundred values agree to ~1e-6 relative;
    # 1e-4 leaves room for the different summation orders.
    for step in range(4):
        x = rng.normal(1.0 + step, 2.0, (3, channels, 6, 7)).astype(np.float32)
        dy = rng.normal(size=x.shape).astype(np.float32)
        ours.zero_grad()
        y = ours.forward(x)
        dx = ours.backward(dy)
        xt = torch.from_numpy(x).requires_grad_(True)
        theirs.zero_grad()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ours.grads["weight"], theirs.weight.grad.numpy(), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ours.grads["bias"], theirs.bias.grad.numpy(), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(ours.buffers["running_mean"], theirs.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.buffers["running_var"], theirs.running_var.numpy(), rtol=1e-5, atol=1e-6)
    ours.eval()
    theirs.eval()
    x = rng.normal(size=(2, channels, 4, 4)).astype(np.float32)
    y = ours.forward(x)
    np.testing.assert_allclose(y, theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    # eval-mode gradients: the reference pair with the running statistics PyTorch has now
    dy = rng.normal(size=x.shape).astype(np.float32)
    _, cache = batch_norm2d_forward(x, ours.params["weight"], ours.params["bias"],
                                    ours.buffers["running_mean"], ours.buffers["running_var"],
                                    training=False)
    dx, _, _ = batch_norm2d_backward(dy, cache)
    xt = torch.from_numpy(x).requires_grad_(True)
    theirs(xt).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 5, 3, 3), (3, 2, 1, 11), (2, 4, 17, 9)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_c_passes_equal_the_reference(dtype, tol, shape, training, affine):
    """npfcn.kernels.batchnorm against npfcn.reference.batchnorm: outputs, running
    statistics, dx, dgamma, dbeta.  Sizes not a multiple of the C loop's 8 lanes.
    Tolerance: the reference sums in the array's dtype (pairwise), C in double - in
    float64 rounding only, in float32 ~1e-6 relative; 2e-5 leaves room for dx's
    cancellation (dy - xhat * a - b)."""
    rng = np.random.default_rng(3)
    C = shape[1]
    x = rng.normal(2.0, 3.0, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    gamma, beta = (rng.uniform(0.5, 2.0, C).astype(dtype), rng.normal(size=C).astype(dtype)) \
        if affine else (None, None)
    stats = [(rng.normal(size=C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype))]
    stats.append((stats[0][0].copy(), stats[0][1].copy()))
    results = []
    for (mean, var), (forward, backward) in zip(stats, (
            (batch_norm2d_forward, batch_norm2d_backward),
            (batchnorm_kernel.forward, batchnorm_kernel.backward))):
        y, cache = forward(x, gamma, beta, mean, var, training, 0.1, 1e-5)
        results.append((y, mean, var, *backward(dy, cache)))
    for a, b in zip(*results):
        if b is None:
            assert a is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1.0)
