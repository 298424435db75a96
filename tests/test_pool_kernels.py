"""The C max-pool and unpool kernels (npfcn/kernels/pooling.py, csrc/maxpool.c,
csrc/unpool.c) against the NumPy reference path (npfcn.reference.pooling), exactly.

Pooling is a comparison and unpooling a placement, so the two paths must agree
bit for bit (NaN compared as equal).  Gradients are drawn as small integers so
that even where overlapping windows add several gradients into one pixel the
sums are exact in float32, whatever the order: the backward passes can then be
compared exactly too.

The C outputs are allocated uninitialised (``np.empty``) and the kernels must
write every element; ``dirty_heap`` fills freed memory with NaN first, so a
missed element would show up as NaN instead of a lucky zero.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from npfcn import functional as F, reference as R
from npfcn.kernels import backend, pooling
from npfcn.functional import conv_output_size

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")

dtypes = st.sampled_from([np.float32, np.float64])


def both(fn):
    """(result on the C kernel, result on the NumPy reference)."""
    with backend.using("c"):
        c = fn()
    with backend.using("numpy"):
        ref = fn()
    return c, ref


def pool_backward(dy, idx, image_shape):
    """Pooling's backward pass at the indices idx, on the active backend (the reference's
    cache is (image shape, indices))."""
    if backend.active() == "c":
        return pooling.scatter_to_argmax(dy, idx, image_shape)
    return R.max_pool2d_backward(dy, (image_shape, idx))


def unpool(x, idx, out_size):
    """Unpooling onto an out_size plane on the active backend: (y, dx of a given dy)."""
    if backend.active() == "c":
        return pooling.unpool(x, idx, out_size), lambda dy: pooling.gather_at_indices(dy, idx)
    y, cache = R.max_unpool2d_forward(x, idx, 1, 1, 0, out_size)
    return y, lambda dy: R.max_unpool2d_backward(dy, cache)


def dirty_heap(shape, dtype):
    """Free a few NaN-filled arrays of this size, so that np.empty likely reuses them."""
    for _ in range(3):
        np.full(shape, np.nan, dtype=dtype)


def pool_input(rng, shape, dtype, specials):
    """Small integers (many ties), with NaN and +-inf sprinkled in when ``specials``."""
    x = rng.integers(-2, 3, shape).astype(dtype)
    if specials and x.size:
        flat = x.reshape(-1)
        picks = rng.integers(0, flat.size, max(1, flat.size // 6))
        flat[picks] = rng.choice([np.nan, np.inf, -np.inf], picks.size)
    return x


def small_int_grad(rng, shape, dtype):
    """Gradients in [-8, 8]: every sum of a few of them is exact in float32."""
    return rng.integers(-8, 9, shape).astype(dtype)


@st.composite
def pool_geometry(draw, max_size=12):
    """One axis: (size, kernel, stride, padding, dilation), overlapping windows included."""
    k = draw(st.integers(1, 4))
    return (draw(st.integers(1, max_size)), k, draw(st.integers(1, 4)),
            draw(st.integers(0, k // 2)), draw(st.integers(1, 3)))


@given(h=pool_geometry(), w=pool_geometry(max_size=40), n=st.integers(1, 2),
       c=st.integers(1, 3), ceil_mode=st.booleans(), specials=st.booleans(), dtype=dtypes,
       seed=st.integers(0, 2**32 - 1))
def test_max_pool_forward_and_backward_match_reference(h, w, n, c, ceil_mode, specials, dtype,
                                                       seed):
    (H, kh, sh, ph, dh), (W, kw, sw, pw, dw) = h, w
    rng = np.random.default_rng(seed)
    x = pool_input(rng, (n, c, H, W), dtype, specials)
    try:
        y_r, idx_r, cache_r = F.max_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw),
                                                   ceil_mode)
    except ValueError:
        assume(False)   # geometry both paths refuse (see test_fuzz_kernels for that check)
    dy = small_int_grad(rng, y_r.shape, dtype)

    def run():
        dirty_heap(y_r.shape, dtype)
        y, idx, cache = F.max_pool2d_forward(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw),
                                             ceil_mode)
        dirty_heap(x.shape, dtype)
        return y, idx, F.max_pool2d_backward(dy, cache)

    (y, idx, dx), (y_ref, idx_ref, dx_ref) = both(run)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    assert dx.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W", [(2, 2), (3, 3), (4, 17), (5, 33), (7, 64), (6, 131)])
def test_2x2_fast_path_on_rows_longer_than_a_vector(H, W, dtype, rng):
    """The vectorised 2x2 loop: full vectors, the remainder, odd sizes and ceil mode."""
    x = pool_input(rng, (1, 3, H, W), dtype, specials=True)
    first_row = [np.nan, 1, 1, np.nan, -np.inf, -np.inf, 2, np.inf]    # NaN first / second
    x[0, 0, 0, :8] = first_row[:W]
    for ceil_mode in (False, True):
        (y, idx, _), (y_ref, idx_ref, _) = both(
            lambda: F.max_pool2d_forward(x, 2, 2, 0, 1, ceil_mode))
        np.testing.assert_array_equal(idx, idx_ref)
        np.testing.assert_array_equal(y, y_ref)


def test_2x2_ties_and_nan_pick_positions_from_the_definition():
    """Hand-made windows whose expected argmax is read off the rules, not computed."""
    nan, inf = np.nan, np.inf
    # Each 2x2 window is [[a, b], [c, d]]; the scan order is a, b, c, d.
    windows = [([1, 1, 1, 1], 0),          # all tie: the first
               ([0, 2, 2, 2], 1),          # tie for the max: the first of them
               ([nan, 5, 6, 7], 0),        # NaN wins over numbers
               ([1, nan, nan, 7], 1),      # the first NaN wins
               ([-inf, -inf, -inf, -inf], 0),
               ([0, -1, inf, 3], 2),
               ([1, 2, 3, 4], 3)]
    x = np.zeros((1, 1, 2, 2 * len(windows)), np.float32)
    for k, (vals, _) in enumerate(windows):
        x[0, 0, :, 2 * k:2 * k + 2] = np.reshape(vals, (2, 2))
    W = x.shape[3]
    for name in ("c", "numpy"):
        with backend.using(name):
            y, idx, _ = F.max_pool2d_forward(x, 2, 2)
        for k, (vals, pos) in enumerate(windows):
            expect_index = (pos // 2) * W + 2 * k + pos % 2
            assert idx[0, 0, 0, k] == expect_index, (name, vals)
            np.testing.assert_array_equal(y[0, 0, 0, k], np.float32(vals[pos]))


@given(h=st.integers(1, 9), w=st.integers(1, 9), planes=st.integers(1, 3),
       per_plane=st.integers(0, 30), dtype=dtypes, seed=st.integers(0, 2**32 - 1))
def test_max_pool_backward_adds_at_any_indices(h, w, planes, per_plane, dtype, seed):
    """Indices need not come from a forward pass: repeats add up, in C as in the reference."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, h * w, (1, planes, 1, per_plane))
    dy = small_int_grad(rng, idx.shape, dtype)
    dx, dx_ref = both(lambda: (dirty_heap((1, planes, h, w), dtype),
                               pool_backward(dy, idx, (1, planes, h, w)))[1])
    np.testing.assert_array_equal(dx, dx_ref)
    # The definition, by a plain loop.
    expect = np.zeros((planes, h * w))
    for p in range(planes):
        for k in range(per_plane):
            expect[p, idx[0, p, 0, k]] += dy[0, p, 0, k]
    np.testing.assert_array_equal(dx.reshape(planes, h * w), expect)


