"""Structural properties: convolution and transposed convolution are adjoint,
max pooling + unpooling round-trips the maxima, the design's worked shape
examples, and NaN inputs propagate instead of crashing."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfcn.kernels import backend
from npfcn import functional as F
from npfcn.layers import ConvTranspose2d, Conv2d, MaxPool2d, MaxUnpool2d, ReLU
from npfcn.losses import CrossEntropyLoss

BACKENDS = ["c", "numpy"]


def examples(n):
    """``n`` examples under the default profile, scaled up by the thorough profile."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 25))


def select(name):
    if name == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    return backend.using(name)


# --- conv and transposed conv are adjoint -------------------------------------------

@st.composite
def adjoint_configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = tuple(max(1, di * (ki - 1) + 1 - 2 * pi) + draw(st.integers(0, 6))
                 for ki, pi, di in zip(k, p, d))
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), o=draw(st.integers(1, 3)),
                size=size, k=k, s=s, p=p, d=d, seed=draw(st.integers(0, 999)))


@pytest.mark.parametrize("name", BACKENDS)
@examples(60)
@given(cfg=adjoint_configs())
def test_conv2d_and_conv_transpose2d_are_adjoint(name, cfg):
    rng = np.random.default_rng(cfg["seed"])
    H, W = cfg["size"]
    x = rng.standard_normal((cfg["n"], cfg["c"], H, W))
    # The same array serves both: conv weight (out, in, kh, kw) is the
    # transposed conv's (in, out, kh, kw) with in/out swapped.
    w = rng.standard_normal((cfg["o"], cfg["c"], *cfg["k"]))
    with select(name):
        y, _ = F.conv2d_forward(x, w, None, cfg["s"], cfg["p"], cfg["d"])
        r = rng.standard_normal(y.shape)
        # Rows/columns the strided conv never reached are what output_padding restores
        # (independent formula: the slack of the last window, always < stride).
        op = tuple((n + 2 * p - d * (k - 1) - 1) % s
                   for n, p, d, k, s in zip((H, W), cfg["p"], cfg["d"], cfg["k"], cfg["s"]))
        xt, _ = F.conv_transpose2d_forward(r, w, None, cfg["s"], cfg["p"], op, cfg["d"])
    assert xt.shape == x.shape
    lhs, rhs = np.vdot(y, r), np.vdot(x, xt)
    # Same products summed in different orders: rounding only, far below 1e-12 of
    # the sum of |products| (bounded by |x| . conv_T(|r|, |w|)).
    scale_t, _ = F.conv_transpose2d_forward(np.abs(r), np.abs(w), None, cfg["s"], cfg["p"],
                                            op, cfg["d"])
    assert abs(lhs - rhs) <= 1e-12 * np.vdot(np.abs(x), scale_t)


# --- max pooling against a naive loop, and the unpooling round trip ------------------

def torch_rule_output_size(n, k, s, p, ceil_mode):
    """PyTorch's pooling output size, written out independently of npfcn."""
    out = (n + 2 * p - k + ((s - 1) if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:   # the last window must start inside
        out -= 1
    return out


def naive_max_pool(x, k, s, p, ceil_mode):
    N, C, H, W = x.shape
    oh = torch_rule_output_size(H, k[0], s[0], p[0], ceil_mode)
    ow = torch_rule_output_size(W, k[1], s[1], p[1], ceil_mode)
    y = np.empty((N, C, oh, ow))
    idx = np.empty((N, C, oh, ow), dtype=np.int64)
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * s[0] - p[0], ox * s[1] - p[1]
            ys = range(max(y0, 0), min(y0 + k[0], H))
            xs = range(max(x0, 0), min(x0 + k[1], W))
            for n in range(N):
                for c in range(C):
                    best = max(((x[n, c, i, j], i * W + j) for i in ys for j in xs),
                               key=lambda t: t[0])
                    y[n, c, oy, ox], idx[n, c, oy, ox] = best
    return y, idx


@st.composite
def pool_configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    size = tuple(max(1, ki - 2 * pi) + draw(st.integers(0, 6)) for ki, pi in zip(k, p))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 2)), *size),
                k=k, s=s, p=p, ceil_mode=draw(st.booleans()), seed=draw(st.integers(0, 999)))


def positive_distinct(shape, seed):
    """Distinct positive values: unique maxima, and larger than unpooling's zeros."""
    size = int(np.prod(shape))
    return 1.0 + np.random.default_rng(seed).permutation(size).reshape(shape)


@pytest.mark.parametrize("name", BACKENDS)
@examples(40)
@given(cfg=pool_configs(), dtype=st.sampled_from([np.float32, np.float64]))
def test_max_pool_matches_naive_loop(name, cfg, dtype):
    x = positive_distinct(cfg["shape"], cfg["seed"])
    with select(name):
        y, idx = MaxPool2d(cfg["k"], cfg["s"], cfg["p"], ceil_mode=cfg["ceil_mode"],
                           return_indices=True).forward(x.astype(dtype))
    y_ref, idx_ref = naive_max_pool(x, cfg["k"], cfg["s"], cfg["p"], cfg["ceil_mode"])
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(y, y_ref.astype(dtype))


