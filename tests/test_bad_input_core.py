"""Bad input to the core layers: one table, each row a ValueError or TypeError whose
message names the problem (pytest.raises(..., match=keyword)).

Every row is split in two: ``setup`` (which may legitimately run the kernel, e.g.
a forward pass before a bad backward) and the bad call itself, which runs with
the C kernel made unreachable - so the error is raised in Python before any C
code runs, as the issue requires.
"""
import numpy as np
import pytest

from npfcn.kernels import backend
from npfcn import functional as F
from npfcn.functional import col2im, im2col
from npfcn.layers import (Add, Conv2d, ConvTranspose2d, Crop, Dropout, MaxPool2d,
                          MaxUnpool2d, ReLU)
from npfcn.losses import CrossEntropyLoss

f32, f64 = np.float32, np.float64


def img(*shape, dtype=f32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def after_forward(layer, *inputs):
    """Run a forward pass (setup) and return the layer, ready for a bad backward."""
    layer.forward(*inputs)
    return layer


def pooled(k=2, shape=(1, 2, 4, 4)):
    """(pooled values, indices) of a max pool, for unpooling rows."""
    return MaxPool2d(k, return_indices=True).forward(img(*shape))


def loss_after_forward():
    loss = CrossEntropyLoss()
    loss.forward(img(1, 3, 2, 2), np.zeros((1, 2, 2), dtype=np.int64))
    return loss


def labels(*values):
    return np.array(values, dtype=np.int64).reshape(1, 1, len(values))


# (id, setup() -> state, bad(state), exception, message keyword)
CASES = [
    # --- wrong rank ---
    ("conv rank 3", None, lambda _: Conv2d(3, 4, 3).forward(img(3, 8, 8)),
     ValueError, "4 dimensions"),
    ("conv_transpose rank 5", None, lambda _: ConvTranspose2d(3, 4, 3).forward(img(1, 1, 3, 8, 8)),
     ValueError, "4 dimensions"),
    ("max_pool rank 2", None, lambda _: MaxPool2d(2).forward(img(8, 8)), ValueError, "4 dimensions"),
    ("unpool rank 3", None, lambda _: MaxUnpool2d(2).forward(img(2, 2, 2), np.zeros((2, 2, 2), np.int64)),
     ValueError, "4 dimensions"),
    ("crop rank 3", None, lambda _: Crop(0).forward(img(2, 5, 5), (2, 2)), ValueError, "4 dimensions"),
    ("im2col rank 3", None, lambda _: im2col(img(3, 8, 8), 3), ValueError, "4 dimensions"),
    ("col2im rank 4", None, lambda _: col2im(img(1, 9, 36, 1), (1, 1, 8, 8), 3), ValueError, "3 dimensions"),
    ("loss logits rank 1", None, lambda _: CrossEntropyLoss().forward(img(3), np.zeros(3, np.int64)),
     ValueError, "logits must be"),
    # --- channel count ---
    ("conv channels", None, lambda _: Conv2d(3, 4, 3).forward(img(1, 2, 8, 8)), ValueError, "channels"),
    ("conv_transpose channels", None, lambda _: ConvTranspose2d(3, 4, 3).forward(img(1, 4, 8, 8)),
     ValueError, "channels"),
    ("conv bias length", None,
     lambda _: F.conv2d_forward(img(1, 1, 5, 5), img(2, 1, 3, 3), img(3)), ValueError, "bias"),
    ("loss class weight length", None,
     lambda _: CrossEntropyLoss(weight=[1.0, 2.0]).forward(img(1, 3, 2, 2), np.zeros((1, 2, 2), np.int64)),
     ValueError, "class weight"),
    # --- kernel larger than the padded input ---
    ("conv kernel > input", None, lambda _: Conv2d(1, 1, 5).forward(img(1, 1, 3, 3)),
     ValueError, "larger than the padded input"),
    ("conv dilated kernel > input", None,
     lambda _: Conv2d(1, 1, 3, padding=1, dilation=3).forward(img(1, 1, 4, 4)),
     ValueError, "larger than the padded input"),
    ("max_pool kernel > input", None, lambda _: MaxPool2d(4).forward(img(1, 1, 3, 3)),
     ValueError, "larger than the padded input"),
    ("im2col kernel > input", None, lambda _: im2col(img(1, 1, 2, 2), 3), ValueError,
     "larger than the padded input"),
    # --- stride 0, kernel 0, dilation 0 ---
    ("conv stride 0", None, lambda _: Conv2d(1, 1, 3, stride=0), ValueError, "stride must be positive"),
    ("conv_transpose stride 0", None, lambda _: ConvTranspose2d(1, 1, 3, stride=(2, 0)),
     ValueError, "stride must be positive"),
    ("max_pool stride 0", None, lambda _: MaxPool2d(2, stride=0), ValueError, "stride must be positive"),
    ("functional conv stride 0", None,
     lambda _: F.conv2d_forward(img(1, 1, 5, 5), img(1, 1, 3, 3), stride=0), ValueError, "stride"),
    ("im2col stride 0", None, lambda _: im2col(img(1, 1, 5, 5), 3, stride=0), ValueError, "stride"),
    ("kernel 0", None, lambda _: Conv2d(1, 1, 0), ValueError, "kernel_size must be positive"),
    ("dilation 0", None, lambda _: Conv2d(1, 1, 3, dilation=0), ValueError, "dilation must be positive"),
    ("stride True", None, lambda _: Conv2d(1, 1, 3, stride=True), TypeError, "stride"),
    ("stride 1.5", None, lambda _: MaxPool2d(2, stride=1.5), TypeError, "stride"),
    # --- negative padding ---
    ("conv padding -1", None, lambda _: Conv2d(1, 1, 3, padding=-1), ValueError, "padding must be >= 0"),
    ("conv_transpose padding -1", None, lambda _: ConvTranspose2d(1, 1, 3, padding=(0, -1)),
     ValueError, "padding must be >= 0"),
    ("max_pool padding -1", None, lambda _: MaxPool2d(2, padding=-1), ValueError, "padding must be >= 0"),
    ("im2col padding -1", None, lambda _: im2col(img(1, 1, 5, 5), 3, padding=-1), ValueError, "padding"),
    ("max_pool padding > kernel/2", None, lambda _: MaxPool2d(2, padding=2).forward(img(1, 1, 6, 6)),
     ValueError, "half the kernel"),
    ("conv_transpose padding word", None, lambda _: ConvTranspose2d(1, 1, 3, padding="valid"),
     TypeError, "padding"),
    ("functional conv_transpose padding word", None,
     lambda _: F.conv_transpose2d_forward(img(1, 1, 2, 2), img(1, 1, 3, 3), padding="full"),
     ValueError, "padding"),
    # --- output_padding ---
    ("output_padding == stride", None,
     lambda _: ConvTranspose2d(1, 1, 3, stride=2, output_padding=2), ValueError, "output_padding"),
    ("output_padding >= stride and dilation", None,
     lambda _: ConvTranspose2d(1, 1, 3, stride=2, dilation=2, output_padding=(0, 2)),
     ValueError, "output_padding"),
    ("output_padding with same", None,
     lambda _: ConvTranspose2d(1, 1, 3, stride=2, padding="same", output_padding=1),
     ValueError, "output_padding"),
    ("functional output_padding", None,
     lambda _: F.conv_transpose2d_forward(img(1, 1, 2, 2), img(1, 1, 3, 3), stride=1,
                                          output_padding=1), ValueError, "output_padding"),
    ("conv_transpose empty output", None,
     lambda _: ConvTranspose2d(1, 1, 1, padding=2).forward(img(1, 1, 2, 2)), ValueError, "empty"),
    # --- backward before forward (and twice after one forward) ---
    ("conv backward first", None, lambda _: Conv2d(1, 1, 3).backward(img(1, 1, 3, 3)),
     ValueError, "before forward"),
    ("conv_transpose backward first", None,
     lambda _: ConvTranspose2d(1, 1, 3).backward(img(1, 1, 3, 3)), ValueError, "before forward"),
    ("max_pool backward first", None, lambda _: MaxPool2d(2).backward(img(1, 1, 2, 2)),
     ValueError, "before forward"),
    ("unpool backward first", None, lambda _: MaxUnpool2d(2).backward(img(1, 1, 2, 2)),
     ValueError, "before forward"),
    ("relu backward first", None, lambda _: ReLU().backward(img(1, 1, 2, 2)), ValueError, "before forward"),
    ("dropout backward first", None, lambda _: Dropout(0.5).backward(img(1, 1, 2, 2)),
     ValueError, "before forward"),
    ("crop backward first", None, lambda _: Crop(0).backward(img(1, 1, 2, 2)), ValueError, "before forward"),
    ("add backward first", None, lambda _: Add().backward(img(1, 1, 2, 2)), ValueError, "before forward"),
    ("loss backward first", None, lambda _: CrossEntropyLoss().backward(), ValueError, "before forward"),
    ("conv backward twice", lambda: (lambda c: (c, c.backward(np.ones((1, 1, 3, 3), f32))))(
        after_forward(Conv2d(1, 1, 3, rng=0), img(1, 1, 5, 5))),
     lambda s: s[0].backward(np.ones((1, 1, 3, 3), f32)), ValueError, "before forward"),
    # --- gradient of the wrong shape or dtype ---
    ("conv grad shape", lambda: after_forward(Conv2d(1, 2, 3, rng=0), img(1, 1, 5, 5)),
     lambda c: c.backward(img(1, 2, 4, 3)), ValueError, "has shape"),
    ("conv grad rank", lambda: after_forward(Conv2d(1, 2, 3, rng=0), img(1, 1, 5, 5)),
     lambda c: c.backward(img(2, 3, 3)), ValueError, "dimensions"),
    ("conv grad dtype", lambda: after_forward(Conv2d(1, 2, 3, rng=0), img(1, 1, 5, 5)),
     lambda c: c.backward(img(1, 2, 3, 3, dtype=f64)), TypeError, "dtype"),
    ("conv_transpose grad shape", lambda: after_forward(ConvTranspose2d(1, 2, 3, rng=0), img(1, 1, 2, 2)),
     lambda c: c.backward(img(1, 2, 2, 2)), ValueError, "has shape"),
    ("max_pool grad shape", lambda: after_forward(MaxPool2d(2), img(1, 1, 4, 4)),
     lambda c: c.backward(img(1, 1, 3, 2)), ValueError, "has shape"),
    ("unpool grad shape", lambda: after_forward(MaxUnpool2d(2), *pooled()),
     lambda c: c.backward(img(1, 2, 4, 3)), ValueError, "has shape"),
    ("relu grad shape", lambda: after_forward(ReLU(), img(1, 1, 4, 4)),
     lambda c: c.backward(img(1, 1, 4)), ValueError, "dimensions"),
    ("dropout grad shape", lambda: after_forward(Dropout(0.5, rng=0), img(1, 1, 4, 4)),
     lambda c: c.backward(img(1, 1, 4, 3)), ValueError, "has shape"),
    ("dropout eval backward", lambda: after_forward(Dropout(0.5).eval(), img(1, 1, 4, 4)),
     lambda c: c.backward(img(1, 1, 4, 4)), ValueError, "eval mode"),
    ("dropout eval grad shape", lambda: F.dropout_forward(img(1, 1, 4, 4), 0.5, None, False)[1],
     lambda c: F.dropout_backward(img(1, 1, 4, 3), c), ValueError, "has shape"),
    ("crop grad too small", lambda: after_forward(Crop(1), img(1, 1, 6, 6), (3, 3)),
     lambda c: c.backward(img(1, 1, 2, 3)), ValueError, "has shape"),
    ("crop grad too large", lambda: after_forward(Crop(1), img(1, 1, 6, 6), (3, 3)),
     lambda c: c.backward(img(1, 1, 5, 5)), ValueError, "has shape"),
    ("add grad shape", lambda: after_forward(Add(), img(1, 1, 2, 2), img(1, 1, 2, 2)),
     lambda c: c.backward(img(1, 1, 2, 3)), ValueError, "has shape"),
    # --- unpooling indices ---
    ("unpool index too large", pooled,
     lambda p: MaxUnpool2d(2).forward(p[0], np.full(p[1].shape, 16)), ValueError, "out of range"),
    ("unpool index negative", pooled,
     lambda p: MaxUnpool2d(2).forward(p[0], -np.ones_like(p[1])), ValueError, "out of range"),
    ("unpool indices shape", pooled,
     lambda p: MaxUnpool2d(2).forward(p[0], p[1][:, :, :1]), ValueError, "indices has shape"),
    ("unpool float indices", pooled,
     lambda p: MaxUnpool2d(2).forward(p[0], p[1].astype(f32)), TypeError, "integer"),
    ("unpool output_size", pooled,
     lambda p: MaxUnpool2d(2).forward(p[0], p[1], (7, 4)), ValueError, "output_size"),
    # --- labels ---
    ("label = C", None,
     lambda _: CrossEntropyLoss().forward(img(1, 3, 1, 3), labels(0, 1, 3)), ValueError, r"outside \[0, 3\)"),
    ("label negative", None,
     lambda _: CrossEntropyLoss().forward(img(1, 3, 1, 3), labels(0, -1, 2)), ValueError, "outside"),
    ("label 255 with other ignore_index", None,
     lambda _: CrossEntropyLoss(ignore_index=-100).forward(img(1, 3, 1, 3), labels(0, 255, 2)),
     ValueError, "ignore_index"),
    ("float labels", None,
     lambda _: CrossEntropyLoss().forward(img(1, 3, 1, 3), labels(0, 1, 2).astype(f32)),
     TypeError, "integer"),
    ("labels wrong shape", None,
     lambda _: CrossEntropyLoss().forward(img(1, 3, 2, 3), labels(0, 1, 2)), ValueError, "shape"),
    ("labels not an array", None,
     lambda _: CrossEntropyLoss().forward(img(1, 3, 1, 3), [[[0, 1, 2]]]), TypeError, "ndarray"),
    ("loss reduction none", None, lambda _: CrossEntropyLoss(reduction="none"), ValueError, "reduction"),
    ("negative class weight", None, lambda _: CrossEntropyLoss(weight=[1.0, -1.0]), ValueError, "weight"),
    # --- input dtypes ---
    ("conv int64 input", None, lambda _: Conv2d(1, 1, 3).forward(np.ones((1, 1, 5, 5), np.int64)),
     TypeError, "float32 or float64"),
    ("conv float16 input", None, lambda _: Conv2d(1, 1, 3).forward(np.ones((1, 1, 5, 5), np.float16)),
     TypeError, "float32 or float64"),
    ("conv object input", None, lambda _: Conv2d(1, 1, 3).forward(np.ones((1, 1, 5, 5), object)),
     TypeError, "float32 or float64"),
    ("max_pool bool input", None, lambda _: MaxPool2d(2).forward(np.ones((1, 1, 4, 4), bool)),
     TypeError, "float32 or float64"),
    ("relu complex input", None, lambda _: ReLU().forward(np.ones((1, 1, 4, 4), complex)),
     TypeError, "float32 or float64"),
    ("unpool int input", pooled,
     lambda p: MaxUnpool2d(2).forward(p[0].astype(np.int32), p[1]), TypeError, "float32 or float64"),
    ("loss float16 logits", None,
     lambda _: CrossEntropyLoss().forward(np.zeros((1, 3, 1, 3), np.float16), labels(0, 1, 2)),
     TypeError, "float32 or float64"),
    ("conv list input", None, lambda _: Conv2d(1, 1, 1).forward([[[[1.0]]]]), TypeError, "ndarray"),
    ("float32 into float64 conv", None,
     lambda _: Conv2d(1, 1, 3, dtype=f64).forward(img(1, 1, 5, 5, dtype=f32)), TypeError, "dtype"),
    ("float64 into float32 conv_transpose", None,
     lambda _: ConvTranspose2d(1, 1, 3).forward(img(1, 1, 5, 5, dtype=f64)), TypeError, "dtype"),
    ("add mixed dtypes", None, lambda _: Add().forward(img(1, 1, 2, 2), img(1, 1, 2, 2, dtype=f64)),
     TypeError, "dtype"),
    ("float16 layer", None, lambda _: Conv2d(1, 1, 3, dtype=np.float16), TypeError, "dtype"),
    # --- sizes the kernels cannot index (refused before anything is allocated) ---
    ("im2col huge grid", None, lambda _: im2col(img(1, 1, 4, 4), 3, out_size=(2 ** 21, 2 ** 21)),
     ValueError, "more than the supported"),
    ("col2im huge image", None,
     lambda _: col2im(img(1, 9, 4), (1, 1, 2 ** 21, 2 ** 21), 3, out_size=(2, 2)),
     ValueError, "more than the supported"),
    ("conv huge broadcast input", None,
     lambda _: Conv2d(1, 1, 1).forward(np.broadcast_to(np.zeros(1, f32), (2 ** 21, 1, 2 ** 10, 2 ** 10))),
     ValueError, "elements"),
    ("unpool huge stride", pooled,
     lambda p: MaxUnpool2d(2, stride=2 ** 21).forward(*p), ValueError, "more than the supported"),
    # --- other shapes and arguments ---
    ("add shapes", None, lambda _: Add().forward(img(1, 1, 2, 2), img(1, 1, 2, 3)), ValueError, "shapes"),
    ("crop does not fit", None, lambda _: Crop(2).forward(img(1, 1, 5, 5), (4, 4)),
     ValueError, "does not fit"),
    ("col2im cols shape", None, lambda _: col2im(img(1, 9, 35), (1, 1, 8, 8), 3), ValueError, "cols has shape"),
    ("in_channels 0", None, lambda _: Conv2d(0, 1, 3), ValueError, "in_channels"),
    ("dropout p > 1", None, lambda _: Dropout(1.5), ValueError, "probability"),
]


@pytest.fixture
def no_c_kernel(monkeypatch):
    """Make any call into the C kernel fail the test loudly."""
    def unreachable():
        raise AssertionError("the C kernel was reached with bad input")
    monkeypatch.setattr(backend, "lib", unreachable)
    monkeypatch.setattr(backend, "ffi", unreachable)


@pytest.mark.parametrize("setup, bad, error, keyword",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_raises_before_c(setup, bad, error, keyword, request):
    state = setup() if setup is not None else None
    request.getfixturevalue("no_c_kernel")   # from here on C is off limits
    with pytest.raises(error, match=keyword):
        bad(state)


def test_case_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", ["c", "numpy"])
def test_empty_batch_goes_through_forward_and_backward(name):
    """Not bad input: N = 0 is accepted (as in PyTorch) by forward and backward alike."""
    if name == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    x = np.zeros((0, 2, 5, 5), f32)
    with backend.using(name):
        for layer, out_shape in ((Conv2d(2, 3, 3, padding=1, rng=0), (0, 3, 5, 5)),
                                 (ConvTranspose2d(2, 3, 3, stride=2, rng=0), (0, 3, 11, 11)),
                                 (MaxPool2d(2, ceil_mode=True), (0, 2, 3, 3)),
                                 (ReLU(), (0, 2, 5, 5))):
            y = layer.forward(x)
            assert y.shape == out_shape
            assert layer.backward(y).shape == x.shape
        pooled, idx = MaxPool2d(2, return_indices=True).forward(x)
        unpool = MaxUnpool2d(2)
        assert unpool.forward(pooled, idx).shape == (0, 2, 4, 4)
        assert unpool.backward(np.zeros((0, 2, 4, 4), f32)).shape == (0, 2, 2, 2)
        loss = CrossEntropyLoss()
        assert loss.forward(np.zeros((0, 3, 2, 2), f32), np.zeros((0, 2, 2), np.int64)) == 0.0
        assert loss.backward().shape == (0, 3, 2, 2)
