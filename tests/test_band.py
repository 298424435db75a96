"""The constant band around FCN's early feature maps (npfcn/band.py).

Two independent checks:
- geometry: run the encoder computing every output (bands switched off) and check
  that every position a Band calls constant really holds its value, layer by layer;
- skipping: the network with bands gives the same scores and gradients as the
  one that computes everything.

Tolerances: float64 throughout.  A band's constant is summed in another order
than the kernel sums the same products (and the band's weight-gradient share is
summed over the band in closed form), so results agree to rounding: 1e-12
relative to the largest value.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from npfcn import backend, direct
from npfcn import band as band_module
from npfcn.band import Band
from npfcn.layers import Conv2d
from npfcn.models import FCN8s, vgg

from conv_reference import reference_conv, relative

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


def narrow_fcn(seed, dtype=np.float64):
    """A narrow FCN-8s with random biases: nonzero constants, so the bands have rings."""
    model = FCN8s(num_classes=3, width=1 / 16, dropout=0.0, dtype=dtype)
    rng = np.random.default_rng(seed)
    for name, value in model.params.items():
        if name.endswith("bias"):
            value[...] = rng.normal(0, 0.5, value.shape)
    return model


def bands_off(monkeypatch):
    monkeypatch.setattr(vgg, "band_after", lambda *args: None)


@given(h=st.integers(1, 70), w=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_every_position_called_constant_holds_the_constant(h, w, seed):
    model = narrow_fcn(seed)
    x = np.random.default_rng(seed).random((2, 3, h, w))
    band = Band.of_image(x.shape, x.dtype)
    checked = 0
    for _, module in model.encoder.steps:
        if isinstance(module, Conv2d):
            band_next = vgg.band_after(band, module, None)
            x = module.forward(x)            # every output computed
        else:
            x = module.forward(x)
            band_next = vgg.band_after(band, module, x.shape)
        band = band_next
        if band is None:
            continue
        assert band.size == x.shape[2:]
        live = np.zeros(band.size, bool)
        for y0, y1, x0, x1 in band.windows():
            assert not live[y0:y1, x0:x1].any(), "windows must not overlap"
            live[y0:y1, x0:x1] = True
        assert np.count_nonzero(~live) == band.band_outputs() > 0
        expected = np.broadcast_to(band.value[None, :, None], x.shape[:2] + (1,))
        assert relative(x[:, :, ~live], expected) < 1e-12
        checked += 1
    assert checked >= 3     # conv1_1 .. at least pool1 for any input size


@pytest.mark.parametrize("size", [(128, 128), (1, 1), (7, 9), (37, 50)])
def test_skipping_the_band_changes_no_score_and_no_gradient(size, monkeypatch):
    """Every band skipped, however small (by default only the large ones are)."""
    monkeypatch.setattr(band_module, "MIN_BAND_SHARE", 0.0)
    rng = np.random.default_rng(sum(size))
    x = rng.random((2, 3, *size))
    model = narrow_fcn(1)
    seen = []
    forward = direct.conv_forward
    monkeypatch.setattr(direct, "conv_forward",
                        lambda *a, **k: seen.append(k.get("windows")) or forward(*a, **k))
    scores = model.forward(x)
    dscores = rng.standard_normal(scores.shape)
    model.zero_grad()
    model.backward(dscores)
    grads = {name: g.copy() for name, g in model.grads.items()}
    # not vacuous: conv1_2 onwards computed a ring and an inner rectangle only
    assert sum(1 for windows in seen if windows is not None and len(windows) == 5) >= 5

    bands_off(monkeypatch)
    assert relative(model.forward(x), scores) < 1e-12
    model.zero_grad()
    model.backward(dscores)
    for name, g in grads.items():
        assert relative(g, model.grads[name]) < 1e-12, name


def test_windows_and_fill_of_the_direct_kernel():
    """Only the windows are computed; every other output is the fill value.  The
    tall thin windows (the ring's sides) go through the transposed problem."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 11))
    w = rng.standard_normal((5, 3, 3, 3))
    fill = rng.standard_normal(5)
    windows = [(2, 5, 3, 8), (0, 1, 0, 11), (8, 9, 1, 2), (1, 8, 9, 11), (1, 8, 0, 1)]
    assert [direct._narrow(rect) for rect in windows] == [False, False, False, True, True]
    y0, dy, _, _ = reference_conv(x, w, (1, 1))
    y = direct.conv_forward(x, w, (1, 1), windows=windows, fill=fill)
    live = np.zeros((9, 11), bool)
    dw0 = np.zeros(w.shape)
    for a, b, c, d in windows:
        live[a:b, c:d] = True
        patch = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        for i in range(3):
            for j in range(3):
                dw0[:, :, i, j] += np.einsum("nohw,nchw->oc", dy[:, :, a:b, c:d],
                                             patch[:, :, a + i:b + i, c + j:d + j])
    assert relative(y[:, :, live], y0[:, :, live]) < 1e-12
    assert np.array_equal(y[:, :, ~live], np.broadcast_to(fill[None, :, None], (2, 5, (~live).sum())))
    dw = np.zeros(w.size)
    direct.conv_backward(dy, x, w, (1, 1), dw, windows)
    assert relative(dw.reshape(w.shape), dw0) < 1e-12


@pytest.mark.parametrize("windows, fill, message", [
    ([(0, 10, 0, 3)], None, "window"),          # past the bottom
    ([(3, 2, 0, 3)], None, "window"),           # upside down
    ([(0, 2, -1, 3)], None, "window"),
    (None, np.zeros(4), "fill"),                # one value short
    (None, np.zeros(5, np.float32), "fill"),    # wrong dtype
])
def test_bad_windows_and_fill_are_refused_before_c(windows, fill, message):
    x = np.zeros((1, 3, 9, 11))
    w = np.zeros((5, 3, 3, 3))
    with pytest.raises(ValueError, match=message):
        direct.conv_forward(x, w, (1, 1), windows=windows, fill=fill)


def test_by_default_only_large_bands_are_skipped():
    """128x128 input: conv1_2 and conv2_x (band >= 70 % of the map) skip it; conv3_x
    (band 51-64 %) and conv4_x compute everything - their ring would cost more."""
    model = narrow_fcn(2, np.float32)
    x = np.random.default_rng(0).random((1, 3, 128, 128)).astype(np.float32)
    band = Band.of_image(x.shape, x.dtype)
    skipped = []
    for name, module in model.encoder.steps:
        if isinstance(module, Conv2d):
            band = vgg.band_after(band, module, None)
            if band is not None and band.worth_skipping():
                skipped.append(name)
        x = module.forward(x)
        if not isinstance(module, Conv2d):
            band = vgg.band_after(band, module, x.shape)
    assert skipped == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