@given(n=st.integers(0, 2), c=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8),
       oh=st.integers(1, 12), ow=st.integers(1, 12), repeats=st.booleans(), dtype=dtypes,
       seed=st.integers(0, 2**32 - 1))
def test_unpool_forward_and_backward_match_reference(n, c, h, w, oh, ow, repeats, dtype, seed):
    """Unpooling at arbitrary indices (not only pooling's): a placement, then a gather."""
    rng = np.random.default_rng(seed)
    if not repeats:
        assume(h * w <= oh * ow)
        idx = np.argsort(rng.random((n * c, oh * ow)), axis=1)[:, :h * w]   # distinct
    else:
        idx = rng.integers(0, oh * ow, (n * c, h * w))
    idx = idx.reshape(n, c, h, w).astype(np.int64)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    dy = rng.standard_normal((n, c, oh, ow)).astype(dtype)

    def run():
        dirty_heap((n, c, oh, ow), dtype)
        y, backward = unpool(x, idx, (oh, ow))
        dirty_heap(x.shape, dtype)
        return y, backward(dy)

    (y, dx), (y_ref, dx_ref) = both(run)
    np.testing.assert_array_equal(dx, dx_ref)
    # The definition, by a plain loop: zeros, then each value at its index, in scan order.
    expect = np.zeros((n * c, oh * ow), dtype)
    for p in range(n * c):
        for k in range(h * w):
            expect[p, idx.reshape(n * c, h * w)[p, k]] = x.reshape(n * c, h * w)[p, k]
    np.testing.assert_array_equal(y.reshape(n * c, oh * ow), expect)   # C: last value wins
    if not repeats:   # NumPy does not promise an order for repeated fancy assignment
        np.testing.assert_array_equal(y, y_ref)


def test_calls_large_enough_to_run_on_several_threads_match_reference(rng):
    """The kernels split planes across threads above 131072 elements; here 8 x 129 x 160."""
    x = pool_input(rng, (2, 4, 129, 160), np.float32, specials=True)

    def run():
        y, idx, cache = F.max_pool2d_forward(x, 2, 2, ceil_mode=True)
        dx = F.max_pool2d_backward(small_int_grad(np.random.default_rng(1), y.shape, y.dtype),
                                   cache)
        u, ucache = F.max_unpool2d_forward(y, idx, 2, output_size=x.shape)
        return y, idx, dx, u, F.max_unpool2d_backward(x, ucache)

    for got, expect in zip(*both(run)):
        np.testing.assert_array_equal(got, expect)