@pytest.mark.parametrize("name", BACKENDS)
@examples(40)
@given(cfg=pool_configs())
def test_unpool_round_trips_the_maxima(name, cfg):
    x = positive_distinct(cfg["shape"], cfg["seed"])
    N, C, H, W = x.shape
    with select(name):
        pool = MaxPool2d(cfg["k"], cfg["s"], cfg["p"], ceil_mode=cfg["ceil_mode"],
                         return_indices=True)
        pooled, idx = pool.forward(x)
        unpooled = MaxUnpool2d(cfg["k"], cfg["s"], cfg["p"]).forward(pooled, idx, x.shape)
        pooled_again, idx_again = pool.forward(unpooled)
    assert unpooled.shape == x.shape
    # The maxima sit at their argmax positions, zeros everywhere else.
    planes_x, planes_u = x.reshape(N * C, H * W), unpooled.reshape(N * C, H * W)
    for plane, positions in enumerate(idx.reshape(N * C, -1)):
        is_max = np.zeros(H * W, dtype=bool)
        is_max[positions] = True
        np.testing.assert_array_equal(planes_u[plane, is_max], planes_x[plane, is_max])
        assert np.all(planes_u[plane, ~is_max] == 0)
    # Each window still holds its own maximum and nothing larger (x > 0 > the zeros).
    np.testing.assert_array_equal(pooled_again, pooled)
    np.testing.assert_array_equal(idx_again, idx)


# --- the design's worked shape examples ---------------------------------------------

@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("in_size, kernel, kwargs, out_size", [
    (2, 3, dict(stride=2), 5),
    (2, 3, dict(stride=2, padding=1, output_padding=1), 4),
    (2, 3, dict(stride=2, padding="same"), 4),
    (3, 5, dict(stride=2, padding=2, output_padding=1), 6),
])
def test_transposed_conv_worked_shapes(name, in_size, kernel, kwargs, out_size):
    with select(name):
        layer = ConvTranspose2d(2, 3, kernel, dtype=np.float64, rng=0, **kwargs)
        y = layer.forward(np.ones((1, 2, in_size, in_size)))
    assert y.shape == (1, 3, out_size, out_size)


def test_transposed_conv_worked_example_values():
    # 2x2 input of ones, 3x3 ones kernel, stride 2: the stamps overlap on the
    # middle row and column (2 there, 4 at the centre).
    layer = ConvTranspose2d(1, 1, 3, stride=2, bias=False, dtype=np.float64)
    layer.params["weight"][...] = 1.0
    y = layer.forward(np.ones((1, 1, 2, 2)))
    expected = np.array([[1, 1, 2, 1, 1],
                         [1, 1, 2, 1, 1],
                         [2, 2, 4, 2, 2],
                         [1, 1, 2, 1, 1],
                         [1, 1, 2, 1, 1]], dtype=float)
    np.testing.assert_array_equal(y[0, 0], expected)
    # padding=1 trims one ring; output_padding=1 gives back the bottom/right row.
    layer = ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False,
                            dtype=np.float64)
    layer.params["weight"][...] = 1.0
    np.testing.assert_array_equal(layer.forward(np.ones((1, 1, 2, 2)))[0, 0], expected[1:, 1:])


# --- NaN propagates ------------------------------------------------------------------

@pytest.mark.parametrize("name", BACKENDS)
def test_nan_propagates_through_conv_and_transposed_conv(name):
    x = np.zeros((1, 1, 7, 7))
    x[0, 0, 3, 3] = np.nan
    with select(name):
        conv = Conv2d(1, 2, 3, padding=1, dtype=np.float64, rng=0)
        y = conv.forward(x)
        dx = conv.backward(np.ones_like(y))
        up = ConvTranspose2d(1, 1, 3, stride=2, dtype=np.float64, rng=0)
        z = up.forward(x)
        up.backward(np.ones_like(z))
    # NaN exactly where a window touches the NaN pixel, finite elsewhere.
    touched = np.zeros((7, 7), dtype=bool)
    touched[2:5, 2:5] = True
    assert np.all(np.isnan(y[0][:, touched])) and np.all(np.isfinite(y[0][:, ~touched]))
    assert np.isnan(conv.grads["weight"]).any()          # dw = dy . x sees the NaN
    assert np.all(np.isfinite(dx))                         # dx = w^T dy does not
    assert np.isnan(z[0, 0, 6:9, 6:9]).all() and np.isfinite(z[0, 0, :6]).all()


@pytest.mark.parametrize("name", BACKENDS)
def test_nan_propagates_through_pooling_relu_and_loss(name):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 2] = np.nan
    with select(name):
        pool = MaxPool2d(2, return_indices=True)
        y, idx = pool.forward(x)
        pool.backward(np.ones_like(y))
        u = MaxUnpool2d(2).forward(y, idx)
    # NaN wins its window (as in PyTorch) and points at the NaN pixel.
    assert np.isnan(y[0, 0, 0, 1]) and idx[0, 0, 0, 1] == 1 * 4 + 2
    np.testing.assert_array_equal(y[0, 0, 1], [13.0, 15.0])
    assert np.isnan(u[0, 0, 1, 2])
    relu = ReLU()
    assert np.isnan(relu.forward(x)[0, 0, 1, 2])
    relu.backward(np.ones_like(x))
    loss = CrossEntropyLoss()
    logits = np.zeros((1, 3, 2, 2))
    logits[0, 1, 0, 0] = np.nan
    value = loss.forward(logits, np.zeros((1, 2, 2), dtype=np.int64))
    assert np.isnan(value)
    assert np.isnan(loss.backward()[0, :, 0, 0]).all()


@pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_max_pool_agrees_with_numpy(dtype):
    # Large enough for the C kernel's OpenMP split (> 32768 window reads); ties
    # included (small integers), which both paths must break the same way.
    x = np.random.default_rng(5).integers(0, 5, (2, 16, 33, 31)).astype(dtype)
    results = {}
    for name in BACKENDS:
        with backend.using(name):
            pool = MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True)
            y, idx = pool.forward(x)
            results[name] = (y, idx, pool.backward(np.ones_like(y)))
    for got, ref in zip(results["c"], results["numpy"]):
        np.testing.assert_array_equal(got, ref)
