"""Computing FCN's padded maps by regions (npfcn/regions.py) against computing them densely.

The reference is the same model with ``regions.enabled(False)``: every map
computed pixel by pixel, every gradient the plain backward pass (itself checked
against numerical gradients and PyTorch elsewhere).  Tolerances: in float64 the
two sum the same products in different orders (the constant part's dw is one
product of sums instead of a sum of products), so they agree to rounding:
1e-11 relative to the largest value of each array.  In float32, 1e-4 relative
(sums of ~10^5 terms in other orders).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npfcn import backend, direct, regions
from npfcn.models.fcn import build_model

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


def relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def narrow_model(dtype, seed=0):
    """The default run's narrow FCN-8s with biases and score layers away from zero, so
    that the constant part is not 0 and every gradient reaches the encoder."""
    model = build_model("fcn8s", num_classes=5, width=0.0625, dtype=dtype, learn_upsampling=True,
                        dropout=0.0, seed=seed)
    rng = np.random.default_rng(seed)
    for name, value in model.params.items():
        if name.endswith(".bias") or name.startswith("score"):
            value[...] = rng.standard_normal(value.shape) * 0.2
    return model


def both_ways(model, x, dscores):
    results = []
    for flag in (True, False):
        with regions.enabled(flag):
            model.zero_grad()
            scores = model.forward(x)
            dx = model.backward(dscores)
            results.append((scores.copy(), dx.copy(), {k: v.copy() for k, v in model.grads.items()},
                            model.encoder._region_steps))
    return results


@settings(max_examples=12)
@given(n=st.integers(1, 3), h=st.integers(1, 140), w=st.integers(1, 140), seed=st.integers(0, 99))
def test_float64_equals_the_dense_computation(n, h, w, seed):
    model = narrow_model(np.float64, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, h, w))
    dscores = rng.standard_normal((n, 5, h, w))
    (s1, dx1, g1, steps), (s0, dx0, g0, dense_steps) = both_ways(model, x, dscores)
    assert steps >= 2 and dense_steps == 0      # the regions were used, then not
    assert relative(s1, s0) < 1e-11
    assert relative(dx1, dx0) < 1e-11
    for name in g0:
        assert relative(g1[name], g0[name]) < 1e-11, name


def test_float32_equals_the_dense_computation_on_the_default_input():
    model = narrow_model(np.float32)
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 128, 128), dtype=np.float32)
    dscores = rng.standard_normal((2, 5, 128, 128)).astype(np.float32)
    (s1, dx1, g1, steps), (s0, dx0, g0, _) = both_ways(model, x, dscores)
    assert steps == 10          # conv1_1 ... pool3: the prefix ends at the first tap
    assert relative(s1, s0) < 1e-4 and relative(dx1, dx0) < 1e-4
    for name in g0:
        assert relative(g1[name], g0[name]) < 1e-4, name


def test_every_map_is_constant_outside_its_region():
    """The geometry itself, checked on dense maps: outside each planned region every
    pixel of a channel holds one value (the region module's central claim)."""
    model = narrow_model(np.float64, seed=3)
    x = np.random.default_rng(3).standard_normal((2, 3, 37, 52))
    steps = model.encoder.steps
    count, planned = regions.plan([m for _, m in steps[:10]], x.shape)
    assert count == len(planned) >= 2
    with regions.enabled(False):
        a = x
        for (name, module), region in zip(steps[:count], planned):
            a = module.forward(a)
            assert a.shape[2:] == (region.H, region.W), name
            outside = ~region.mask()
            assert outside.any(), name
            values = a[:, :, outside]                       # (N, C, pixels)
            assert np.array_equal(values, np.broadcast_to(values[:, :, :1], values.shape)), name
            assert np.array_equal(values[0, :, 0], values[-1, :, 0]), name   # the same in every image


def test_the_frame_is_needed():
    """Without the frame (the zero padding's ring) the region would be wrong: the
    outermost ring of conv1_2's output differs from the constant."""
    model = narrow_model(np.float64, seed=4)
    with regions.enabled(False):
        a = model.encoder.steps[1][1].forward(model.encoder.steps[0][1].forward(
            np.zeros((1, 3, 8, 8))))
    assert not np.allclose(a[0, :, 0, 50], a[0, :, 50, 50])
    assert np.allclose(a[0, :, 1, 50], a[0, :, 50, 50])


def test_no_regions_where_they_do_not_apply():
    x = np.zeros((1, 3, 16, 16), dtype=np.float32)
    wide = build_model("fcn8s", num_classes=3, width=0.125, dropout=0.0)   # 8 ... 64 channels
    model = narrow_model(np.float32)
    with backend.using("numpy"):
        model.forward(x)
        assert model.encoder._region_steps == 0
    model.forward(x)
    assert model.encoder._region_steps > 0
    wide.forward(x)
    assert 0 < wide.encoder._region_steps <= 10     # only while every layer is narrow


def test_region_rectangles_cover_the_region_once():
    region = regions.Region(40, 50, 10, 20, 30, 45, 3)
    rects = region.rects()
    cover = np.zeros((40, 50), dtype=int)
    for y0, y1, x0, x1 in rects:
        cover[y0:y1, x0:x1] += 1
    assert cover.max() == 1
    expected = np.zeros((40, 50), dtype=bool)
    expected[10:20, 30:45] = True
    expected[:3], expected[-3:], expected[:, :3], expected[:, -3:] = True, True, True, True
    assert np.array_equal(cover == 1, expected)
    assert list(rects[:, 2]) == sorted(rects[:, 2])
    assert regions.Region(6, 50, 2, 3, 2, 3, 3).rects().tolist() == [[0, 6, 0, 50]]


def test_direct_rectangles_compute_inside_and_fill_outside():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 12, 15))
    w = rng.standard_normal((5, 3, 3, 3))
    fill = rng.standard_normal(5)
    rects = np.array([[0, 12, 0, 2], [3, 7, 4, 9], [5, 12, 10, 15]])
    y = direct.conv_forward(x, w, (1, 1), rects=rects, fill=fill)
    dense = direct.conv_forward(x, w, (1, 1), rects=np.array([[0, 12, 0, 15]]))
    inside = np.zeros((12, 15), dtype=bool)
    for y0, y1, x0, x1 in rects:
        inside[y0:y1, x0:x1] = True
    assert relative(y[:, :, inside], dense[:, :, inside]) < 1e-13
    assert np.array_equal(y[:, :, ~inside], np.broadcast_to(fill[None, :, None], y[:, :, ~inside].shape))
    dw, db = np.zeros(w.size), np.zeros(5)
    dy = rng.standard_normal(y.shape)
    direct.add_weight_grad(dy, x, w.shape, (1, 1), dw, db=db, rects=rects)
    masked = np.where(inside, dy, 0.0)
    dw_dense, db_dense = np.zeros(w.size), np.zeros(5)
    direct.add_weight_grad(masked, x, w.shape, (1, 1), dw_dense, db=db_dense,
                           rects=np.array([[0, 12, 0, 15]]))
    assert relative(dw, dw_dense) < 1e-12 and relative(db, db_dense) < 1e-12


@pytest.mark.parametrize("rects, words", [
    (np.array([[0, 5, 0, 5], [2, 6, 3, 8]]), "overlap"),
    (np.array([[0, 5, 4, 8], [6, 8, 0, 3]]), "sorted"),
    (np.array([[0, 13, 0, 5]]), "outside"),
    (np.array([[0, 5, 0]]), "(k, 4)"),
])
def test_bad_rectangles_are_refused_before_c(rects, words):
    x = np.zeros((1, 2, 12, 15))
    w = np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        direct.conv_forward(x, w, (1, 1), rects=rects)