def test_unpool_backward_rechecks_indices_changed_after_forward():
    """The cache holds the caller's indices: making them bad later must not reach C."""
    x = np.ones((1, 1, 2, 2), np.float32)
    idx = np.array([[[[0, 3], [8, 15]]]], np.int64)
    y, cache = F.max_unpool2d_forward(x, idx, 2)
    assert y.shape == (1, 1, 4, 4) and y.sum() == 4
    idx[0, 0, 1, 1] = 16                      # one past the 4x4 plane
    with pytest.raises(ValueError, match="out of range"):
        F.max_unpool2d_backward(np.ones_like(y), cache)


@pytest.mark.parametrize("name", ["c", "numpy"])
@pytest.mark.parametrize("bad, error, match", [
    (np.array([-1, 0, 1, 2]), ValueError, "-1,? (is )?out of range"),
    (np.array([0, 1, 2, 16]), ValueError, "16,? (is )?out of range"),
    # 2**63 wraps to a negative int64: the one-pass unsigned check must still catch it.
    (np.array([0, 1, 2, 2**63], np.uint64), ValueError, "out of range"),
    (np.array([0, 1, 2, 3], np.int32), None, None),          # other int types are converted
    (np.array([0.0, 1, 2, 3]), TypeError, "integer"),
    ([0, 1, 2, 3], TypeError, "numpy.ndarray"),
])
def test_unpool_checks_indices_before_any_kernel(name, bad, error, match):
    x = np.ones((1, 1, 2, 2), np.float32)
    idx = bad.reshape(1, 1, 2, 2) if isinstance(bad, np.ndarray) else bad
    with backend.using(name):
        if error is None:
            y, cache = F.max_unpool2d_forward(x, idx, 2)
            np.testing.assert_array_equal(y.ravel()[[0, 1, 2, 3]], [1, 1, 1, 1])
            return
        with pytest.raises(error, match=match):
            F.max_unpool2d_forward(x, idx, 2)


@pytest.mark.parametrize("bad, match", [
    (np.array([-1, 0, 1, 2]), "holds -1, out of range"),
    (np.array([0, 1, 2, 16]), "holds 16, out of range"),
    # 2**63 seen as int64 is negative: the one-pass unsigned check must still catch it.
    (np.array([0, 1, 2, 2**63], np.uint64).view(np.int64), "out of range"),
    (np.array([0, 1, 2, 3], np.int32), "dtype int32"),       # the kernels take int64 only
    (np.array([0.0, 1, 2, 3]), "dtype float64"),
    (np.array([0, 1, 2, 3, 4, 5, 6, 7])[::2], "C-contiguous"),
    ([0, 1, 2, 3], "numpy.ndarray"),
])
def test_direct_unpool_kernel_calls_check_indices_before_c(bad, match):
    """The kernels' own gate (npfcn.kernels.boundary), for callers that skip functional."""
    x = np.ones((1, 1, 2, 2), np.float32)
    idx = bad.reshape(1, 1, 2, 2) if isinstance(bad, np.ndarray) else bad
    with pytest.raises(ValueError, match=match):
        pooling.unpool(x, idx, (4, 4))
    if isinstance(idx, np.ndarray):
        with pytest.raises(ValueError, match=match):
            pooling.gather_at_indices(np.ones((1, 1, 4, 4), np.float32), idx)


def test_max_pool_backward_refuses_wrapped_negative_index():
    """-2**63 read as unsigned is 2**63: out of range, as every negative index."""
    dy = np.ones((1, 1, 1, 2), np.float32)
    idx = np.array([[[[0, -2**63]]]], np.int64)
    with pytest.raises(ValueError, match="out of range"):
        pooling.scatter_to_argmax(dy, idx, (1, 1, 2, 2))


def test_2x2_pool_unpool_round_trip_matches_torch(torch, rng):
    """FCN's own pair, 2x2 stride 2 with ceil mode, against PyTorch (all four results)."""
    x = rng.standard_normal((2, 3, 13, 18)).astype(np.float32)
    y, idx, pool_cache = F.max_pool2d_forward(x, 2, 2, ceil_mode=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = F.max_pool2d_backward(dy, pool_cache)
    u, unpool_cache = F.max_unpool2d_forward(y, idx, 2, output_size=x.shape)
    du = F.max_unpool2d_backward(x, unpool_cache)

    tx = torch.from_numpy(x).requires_grad_(True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, 2, 2, ceil_mode=True, return_indices=True)
    ty.backward(torch.from_numpy(dy))
    tu = torch.nn.functional.max_unpool2d(ty.detach(), tidx, 2, output_size=x.shape[2:])
    # Max pooling and unpooling only move values: exact agreement, no tolerance.
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    np.testing.assert_array_equal(u, tu.numpy())
    # Unpooling's gradient is a gather at the indices (PyTorch's autograd agrees).
    np.testing.assert_array_equal(du, np.take_along_axis(
        x.reshape(2, 3, -1), tidx.numpy().reshape(2, 3, -1), 2).reshape(y.shape))
