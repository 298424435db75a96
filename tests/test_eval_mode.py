"""Eval mode is inference: no layer keeps what only its backward pass needs.

In training mode every module keeps its forward pass's cache (inputs, masks,
pooling indices) until backward; in eval mode (evaluation, prediction) it keeps
none, so an image's intermediate maps are freed layer by layer, and backward
says why it cannot run.  Pooling indices are still returned when a caller asks
for them (SegNet's unpooling needs them in eval mode too).
"""
import numpy as np
import pytest

from npfcn.layers import (Add, Conv2d, ConvReLU2d, ConvTranspose2d, Crop, Dropout, MaxPool2d,
                          MaxUnpool2d, ReLU)
from npfcn.models import FCN8s
from module_tree import modules_of


@pytest.fixture(scope="module")
def fcn8s():
    return FCN8s(num_classes=3, width=1 / 16, seed=0)


def test_fcn8s_keeps_no_cache_after_an_eval_forward(fcn8s):
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 24)).astype(np.float32)
    layers = modules_of(fcn8s)
    assert len(layers) >= 20 and any(isinstance(m, MaxPool2d) for m in layers)
    fcn8s.train()
    fcn8s.forward(x)
    assert all(m._cache is not None for m in layers if isinstance(m, (Conv2d, MaxPool2d)))
    fcn8s.backward(np.zeros((1, 3, 20, 24), np.float32))    # consumes the caches
    fcn8s.eval()
    scores = fcn8s.forward(x)
    assert scores.shape == (1, 3, 20, 24)
    holding = [type(m).__name__ for m in layers if m._cache is not None]
    assert holding == [], f"layers still holding a cache in eval mode: {holding}"
    with pytest.raises(ValueError, match="eval mode"):
        fcn8s.backward(np.zeros_like(scores))
    fcn8s.train()


@pytest.mark.parametrize("make, inputs", [
    (lambda: Conv2d(2, 3, 3, padding=1, rng=0), lambda x: (x,)),
    (lambda: ConvReLU2d(2, 3, 3, padding=1, rng=0), lambda x: (x,)),
    (lambda: ConvTranspose2d(2, 3, 4, stride=2, rng=0), lambda x: (x,)),
    (lambda: MaxPool2d(2), lambda x: (x,)),
    (lambda: ReLU(), lambda x: (x,)),
    (lambda: Dropout(0.5, rng=0), lambda x: (x,)),
    (lambda: Crop(1), lambda x: (x, (2, 2))),
    (lambda: Add(), lambda x: (x, x)),
])
def test_every_layer_drops_its_cache_in_eval_mode_and_keeps_it_in_training(make, inputs):
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    layer = make()
    y = layer.forward(*inputs(x))
    assert layer._cache is not None
    layer.backward(np.ones_like(y))
    layer.eval()
    y_eval = layer.forward(*inputs(x))
    assert layer._cache is None
    with pytest.raises(ValueError, match=r"eval mode.*\.train\(\)"):
        layer.backward(np.ones_like(y_eval))


def test_pool_indices_are_still_returned_in_eval_mode():
    """SegNet's decoder unpools with the encoder's indices during prediction."""
    x = np.random.default_rng(2).standard_normal((1, 2, 6, 6)).astype(np.float32)
    pool, unpool = MaxPool2d(2, return_indices=True).eval(), MaxUnpool2d(2).eval()
    y, indices = pool.forward(x)
    assert indices.shape == y.shape and pool._cache is None
    restored = unpool.forward(y, indices)
    assert unpool._cache is None
    np.testing.assert_array_equal(restored.max(axis=(2, 3)), x.max(axis=(2, 3)))
