"""Forward and every gradient of every layer against torch.nn.functional.

Both sides get identical inputs and the same upstream gradient ``dy``; we
compare outputs and the gradients of input, weight and bias with

    error = max|ours - torch| / max|torch|

Tolerances: float64 1e-10 - the two compute the same sums in different
orders, so they differ by rounding, ~1e-16 times the number of terms;
float32 1e-4 - the same with float32's 6e-8 rounding and sums of up to ~100
terms, leaving a margin of ~10x.  Max-pool indices must be equal exactly.
The whole module skips cleanly where PyTorch is not installed.
"""
import numpy as np
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from npfcn.layers import (Add, Conv2d, ConvTranspose2d, Crop, Dropout, MaxPool2d,
                          MaxUnpool2d, ReLU)
from npfcn.losses import CrossEntropyLoss

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TOL = {np.float32: 1e-4, np.float64: 1e-10}
dtypes = st.sampled_from([np.float32, np.float64])


def examples(n):
    """``n`` examples under the default profile, scaled up by the thorough profile."""
    return settings(max_examples=max(1, n * settings.default.max_examples // 25))


def rel(ours, theirs):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert np.shape(ours) == np.shape(theirs)
    scale = np.abs(theirs).max(initial=0.0)
    diff = np.abs(np.asarray(ours, np.float64) - theirs).max(initial=0.0)
    return diff / scale if scale > 0 else diff


def assert_close(ours, theirs, dtype, what):
    if isinstance(ours, np.ndarray):   # no silent up- or down-cast either
        assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}, expected {np.dtype(dtype)}"
    err = rel(ours, theirs)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def leaf(array):
    return torch.tensor(array, requires_grad=True)


# --- convolution ---------------------------------------------------------------------

@st.composite
def conv_configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = tuple(max(1, di * (ki - 1) + 1 - 2 * pi) + draw(st.integers(0, 6))
                 for ki, pi, di in zip(k, p, d))
    return dict(n=draw(st.integers(1, 3)), cin=draw(st.integers(1, 4)),
                cout=draw(st.integers(1, 4)), size=size, k=k, s=s, p=p, d=d,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 999)))


@examples(40)
@given(cfg=conv_configs(), dtype=dtypes)
def test_conv2d_matches_torch(cfg, dtype):
    layer = Conv2d(cfg["cin"], cfg["cout"], cfg["k"], cfg["s"], cfg["p"], cfg["d"],
                   bias=cfg["bias"], dtype=dtype, rng=cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["n"], cfg["cin"], *cfg["size"])).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    tx, tw = leaf(x), leaf(layer.params["weight"])
    tb = leaf(layer.params["bias"]) if cfg["bias"] else None
    ty = TF.conv2d(tx, tw, tb, cfg["s"], cfg["p"], cfg["d"])
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty, dtype, "output")
    assert_close(dx, tx.grad, dtype, "d input")
    assert_close(layer.grads["weight"], tw.grad, dtype, "d weight")
    if cfg["bias"]:
        assert_close(layer.grads["bias"], tb.grad, dtype, "d bias")


