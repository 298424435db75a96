"""npfcn.reference, the textbook path, checked on its own - not against npfcn's kernels:

* every backward pass against float64 central differences of its forward pass,
  error = |analytic - numeric| / (|analytic| + |numeric|) < 1e-6 (central differences
  with h = 1e-6 are exact to ~h^2 * f''' plus ~1e-16 / h rounding: ~1e-9 here, so
  1e-6 leaves a wide margin and still catches any wrong term);
* small cases worked out by hand in this file;
* convolution and transposed convolution as adjoints: <conv(x), y> == <x, convT(y)>
  and <im2col(x), c> == <x, col2im(c)> to float64 rounding (1e-12 relative);
* PyTorch in float32 (skipped without torch): max|ours - torch| / max|torch| < 1e-4
  (float32 rounding 6e-8 over sums of at most ~100 terms, with a margin of ~10x);
  pooling indices exactly.
"""
import numpy as np
import pytest

from npfcn import reference as R
from npfcn.reference.im2col import pair

rng = np.random.default_rng(1234)


def numeric_gradient(f, x, h=1e-6):
    """d f / d x by central differences; f: array -> float."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        up = f(x)
        flat[k] = old - h
        down = f(x)
        flat[k] = old
        gflat[k] = (up - down) / (2 * h)
    return grad


def rel_error(analytic, numeric):
    return np.abs(analytic - numeric).max() / max(np.abs(analytic).max() + np.abs(numeric).max(),
                                                   1e-300)


def check_gradients(forward, backward, inputs):
    """forward(*inputs) -> (y, cache); backward(dy, cache) -> gradients of inputs (in order).

    The scalar checked is <y, r> for a fixed random r, so dy = r.
    """
    y, cache = forward(*inputs)
    r = rng.standard_normal(y.shape)
    grads = backward(r, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for k, (value, grad) in enumerate(zip(inputs, grads)):
        if grad is None:
            continue
        numeric = numeric_gradient(
            lambda v: float(np.sum(forward(*inputs[:k], v, *inputs[k + 1:])[0] * r)), value)
        assert rel_error(grad, numeric) < 1e-6, f"input {k}"


# --- im2col / col2im -----------------------------------------------------------------

def test_im2col_by_hand():
    """A 3x3 image, 2x2 kernel, stride 1: four windows, read row by row."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)     # 1 2 3 / 4 5 6 / 7 8 9
    cols = R.im2col(x, 2)
    expected = np.array([[1, 2, 4, 5],     # tap (0, 0) of windows (0,0) (0,1) (1,0) (1,1)
                         [2, 3, 5, 6],     # tap (0, 1)
                         [4, 5, 7, 8],     # tap (1, 0)
                         [5, 6, 8, 9]],    # tap (1, 1)
                        dtype=float)
    np.testing.assert_array_equal(cols[0], expected)


def test_im2col_padding_and_col2im_counts_overlaps():
    """With padding 1 the corners read zeros; col2im of ones counts how often each pixel is read."""
    x = np.ones((1, 1, 2, 2))
    cols = R.im2col(x, 3, padding=1)                   # 2x2 grid of 3x3 windows
    assert cols.shape == (1, 9, 4)
    assert cols[0, 0].tolist() == [0, 0, 0, 1]         # tap (0, 0): only window (1, 1) is inside
    counts = R.col2im(np.ones((1, 9, 4)), (1, 1, 2, 2), 3, padding=1)
    np.testing.assert_array_equal(counts, np.full((1, 1, 2, 2), 4.0))   # every pixel in all 4


@pytest.mark.parametrize("geometry", [
    dict(kernel_size=3, stride=1, padding=1, dilation=1),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(0, 2), dilation=(2, 1)),
    dict(kernel_size=4, stride=3, padding=2, dilation=1, out_size=(4, 3)),   # a larger grid
])
def test_col2im_is_the_adjoint_of_im2col(geometry):
    x = rng.standard_normal((2, 3, 7, 6))
    cols = R.im2col(x, **geometry)
    c = rng.standard_normal(cols.shape)
    lhs, rhs = np.sum(cols * c), np.sum(x * R.col2im(c, x.shape, **geometry))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + abs(rhs))