@st.composite
def conv_transpose_configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    if draw(st.booleans()):
        padding, output_padding = "same", (0, 0)
    else:
        output_padding = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d))
        padding = tuple(
            draw(st.integers(0, max(0, ((n - 1) * si + di * (ki - 1) + op) // 2)))
            for n, si, di, ki, op in zip(size, s, d, k, output_padding))
    return dict(n=draw(st.integers(1, 3)), cin=draw(st.integers(1, 4)),
                cout=draw(st.integers(1, 4)), size=size, k=k, s=s, d=d, padding=padding,
                output_padding=output_padding, bias=draw(st.booleans()),
                seed=draw(st.integers(0, 999)))


def torch_conv_transpose(x, w, b, cfg):
    """PyTorch's transposed conv; TensorFlow's "same" as the full output cropped.

    "same": output H*S.  The unpadded output is (H-1)*S + D*(K-1) + 1; its
    surplus D*(K-1) + 1 - S is cropped, top half first (TF puts the extra row
    at the bottom); a shortfall (kernel shorter than the stride) is made up
    with output_padding, which PyTorch allows because it is < S.
    """
    if cfg["padding"] != "same":
        return TF.conv_transpose2d(x, w, b, cfg["s"], cfg["padding"], cfg["output_padding"],
                                   1, cfg["d"])
    surplus = [di * (ki - 1) + 1 - si for ki, si, di in zip(cfg["k"], cfg["s"], cfg["d"])]
    y = TF.conv_transpose2d(x, w, b, cfg["s"], 0, [max(-e, 0) for e in surplus], 1, cfg["d"])
    top = [max(e, 0) // 2 for e in surplus]
    oh, ow = x.shape[2] * cfg["s"][0], x.shape[3] * cfg["s"][1]
    return y[:, :, top[0]:top[0] + oh, top[1]:top[1] + ow]


@examples(40)
@given(cfg=conv_transpose_configs(), dtype=dtypes)
def test_conv_transpose2d_matches_torch(cfg, dtype):
    layer = ConvTranspose2d(cfg["cin"], cfg["cout"], cfg["k"], cfg["s"], cfg["padding"],
                            cfg["output_padding"], cfg["d"], bias=cfg["bias"], dtype=dtype,
                            rng=cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["n"], cfg["cin"], *cfg["size"])).astype(dtype)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    tx, tw = leaf(x), leaf(layer.params["weight"])
    tb = leaf(layer.params["bias"]) if cfg["bias"] else None
    ty = torch_conv_transpose(tx, tw, tb, cfg)
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty, dtype, "output")
    assert_close(dx, tx.grad, dtype, "d input")
    assert_close(layer.grads["weight"], tw.grad, dtype, "d weight")
    if cfg["bias"]:
        assert_close(layer.grads["bias"], tb.grad, dtype, "d bias")


# --- pooling -------------------------------------------------------------------------

@st.composite
def pool_configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    p = tuple(draw(st.integers(0, ki // 2)) for ki in k)
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    size = tuple(max(1, di * (ki - 1) + 1 - 2 * pi) + draw(st.integers(0, 6))
                 for ki, pi, di in zip(k, p, d))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size), k=k, s=s,
                p=p, d=d, ceil_mode=draw(st.booleans()), seed=draw(st.integers(0, 999)))


@examples(40)
@given(cfg=pool_configs(), dtype=dtypes)
def test_max_pool2d_matches_torch(cfg, dtype):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"]).astype(dtype)   # ties have probability ~0
    layer = MaxPool2d(cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil_mode"],
                      return_indices=True)
    tx = leaf(x)
    ty, tidx = TF.max_pool2d(tx, cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil_mode"],
                             return_indices=True)
    try:
        y, idx = layer.forward(x)
    except ValueError as error:
        # Documented difference: a dilated window whose taps all fall in the
        # padding is refused; PyTorch returns -inf there with an index outside
        # the plane.
        assert "entirely in the padding" in str(error)
        assert torch.isinf(ty).any()
        reject()
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(y, ty.detach().numpy())   # a selection: exact
    assert_close(dx, tx.grad, dtype, "d input")


@examples(30)
@given(cfg=pool_configs(), dtype=dtypes)
def test_max_unpool2d_matches_torch(cfg, dtype):
    # Indices from PyTorch's own pooling (dilation 1, as MaxUnpool2d has none),
    # overlapping windows included: repeated indices carry the same value.
    rng = np.random.default_rng(cfg["seed"])
    image = torch.from_numpy(rng.standard_normal(cfg["shape"]).astype(dtype))
    pooled, tidx = TF.max_pool2d(image, cfg["k"], cfg["s"], cfg["p"], 1, cfg["ceil_mode"],
                                 return_indices=True)
    size = tuple(image.shape[2:])
    layer = MaxUnpool2d(cfg["k"], cfg["s"], cfg["p"])
    y = layer.forward(pooled.numpy(), tidx.numpy(), size)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)

    tx = leaf(pooled.numpy())
    ty = TF.max_unpool2d(tx, tidx, cfg["k"], cfg["s"], cfg["p"], size)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())   # a gather: exact


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_unpool2d_default_output_size_matches_torch(dtype):
    # 9x7 pooled by 3/2/1 gives 5x4, which unpools by default to (5-1)*2-2+3 = 9 by 7.
    image = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 3, 9, 7)).astype(dtype))
    pooled, idx = TF.max_pool2d(image, 3, 2, 1, return_indices=True)
    y = MaxUnpool2d(3, 2, 1).forward(pooled.numpy(), idx.numpy())
    assert y.shape == (2, 3, 9, 7)
    np.testing.assert_array_equal(y, TF.max_unpool2d(pooled, idx, 3, 2, 1).numpy())