def test_conv_output_size():
    assert R.conv_output_size((224, 224), 3, 1, 1) == (224, 224)
    assert R.conv_output_size((7, 8), (3, 2), (2, 3), (0, 1), (2, 1)) == (2, 3)
    # ceil_mode: 5 rows, kernel 2, stride 2 -> 3 windows (floor would give 2) ...
    assert R.conv_output_size((5, 5), 2, 2, ceil_mode=True) == (3, 3)
    # ... but a window that would start in the bottom padding is dropped: 5 rows, pad 1,
    # windows at rows -1, 1, 3 and 5 (= 5 + 1 - 1, the padding): 3, not 4
    assert R.conv_output_size((5, 5), 2, 2, 1, ceil_mode=True) == (3, 3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        R.conv_output_size((2, 2), 5)


# --- convolution and transposed convolution ---------------------------------------------

CONV_GEOMETRIES = [
    dict(stride=1, padding=0, dilation=1),
    dict(stride=2, padding=1, dilation=1),
    dict(stride=(1, 2), padding=(2, 0), dilation=(1, 2)),
]


def test_conv2d_by_hand():
    """3x3 image, 2x2 kernel of ones plus bias 10: each output is its window's sum + 10."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    y, _ = R.conv2d_forward(x, np.ones((1, 1, 2, 2)), np.array([10.0]))
    np.testing.assert_array_equal(y[0, 0], [[22, 26], [34, 38]])   # 1+2+4+5+10, ...


def test_conv_transpose2d_by_hand():
    """One pixel of value 2 stamps 2*w; two pixels at stride 2 overlap in one column."""
    w = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    x = np.array([[[[2.0, 1.0]]]])                      # 1x2 input
    y, _ = R.conv_transpose2d_forward(x, w, stride=2)
    expected = np.zeros((3, 5))
    expected[:, 0:3] += 2 * w[0, 0]
    expected[:, 2:5] += 1 * w[0, 0]                     # column 2 gets both stamps
    np.testing.assert_array_equal(y[0, 0], expected)


@pytest.mark.parametrize("case", [
    ((2, 2), 3, 2, 0, 0, (5, 5)),            # the course's examples (see DESIGN.md)
    ((2, 2), 3, 2, 1, 1, (4, 4)),
    ((2, 2), 3, 2, "same", 0, (4, 4)),
    ((3, 3), 5, 2, 2, 1, (6, 6)),
])
def test_conv_transpose2d_output_sizes(case):
    in_size, k, s, p, op, expected = case
    y, _ = R.conv_transpose2d_forward(np.ones((1, 1, *in_size)), np.ones((1, 1, k, k)),
                                      stride=s, padding=p, output_padding=op)
    assert y.shape[2:] == expected


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv2d_gradients(geometry):
    x, w, b = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    check_gradients(lambda x, w, b: R.conv2d_forward(x, w, b, **geometry), R.conv2d_backward,
                    (x, w, b))


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES + [dict(stride=2, padding="same", dilation=1),
                                                        dict(stride=3, padding=1, dilation=1,
                                                             output_padding=2)])
def test_conv_transpose2d_gradients(geometry):
    x, w, b = rng.standard_normal((2, 3, 4, 3)), rng.standard_normal((3, 2, 3, 4)), rng.standard_normal(2)
    check_gradients(lambda x, w, b: R.conv_transpose2d_forward(x, w, b, **geometry),
                    R.conv_transpose2d_backward, (x, w, b))


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv_transpose2d_is_the_adjoint_of_conv2d(geometry):
    """<conv(x), y> == <x, convT(y)> with the same weight; output_padding fits the sizes."""
    x, w = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3))
    y, _ = R.conv2d_forward(x, w, **geometry)
    z = rng.standard_normal(y.shape)
    s, p, d = (pair(geometry[k]) for k in ("stride", "padding", "dilation"))
    natural = [(n - 1) * si - 2 * pi + di * 2 + 1 for n, si, pi, di in zip(z.shape[2:], s, p, d)]
    output_padding = tuple(h - n for h, n in zip(x.shape[2:], natural))
    xt, _ = R.conv_transpose2d_forward(z, w, **geometry, output_padding=output_padding)
    assert xt.shape == x.shape
    lhs, rhs = np.sum(y * z), np.sum(x * xt)
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + abs(rhs))


def test_backward_passes_are_the_other_forward_pass():
    """conv2d's dx is convT of dy, and convT's dx is conv2d of dy (same weight, no bias)."""
    x, w = rng.standard_normal((1, 2, 7, 7)), rng.standard_normal((3, 2, 3, 3))
    y, cache = R.conv2d_forward(x, w, stride=2)
    dy = rng.standard_normal(y.shape)
    dx, _, _ = R.conv2d_backward(dy, cache)
    np.testing.assert_allclose(dx, R.conv_transpose2d_forward(dy, w, stride=2)[0], rtol=0,
                               atol=1e-12)
    yt, cache_t = R.conv_transpose2d_forward(y, w, stride=2)
    dyt = rng.standard_normal(yt.shape)
    np.testing.assert_allclose(R.conv_transpose2d_backward(dyt, cache_t)[0],
                               R.conv2d_forward(dyt, w, stride=2)[0], rtol=0, atol=1e-12)


# --- pooling and unpooling -------------------------------------------------------------

def test_max_pool2d_by_hand():
    x = np.array([[1, 5, 2, 0],
                  [3, 4, 8, 8],
                  [0, 0, 1, 1],
                  [9, 0, 1, 1]], dtype=float).reshape(1, 1, 4, 4)
    y, indices, cache = R.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[5, 8], [9, 1]])
    # flat positions in the 4x4 plane; ties (8, 8 and the 1s) keep the first in scan order
    np.testing.assert_array_equal(indices[0, 0], [[1, 6], [12, 10]])
    assert indices.dtype == np.int64
    dx = R.max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache)
    expected = np.zeros(16)
    expected[[1, 6, 12, 10]] = [1, 2, 3, 4]
    np.testing.assert_array_equal(dx.reshape(-1), expected)


def test_max_pool2d_padding_nan_and_minus_infinity():
    """Padding never wins (a window of -inf picks its first real pixel); NaN wins."""
    x = np.full((1, 1, 2, 2), -np.inf)
    x[0, 0, 1, 1] = np.nan
    y, indices, _ = R.max_pool2d_forward(x, 2, stride=1, padding=1)   # a 3x3 grid of windows
    # windows without the NaN at (1, 1) hold only -inf and padding: their first real pixel
    np.testing.assert_array_equal(indices[0, 0], [[0, 0, 1], [0, 3, 3], [2, 3, 3]])
    assert np.isneginf(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 1])
    # With dilation 2 the first window reads rows and columns -1 and 1 of a 3x3 image:
    # its only real pixel is (1, 1), index 4 (not the pixel nearest the padding, 0).
    y, indices, _ = R.max_pool2d_forward(np.full((1, 1, 3, 3), -np.inf), 2, 1, 1, dilation=2)
    assert indices[0, 0, 0, 0] == 4 and np.isneginf(y).all()


def test_overlapping_windows_add_their_gradients():
    """kernel 3, stride 2 on a 1x5 row: the middle maximum is in both windows."""
    x = np.array([0.0, 1.0, 9.0, 1.0, 0.0]).reshape(1, 1, 1, 5)
    y, indices, cache = R.max_pool2d_forward(x, (1, 3), stride=(1, 2))
    assert indices.ravel().tolist() == [2, 2]
    dx = R.max_pool2d_backward(np.array([[[[1.0, 10.0]]]]), cache)
    assert dx.ravel().tolist() == [0, 0, 11, 0, 0]


@pytest.mark.parametrize("args", [(2, None, 0, 1, False), (3, 2, 1, 1, True), (2, 1, 0, 2, False)])
def test_max_pool2d_gradients(args):
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0   # distinct: no ties
    check_gradients(lambda x: R.max_pool2d_forward(x, *args)[::2], R.max_pool2d_backward, (x,))


def test_max_unpool2d_by_hand_and_gradients():
    x = np.array([[[[5.0, 8.0], [9.0, 1.0]]]])
    indices = np.array([[[[1, 6], [12, 10]]]], dtype=np.int64)
    y, cache = R.max_unpool2d_forward(x, indices, 2)
    expected = np.zeros(16)
    expected[[1, 6, 12, 10]] = [5, 8, 9, 1]
    np.testing.assert_array_equal(y.reshape(-1), expected)
    assert R.max_unpool2d_forward(x, indices, 2, output_size=(5, 5))[0].shape == (1, 1, 5, 5)
    check_gradients(lambda v: R.max_unpool2d_forward(v, indices, 2), R.max_unpool2d_backward,
                    (rng.standard_normal(x.shape),))


def test_unpool_of_pool_is_the_pool_backward():
    x = rng.standard_normal((2, 3, 6, 6))
    y, indices, cache = R.max_pool2d_forward(x, 2)
    unpooled, _ = R.max_unpool2d_forward(y, indices, 2)
    np.testing.assert_array_equal(unpooled, R.max_pool2d_backward(y, cache))


# --- elementwise ---------------------------------------------------------------------

def test_elementwise_by_hand():
    x = np.array([[[[-1.0, 0.0, 2.0, np.nan]]]])
    y, cache = R.relu_forward(x)
    np.testing.assert_array_equal(y, [[[[0, 0, 2, np.nan]]]])
    dx = R.relu_backward(np.array([[[[1.0, 1.0, 3.0, 1.0]]]]), cache)
    np.testing.assert_array_equal(dx, [[[[0, 0, 3, 0]]]])
    image = np.arange(20.0).reshape(1, 1, 4, 5)
    crop, cache = R.crop_forward(image, (1, 2), (2, 3))
    np.testing.assert_array_equal(crop[0, 0], [[7, 8, 9], [12, 13, 14]])
    assert R.crop_backward(np.ones((1, 1, 2, 3)), cache).sum() == 6
    assert R.crop_backward(np.ones((1, 1, 2, 3)), cache)[0, 0, 1:3, 2:5].all()


def test_dropout():
    x = np.ones((1, 1, 100, 100))
    y, cache = R.dropout_forward(x, 0.25, np.random.default_rng(0))
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert abs((y == 0).mean() - 0.25) < 0.02              # 10000 draws: sd 0.004
    np.testing.assert_array_equal(R.dropout_backward(x, cache), y)   # the same mask
    y_eval, cache_eval = R.dropout_forward(x, 0.25, None, training=False)
    np.testing.assert_array_equal(y_eval, x)
    np.testing.assert_array_equal(R.dropout_backward(x, cache_eval), x)


def test_elementwise_gradients():
    x = rng.standard_normal((2, 3, 5, 4))
    x[np.abs(x) < 1e-3] = 0.5                  # keep away from the kink of the ReLU
    check_gradients(R.relu_forward, R.relu_backward, (x,))
    check_gradients(lambda v: R.crop_forward(v, (1, 2), (3, 2)), R.crop_backward, (x,))
    check_gradients(R.add_forward, R.add_backward, (x, rng.standard_normal(x.shape)))
    mask_rng = 7
    check_gradients(lambda v: R.dropout_forward(v, 0.5, np.random.default_rng(mask_rng)),
                    R.dropout_backward, (x,))


# --- softmax cross-entropy -----------------------------------------------------------

def test_cross_entropy_by_hand():
    """Equal scores: every pixel's loss is log C; a certain correct score costs ~0."""
    loss, _ = R.softmax_cross_entropy_forward(np.zeros((1, 4, 2, 3)), np.zeros((1, 2, 3), int))
    assert abs(loss - np.log(4)) < 1e-15
    logits = np.zeros((1, 2, 1, 2))
    logits[0, 0, 0, 0] = 50.0                   # pixel 0: class 0 certain and right
    target = np.array([[[0, 255]]])             # pixel 1 ignored
    loss, cache = R.softmax_cross_entropy_forward(logits, target)
    assert loss < 1e-20
    dlogits = R.softmax_cross_entropy_backward(1.0, cache)
    assert np.all(dlogits[..., 1] == 0)         # the ignored pixel gets no gradient
    # weights: pixel losses log 2 (weight 3) and log 2 (weight 1) -> weighted mean log 2;
    # sum = 4 log 2
    target = np.array([[[0, 1]]])
    args = (np.zeros((1, 2, 1, 2)), target, np.array([3.0, 1.0]))
    assert abs(R.softmax_cross_entropy_forward(*args)[0] - np.log(2)) < 1e-15
    assert abs(R.softmax_cross_entropy_forward(*args, reduction="sum")[0] - 4 * np.log(2)) < 1e-14


def test_everything_ignored_gives_zero():
    loss, cache = R.softmax_cross_entropy_forward(np.ones((1, 3, 2, 2)), np.full((1, 2, 2), 255))
    assert loss == 0.0
    assert not R.softmax_cross_entropy_backward(1.0, cache).any()


@pytest.mark.parametrize("weight", [None, np.array([0.5, 2.0, 0.0, 1.5])])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_gradients(weight, reduction):
    logits = rng.standard_normal((2, 4, 3, 2))
    target = rng.integers(0, 4, (2, 3, 2))
    target[0, 0, 0] = 255

    def loss(v):
        return R.softmax_cross_entropy_forward(v, target, weight, reduction=reduction)[0]

    _, cache = R.softmax_cross_entropy_forward(logits, target, weight, reduction=reduction)
    analytic = R.softmax_cross_entropy_backward(0.5, cache)
    assert rel_error(analytic, 0.5 * numeric_gradient(loss, logits.copy())) < 1e-6


def test_cross_entropy_loss_uses_the_reference():
    """npfcn.losses.CrossEntropyLoss gives the reference's numbers exactly on the NumPy
    backend and in float64 (the C path for float32 is compared with it to rounding in
    tests/test_softmax_kernel.py)."""
    from npfcn.kernels import backend
    from npfcn.losses import CrossEntropyLoss

    weight = np.array([1.0, 2.0, 0.5, 0.0, 3.0])
    for dtype, name in ((np.float32, "numpy"), (np.float64, backend.active())):
        logits = rng.standard_normal((2, 5, 4, 3)).astype(dtype)
        target = rng.integers(0, 5, (2, 4, 3))
        module = CrossEntropyLoss(weight=weight)
        loss, cache = R.softmax_cross_entropy_forward(logits, target, weight)
        with backend.using(name):
            assert module.forward(logits, target) == loss
            np.testing.assert_array_equal(module.backward(0.3),
                                          R.softmax_cross_entropy_backward(0.3, cache))


# --- PyTorch, float32 ----------------------------------------------------------------

def torch_rel(ours, theirs):
    theirs = theirs.detach().numpy()
    assert ours.shape == theirs.shape
    return np.abs(ours.astype(np.float64) - theirs).max() / np.abs(theirs).max()


@pytest.mark.parametrize("geometry", CONV_GEOMETRIES)
def test_conv_layers_match_pytorch_float32(geometry):
    torch = pytest.importorskip("torch")
    f32 = np.float32
    x, w, b = (rng.standard_normal(s).astype(f32) for s in ((2, 3, 8, 7), (4, 3, 3, 3), (4,)))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **geometry)
    y, cache = R.conv2d_forward(x, w, b, **geometry)
    dy = rng.standard_normal(y.shape).astype(f32)
    ty.backward(torch.tensor(dy))
    for ours, theirs in zip((y, *R.conv2d_backward(dy, cache)), (ty, tx.grad, tw.grad, tb.grad)):
        assert ours.dtype == f32 and torch_rel(ours, theirs) < 1e-4

    wt = rng.standard_normal((3, 2, 4, 3)).astype(f32)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(wt, requires_grad=True)
    ty = torch.nn.functional.conv_transpose2d(tx, tw, output_padding=0, **geometry)
    y, cache = R.conv_transpose2d_forward(x, wt, **geometry)
    dy = rng.standard_normal(y.shape).astype(f32)
    ty.backward(torch.tensor(dy))
    dx, dw, _ = R.conv_transpose2d_backward(dy, cache)
    for ours, theirs in zip((y, dx, dw), (ty, tx.grad, tw.grad)):
        assert ours.dtype == f32 and torch_rel(ours, theirs) < 1e-4


def test_pooling_and_loss_match_pytorch_float32():
    torch = pytest.importorskip("torch")
    TF = torch.nn.functional
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty, tind = TF.max_pool2d(tx, 3, 2, 1, ceil_mode=True, return_indices=True)
    y, indices, cache = R.max_pool2d_forward(x, 3, 2, 1, ceil_mode=True)
    np.testing.assert_array_equal(indices, tind.numpy())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    assert torch_rel(y, ty) < 1e-4 and torch_rel(R.max_pool2d_backward(dy, cache), tx.grad) < 1e-4

    ty2, tind2 = TF.max_pool2d(torch.tensor(x), 2, return_indices=True)
    y2, indices2, _ = R.max_pool2d_forward(x, 2)
    tin = torch.tensor(y2, requires_grad=True)
    tu = TF.max_unpool2d(tin, tind2, 2, output_size=x.shape[2:])
    u, ucache = R.max_unpool2d_forward(y2, indices2, 2, output_size=x.shape)
    du = rng.standard_normal(u.shape).astype(np.float32)
    tu.backward(torch.tensor(du))
    assert torch_rel(u, tu) < 1e-4 and torch_rel(R.max_unpool2d_backward(du, ucache), tin.grad) < 1e-4

    logits = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    target = rng.integers(0, 4, (2, 5, 3))
    target[1, 2] = 255
    weight = np.array([1.0, 0.5, 2.0, 1.5], dtype=np.float32)
    tl = torch.tensor(logits, requires_grad=True)
    tloss = TF.cross_entropy(tl, torch.tensor(target), weight=torch.tensor(weight),
                             ignore_index=255)
    tloss.backward()
    loss, cache = R.softmax_cross_entropy_forward(logits, target, weight)
    assert abs(loss - tloss.item()) < 1e-4 * abs(tloss.item())
    assert torch_rel(R.softmax_cross_entropy_backward(1.0, cache), tl.grad) < 1e-4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_and_dtype(dtype):
    """N = 0 goes through every op (functional accepts it), and the input's dtype is kept."""
    for n in (0, 1):
        x = np.ones((n, 2, 5, 5), dtype)
        y, cache = R.conv2d_forward(x, np.ones((3, 2, 3, 3), dtype), np.ones(3, dtype), 2, 1)
        grads = R.conv2d_backward(y, cache)
        y2, cache2 = R.conv_transpose2d_forward(x, np.ones((2, 3, 4, 4), dtype), None, 2, 1)
        grads += R.conv_transpose2d_backward(y2, cache2)[:2]
        pooled, indices, cache3 = R.max_pool2d_forward(x, 2, ceil_mode=True)
        unpooled, cache4 = R.max_unpool2d_forward(pooled, indices, 2, output_size=x.shape)
        grads += (R.max_pool2d_backward(pooled, cache3), R.max_unpool2d_backward(unpooled, cache4))
        for out in (y, y2, pooled, unpooled) + grads:
            assert out.dtype == dtype and out.shape[0] in (n, 3, 2)
        assert y.shape == (n, 3, 3, 3) and y2.shape == (n, 3, 10, 10) and unpooled.shape == x.shape