# --- elementwise layers --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_torch(dtype):
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 3, 5, 4)).astype(dtype), rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    x[:, :, 0] = 0.0   # at the kink both pass no gradient
    layer = ReLU()
    y = layer.forward(x)
    dx = layer.backward(dy)
    tx = leaf(x)
    ty = TF.relu(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5])
def test_dropout_matches_torch_given_the_same_mask(dtype, p):
    # The random streams differ, so take our mask and check PyTorch's convention
    # (inverted dropout: kept elements scaled by 1/(1-p)) on it, and eval mode.
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 1.5, (2, 3, 8, 8)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    layer = Dropout(p, rng=0)
    y = layer.forward(x)
    dx = layer.backward(dy)
    keep = y != 0
    if p > 0:
        assert 0 < keep.mean() < 1
    tx = leaf(x)
    ty = tx * torch.from_numpy(keep.astype(dtype)) / (1 - p)
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty, dtype, "output")
    assert_close(dx, tx.grad, dtype, "d input")
    layer.eval()
    np.testing.assert_array_equal(layer.forward(x),
                                  TF.dropout(torch.from_numpy(x), p, training=False).numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crop_and_add_match_torch(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    skip = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    dy = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    crop, add = Crop((3, 2)), Add()
    y = add.forward(crop.forward(x, skip), skip)
    d_cropped, d_skip = add.backward(dy)
    dx = crop.backward(d_cropped)

    tx, tskip = leaf(x), leaf(skip)
    ty = tx[:, :, 3:8, 2:6] + tskip
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())
    np.testing.assert_array_equal(d_skip, tskip.grad.numpy())


# --- loss ----------------------------------------------------------------------------

@examples(40)
@given(n=st.integers(1, 3), c=st.integers(2, 6), h=st.integers(1, 5), w=st.integers(1, 5),
       reduction=st.sampled_from(["mean", "sum"]), weighted=st.booleans(),
       ignore_index=st.sampled_from([255, -100, 1]), dtype=dtypes, seed=st.integers(0, 999))
def test_cross_entropy_matches_torch(n, c, h, w, reduction, weighted, ignore_index, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c, h, w)) * 3).astype(dtype)
    target = rng.integers(0, c, (n, h, w))
    target[rng.random((n, h, w)) < 0.3] = ignore_index
    target.flat[0] = 0   # at least one counted pixel (all-ignored is tested below)
    weight = rng.uniform(0.2, 2.0, c).astype(dtype) if weighted else None
    loss = CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction=reduction)
    value = loss.forward(logits, target)
    grad = loss.backward()

    tl = leaf(logits)
    tv = TF.cross_entropy(tl, torch.from_numpy(target),
                          weight=None if weight is None else torch.from_numpy(weight),
                          ignore_index=ignore_index, reduction=reduction)
    tv.backward()
    assert_close(value, tv, dtype, "loss")
    assert grad.dtype == dtype
    assert_close(grad, tl.grad, dtype, "d logits")


def test_cross_entropy_all_ignored_is_zero_not_nan():
    """Documented difference: PyTorch's mean over zero pixels is NaN, ours is 0 with a
    zero gradient, so a crop of pure void cannot stop a training run."""
    logits = np.random.default_rng(3).standard_normal((2, 4, 3, 3))
    target = np.full((2, 3, 3), 255)
    tl = leaf(logits)
    tv = TF.cross_entropy(tl, torch.from_numpy(target), ignore_index=255)
    assert torch.isnan(tv)
    loss = CrossEntropyLoss(ignore_index=255)
    assert loss.forward(logits, target) == 0.0
    np.testing.assert_array_equal(loss.backward(), np.zeros_like(logits))
    # With reduction="sum" both agree on 0.
    assert TF.cross_entropy(tl, torch.from_numpy(target), ignore_index=255,
                           reduction="sum").item() == 0.0
    assert CrossEntropyLoss(reduction="sum").forward(logits, target) == 0.0
