"""FCN-8s/16s/32s: architecture, sizes, crop offsets, gradients, state, and PyTorch parity."""
import copy
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npfcn import functional as F
from npfcn.gradcheck import gradcheck, relative_error
from npfcn.init import bilinear_kernel, upsample_filt
from npfcn.layers import ConvTranspose2d
from npfcn.losses import CrossEntropyLoss
from npfcn.models import (FCN8s, FCN16s, FCN32s, build_model, count_parameters,
                          parameter_shapes, upsampling_names)
from npfcn.models.fcn import ARCHITECTURES, MODEL_NAMES      # the FCNs (SegNet & co.: test_segnet.py)
from npfcn.models.registry import MODEL_NAMES as ALL_MODEL_NAMES
from npfcn.optim import SGD

TINY = 1 / 64          # every VGG/fc channel count scaled to 1..64: a full forward takes ms

REFERENCE_NAMES = {
    "fcn8s": ["score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"],
    "fcn16s": ["score_fr", "upscore2", "score_pool4", "upscore16"],
    "fcn32s": ["score_fr", "upscore"],
}
VGG_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7"]


def randomise(model, rng):
    """Give the zero-initialised score layers (and everything else) random values.

    With the reference's zero score layers every gradient below score_fr is
    zero at the start, which would make a gradient check of the encoder vacuous.
    Biases are positive so that the one-channel layers of a tiny width do not
    go dead (an all-negative channel would zero every gradient beneath it).
    """
    for name, p in model.params.items():
        if name.endswith(".bias"):
            p[...] = 0.05 + 0.05 * np.abs(rng.standard_normal(p.shape))
        else:
            # He scale keeps the signal (and so the input gradient) from fading over 15
            # layers; a faded gradient would drown in the central differences' rounding.
            fan_in = np.prod(p.shape[1:])
            p[...] = rng.standard_normal(p.shape) * np.sqrt(2 / fan_in)


# --- architecture and parameter count ------------------------------------------------

def test_full_width_parameter_count_matches_the_reference():
    # The numbers: 134,362,751 learned + 127,008 fixed upsampling, for 21 classes.
    # Counted from the shapes so the 500 MB model is never allocated.
    learned, fixed = count_parameters("fcn8s", num_classes=21, width=1.0)
    assert (learned, fixed) == (134_362_751, 127_008)
    assert learned + fixed == 134_489_759
    shapes = parameter_shapes("fcn8s", 21, 1.0)
    assert shapes["fc6.weight"] == (4096, 512, 7, 7)
    assert shapes["fc7.weight"] == (4096, 4096, 1, 1)
    assert shapes["conv1_1.weight"] == (64, 3, 3, 3)
    assert shapes["conv5_3.weight"] == (512, 512, 3, 3)
    assert shapes["score_pool4.weight"] == (21, 512, 1, 1)
    assert shapes["score_pool3.weight"] == (21, 256, 1, 1)
    assert shapes["upscore8.weight"] == (21, 21, 16, 16)
    assert shapes["upscore2.weight"] == shapes["upscore_pool4.weight"] == (21, 21, 4, 4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_names_follow_the_reference(name):
    model = build_model(name, num_classes=3, width=TINY)
    expected = [f"{layer}.{kind}" for layer in VGG_NAMES for kind in ("weight", "bias")]
    for layer in REFERENCE_NAMES[name]:
        expected += [f"{layer}.weight"] + ([] if layer.startswith("upscore") else [f"{layer}.bias"])
    assert sorted(model.params) == sorted(expected)
    assert sorted(model.grads) == sorted(expected)
    upsampling = {f"{n}.weight" for n in REFERENCE_NAMES[name] if n.startswith("upscore")}
    assert set(upsampling_names(name)) == upsampling
    assert set(model.trainable) == set(expected) - upsampling


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("width", [TINY, 0.1, 0.3])
def test_allocated_shapes_equal_the_counted_shapes(name, width):
    model = build_model(name, num_classes=4, width=width)
    shapes = parameter_shapes(name, 4, width)
    assert list(model.params) == list(shapes)
    for key, shape in shapes.items():
        assert model.params[key].shape == shape and model.grads[key].shape == shape
        assert model.params[key].dtype == np.float32


def test_width_scales_every_channel_count_with_round_and_a_floor_of_one():
    shapes = parameter_shapes("fcn8s", 2, 0.3)
    # round(64*0.3)=19, round(128*0.3)=38, round(256*0.3)=77, round(512*0.3)=154, round(4096*0.3)=1229
    assert shapes["conv1_1.weight"] == (19, 3, 3, 3)
    assert shapes["conv2_1.weight"] == (38, 19, 3, 3)
    assert shapes["conv3_3.weight"] == (77, 77, 3, 3)
    assert shapes["conv5_1.weight"] == (154, 154, 3, 3)
    assert shapes["fc6.weight"] == (1229, 154, 7, 7)
    assert shapes["score_pool3.weight"] == (2, 77, 1, 1)
    tiny = parameter_shapes("fcn8s", 2, 1e-4)       # every count would round to 0
    assert tiny["conv1_1.weight"] == (1, 3, 3, 3) and tiny["fc7.weight"] == (1, 1, 1, 1)


def test_count_parameters_of_the_other_variants_from_first_principles():
    learned8, _ = count_parameters("fcn8s", 21, 1.0)
    learned16, fixed16 = count_parameters("fcn16s", 21, 1.0)
    learned32, fixed32 = count_parameters("fcn32s", 21, 1.0)
    assert learned8 - learned16 == 21 * 256 + 21           # score_pool3
    assert learned16 - learned32 == 21 * 512 + 21          # score_pool4
    assert fixed16 == 21 * 21 * (4 * 4 + 32 * 32)
    assert fixed32 == 21 * 21 * 64 * 64


# --- sizes and crop offsets ----------------------------------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [(1, 1), (1, 7), (2, 2), (5, 3), (31, 33), (32, 32), (64, 47)])
def test_scores_have_exactly_the_input_size(name, size):
    model = build_model(name, num_classes=3, width=TINY)
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    scores = model.forward(x)
    assert scores.shape == (2, 3, *size) and scores.dtype == np.float32
    dx = model.backward(np.ones_like(scores))
    assert dx.shape == x.shape and dx.dtype == np.float32


@settings(max_examples=12)
@given(name=st.sampled_from(MODEL_NAMES), h=st.integers(1, 200), w=st.integers(1, 200))
def test_any_input_size_gives_scores_of_that_size(name, h, w):
    model = build_model(name, num_classes=2, width=TINY, dropout=0.0)
    x = np.zeros((1, 3, h, w), np.float32)
    assert model.forward(x).shape == (1, 2, h, w)


def _coordinate_maps(variant):
    """Caffe's coord_map, rederived: every blob's pixel i sits at input coordinate a*i + b.

    A convolution or pool (kernel k, stride s, padding p) puts output pixel i at
    s*i - p + (k-1)/2 of its input; a transposed convolution puts output pixel i
    at (i - (k-1)/2 + p) / s.  A crop of blob A against blob B at offset o is right
    when A's pixel o + i is B's pixel i, i.e. the maps differ by exactly o pixels.
    """
    def conv(m, k, s=1, p=0):
        a, b = m
        return (a * s, b + a * (Fraction(k - 1, 2) - p))

    def deconv(m, k, s, p=0):
        a, b = m
        return (a / s, b + (a / s) * (p - Fraction(k - 1, 2)))

    maps, m = {}, (Fraction(1), Fraction(0))
    m = conv(m, 3, p=100)                                  # conv1_1
    for block, convs in enumerate((1, 2, 3, 3, 3), start=1):  # the remaining 3x3 convs, pad 1
        for _ in range(convs):
            m = conv(m, 3, p=1)
        m = conv(m, 2, s=2)                                # pool
        maps[f"pool{block}"] = m
    m = conv(m, 7)                                         # fc6 (fc7 and scores are 1x1)
    maps["score_fr"] = m
    skips, final = ARCHITECTURES[variant]
    for skip in skips:
        m = deconv(m, 4, 2)
        maps[skip.upsample] = m
    maps[final.name] = deconv(m, final.kernel_size, final.stride)
    return maps


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_crop_offsets_are_the_coordinate_map_offsets(name):
    maps = _coordinate_maps(name)
    skips, final = ARCHITECTURES[name]
    for skip in skips:
        a_skip, b_skip = maps[skip.tap]                    # the 1x1 score keeps the tap's map
        a_up, b_up = maps[skip.upsample]
        assert a_skip == a_up                              # same resolution
        assert (b_up - b_skip) / a_up == skip.offset       # score_pool4c at offset 5, pool3 at 9
    a, b = maps[final.name]
    assert a == 1 and -b == final.offset                   # 31 / 27 / 19
    assert [s.offset for s in skips] == {"fcn8s": [5, 9], "fcn16s": [5], "fcn32s": []}[name]
    assert final.offset == {"fcn8s": 31, "fcn16s": 27, "fcn32s": 19}[name]


def _mirror_symmetric(model):
    """Make every kernel symmetric under left-right and up-down flips."""
    for p in model.params.values():
        if p.ndim == 4:
            p[...] = (p + p[:, :, ::-1] + p[:, :, :, ::-1] + p[:, :, ::-1, ::-1]) / 4


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_offsets_make_the_net_flip_equivariant_where_the_geometry_is_symmetric(name):
    # For H, W = 32m - 198 every pool tiles its input exactly and each crop offset
    # leaves equal margins on both sides (e.g. FCN-8s at 26: score_pool4 is 14 wide,
    # cropped 5 + 4 + 5; upscore8 is 88 wide, cropped 31 + 26 + 31).  With mirror-
    # symmetric kernels the net must then commute with flips; an offset one pixel
    # off breaks that, which the second half of the test demonstrates.
    model = build_model(name, num_classes=2, width=TINY, dtype=np.float64, dropout=0.0)
    randomise(model, np.random.default_rng(0))
    _mirror_symmetric(model)
    x = np.random.default_rng(1).standard_normal((1, 3, 26, 58))
    scores = model.forward(x)
    np.testing.assert_allclose(model.forward(x[:, :, :, ::-1].copy()), scores[:, :, :, ::-1],
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.forward(x[:, :, ::-1].copy()), scores[:, :, ::-1],
                               rtol=1e-10, atol=1e-12)
    for crop in [model._final_crop, *model._skip_crops.values()]:
        right = crop.offset
        crop.offset = (right[0] - 1, right[1] - 1)
        shifted = model.forward(x)
        assert not np.allclose(model.forward(x[:, :, :, ::-1].copy()), shifted[:, :, :, ::-1],
                               rtol=1e-6, atol=1e-9)
        crop.offset = right


def test_crops_start_at_the_offset_not_the_centre():
    # An impulse at input pixel (0, 0) through FCN-32s with identity-like weights would be
    # hard to build; instead check the final crop directly on the upsampled scores.
    model = FCN32s(num_classes=2, width=TINY, dtype=np.float64, dropout=0.0)
    randomise(model, np.random.default_rng(1))
    x = np.random.default_rng(2).standard_normal((1, 3, 5, 6))
    scores = model.forward(x)
    taps = model.encoder.forward(x)
    score_fr = model._layers["score_fr"].forward(taps["fc7"])
    up, _ = F.conv_transpose2d_forward(score_fr, model.params["upscore.weight"], None, 32, 0)
    np.testing.assert_allclose(scores, up[:, :, 19:24, 19:25], rtol=1e-12, atol=0)


# --- upsampling ----------------------------------------------------------------------

def test_bilinear_kernel_is_the_reference_upsample_filt_on_the_diagonal():
    taps4 = np.array([0.25, 0.75, 0.75, 0.25])          # factor 2, centre 1.5
    np.testing.assert_array_equal(upsample_filt(4), np.outer(taps4, taps4))
    taps3 = np.array([0.5, 1.0, 0.5])                   # factor 2, centre 1
    np.testing.assert_array_equal(upsample_filt(3), np.outer(taps3, taps3))
    w = bilinear_kernel(3, 4, np.float64)
    assert w.shape == (3, 3, 4, 4) and w.dtype == np.float64
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(w[i, j], upsample_filt(4) if i == j else 0)


@pytest.mark.parametrize("kernel, stride", [(4, 2), (16, 8), (32, 16), (64, 32)])
def test_bilinear_upsampling_reproduces_a_linear_ramp_in_the_interior(kernel, stride):
    # Bilinear interpolation is exact on affine functions: away from the borders
    # (where fewer stamps overlap) the upsampled ramp is again a ramp.
    h, w = 6, 5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (2.0 * yy - 3.0 * xx + 1.0)[None, None]
    y, _ = F.conv_transpose2d_forward(x, bilinear_kernel(1, kernel, np.float64), None, stride, 0)
    # Output pixel o sits at input coordinate (o - (k-1)/2) / s (the deconv coordinate map).
    coords = (np.arange(y.shape[2]) - (kernel - 1) / 2) / stride
    cy, cx = np.meshgrid(coords, (np.arange(y.shape[3]) - (kernel - 1) / 2) / stride,
                         indexing="ij")
    interior = (slice(kernel, -kernel), slice(kernel, -kernel))
    np.testing.assert_allclose(y[0, 0][interior], (2.0 * cy - 3.0 * cx + 1.0)[interior],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("geometry", [
    dict(kernel_size=4, stride=2),                                  # FCN's upscore2
    dict(kernel_size=3, stride=(2, 3), padding=(1, 2), dilation=(2, 1), output_padding=1),
    dict(kernel_size=3, stride=2, padding="same"),                  # asymmetric padding
    dict(kernel_size=3, stride=1, dilation=2, output_padding=1),    # output_padding >= stride
])
@pytest.mark.parametrize("bias", [False, True])
def test_frozen_transposed_convolution_gives_the_full_input_gradient(geometry, bias):
    """A frozen ConvTranspose2d (FCN's upsampling) has the learned layer's output and d/dx,
    and leaves every gradient at zero (float64: the two compute the same sums, 1e-12)."""
    frozen = ConvTranspose2d(3, 4, **geometry, bias=bias, dtype=np.float64, rng=0, frozen=True)
    learned = ConvTranspose2d(3, 4, **geometry, bias=bias, dtype=np.float64, rng=0)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4))
    y = frozen.forward(x)
    np.testing.assert_allclose(y, learned.forward(x), rtol=0, atol=1e-12)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    np.testing.assert_allclose(frozen.backward(dy), learned.backward(dy), rtol=0, atol=1e-12)
    assert not any(g.any() for g in frozen.grads.values())
    assert learned.grads["weight"].any()


def test_frozen_fcn_upsampling_computes_no_weight_gradient(monkeypatch):
    """FCN's frozen upsampling layers are ConvTranspose2d and never run the transposed
    convolution's backward pass (which would build the weight gradient)."""
    model = FCN8s(num_classes=2, width=TINY, dtype=np.float64, dropout=0.0)
    for name in upsampling_names("fcn8s"):
        layer = model._layers[name.split(".")[0]]
        assert isinstance(layer, ConvTranspose2d) and layer.frozen and "bias" not in layer.params
    model.forward(np.random.default_rng(1).standard_normal((1, 3, 9, 9)))

    def refuse(*args, **kwargs):
        raise AssertionError("a frozen upsampling layer ran conv_transpose2d_backward")

    monkeypatch.setattr(F, "conv_transpose2d_backward", refuse)
    model.backward(np.ones((1, 2, 9, 9)))


def test_upsampling_is_frozen_by_default_but_still_passes_the_gradient():
    model = FCN8s(num_classes=2, width=TINY, dtype=np.float64, dropout=0.0)
    randomise(model, np.random.default_rng(0))
    frozen = {n: model.params[n].copy() for n in upsampling_names("fcn8s")}
    x = np.random.default_rng(1).standard_normal((1, 3, 9, 9))
    loss = CrossEntropyLoss()
    target = np.random.default_rng(2).integers(0, 2, (1, 9, 9))
    model.zero_grad()
    loss(model.forward(x), target)
    model.backward(loss.backward())
    for name in frozen:
        assert not model.grads[name].any()
    # Everything under the upsampling still gets a gradient (fc6 lies below three of them).
    assert np.abs(model.grads["conv1_1.weight"]).max() > 0
    SGD(model, lr=0.1).step()
    for name, before in frozen.items():
        np.testing.assert_array_equal(model.params[name], before)


def test_learn_upsampling_makes_the_kernels_trainable():
    model = FCN8s(num_classes=2, width=TINY, learn_upsampling=True, dtype=np.float64)
    assert set(upsampling_names("fcn8s")) <= set(model.trainable)
    randomise(model, np.random.default_rng(0))
    model.forward(np.random.default_rng(1).standard_normal((1, 3, 6, 6)))
    model.backward(np.ones((1, 2, 6, 6)))
    for name in upsampling_names("fcn8s"):
        assert np.abs(model.grads[name]).max() > 0


# --- gradients -----------------------------------------------------------------------

def _check_sampled_params(model, x, names, per_param=2, eps=1e-6):
    """Analytic vs central-difference gradients of sum(forward(x) * r) for some entries.

    The same objective as npfcn.gradcheck (dropout masks repeat because model.rng
    is restored before every forward), but on a few sampled entries per
    parameter: every forward pays for the 200x200 map the padding of 100 creates.
    Returns {name: worst relative error over its sampled entries}.
    """
    state = copy.deepcopy(model.rng.bit_generator.state)

    def forward():
        model.rng.bit_generator.state = copy.deepcopy(state)
        return model.forward(x)

    r = np.random.default_rng(7).standard_normal(forward().shape)
    model.zero_grad()
    model.backward(r)                      # analytic gradients of <forward(x), r>
    pick = np.random.default_rng(8)
    errors = {}
    for name in names:
        param, grad = model.params[name].reshape(-1), model.grads[name].reshape(-1)
        # Entries with a nonzero gradient (dropout and ReLUs zero many): a check of
        # zeros alone would pass for a backward that forgot the parameter.
        candidates = np.flatnonzero(grad)
        assert candidates.size, f"{name}: zero gradient, the check would be vacuous"
        chosen = pick.choice(candidates, size=min(per_param, candidates.size), replace=False)
        analytic = grad[chosen]
        numeric = []
        for i in chosen:
            original = param[i]
            param[i] = original + eps
            plus = float(np.sum(forward() * r))
            param[i] = original - eps
            minus = float(np.sum(forward() * r))
            param[i] = original
            numeric.append((plus - minus) / (2 * eps))
        errors[name] = relative_error(analytic, np.array(numeric))
    model.forward(x)                       # leave no stale cache behind
    model.backward(r)
    return errors


ALL_KINDS = ["conv1_1.weight", "conv3_2.bias", "conv5_3.weight", "fc6.weight", "fc7.bias",
             "score_fr.weight", "score_fr.bias", "score_pool4.weight", "score_pool4.bias",
             "score_pool3.weight", "score_pool3.bias", "upscore2.weight", "upscore_pool4.weight",
             "upscore8.weight"]


@pytest.mark.parametrize("name, options, size, names", [
    ("fcn8s", dict(scale_skips=True, learn_upsampling=True), (2, 3), ALL_KINDS),
    ("fcn8s", dict(), (3, 2), []),                      # frozen upsampling: d/dx only
    ("fcn16s", dict(scale_skips=True, learn_upsampling=True), (2, 2),
     ["score_pool4.weight", "upscore2.weight", "upscore16.weight"]),
    ("fcn32s", dict(learn_upsampling=True), (1, 3), ["score_fr.weight", "upscore.weight"]),
])
def test_model_gradcheck_float64(name, options, size, names):
    # Tolerance 1e-6: float64 central differences give ~1e-8 here for a correct backward.
    model = build_model(name, num_classes=2, width=TINY, dtype=np.float64, seed=3, **options)
    randomise(model, np.random.default_rng(4))
    model.train()                          # dropout active; gradcheck restores model.rng
    x = np.random.default_rng(5).standard_normal((1, 3, *size))
    report = gradcheck(model, (x,), params=False)
    report.assert_ok(1e-6)
    model.forward(x)
    assert np.count_nonzero(model.backward(np.ones((1, 2, *size)))) == x.size   # not vacuous
    errors = _check_sampled_params(model, x, names)
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, bad


def test_scale_skips_equals_scaling_the_skip_score_weights():
    # score_pool4(0.01 * pool4) = (0.01 * W) pool4 + b: both nets must agree exactly.
    plain = FCN8s(num_classes=3, width=TINY, dtype=np.float64, dropout=0.0, seed=1)
    scaled = FCN8s(num_classes=3, width=TINY, dtype=np.float64, dropout=0.0, seed=1,
                   scale_skips=True)
    randomise(plain, np.random.default_rng(0))
    scaled.load_state_dict(plain.state_dict())
    plain.params["score_pool4.weight"][...] *= 0.01
    plain.params["score_pool3.weight"][...] *= 1e-4
    x = np.random.default_rng(1).standard_normal((2, 3, 11, 9))
    np.testing.assert_allclose(scaled.forward(x), plain.forward(x), rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(2).standard_normal((2, 3, 11, 9))
    np.testing.assert_allclose(scaled.backward(dy), plain.backward(dy), rtol=1e-10, atol=1e-13)


def test_zero_score_layers_still_train_from_scratch():
    # dropout=0: the same function before and after each step (training mode keeps caches)
    model = FCN8s(num_classes=3, width=1 / 32, seed=0, dropout=0.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    target = np.zeros((2, 12, 12), np.int64)
    target[:, 4:10, 4:10] = 1
    target[:, :, :3] = 2
    loss = CrossEntropyLoss()
    optimizer = SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(3):
        model.zero_grad()
        losses.append(loss(model.forward(x), target))
        model.backward(loss.backward())
        if len(losses) == 1:
            # All scores are 0: the loss is log(3) and only the score layers get a gradient.
            assert losses[0] == pytest.approx(np.log(3), rel=1e-6)
            assert np.abs(model.grads["score_fr.weight"]).max() > 0
            assert np.abs(model.grads["score_pool3.bias"]).max() > 0
            assert not model.grads["conv5_3.weight"].any()
        else:
            # Once the score layers are not zero, the gradient reaches the encoder.
            assert np.abs(model.grads["conv5_3.weight"]).max() > 0
        optimizer.step()
    assert losses[1] < losses[0] and losses[2] < losses[1]


# --- modes, state, config --------------------------------------------------------------

def test_dropout_only_in_training_mode_and_reproducible_from_the_seed():
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    a, b = FCN8s(2, width=TINY, seed=5), FCN8s(2, width=TINY, seed=5)
    randomise(a, np.random.default_rng(1))
    b.load_state_dict(a.state_dict())
    first = a.forward(x)
    np.testing.assert_array_equal(first, b.forward(x))          # same seed, same masks
    assert not np.array_equal(first, a.forward(x))              # a fresh mask next time
    a.eval()
    assert a.training is False and all(not m.training for m in a._modules())
    np.testing.assert_array_equal(a.forward(x), a.forward(x))
    a.train()
    assert a.training and all(m.training for m in a._modules())
    assert a.rng is a.encoder.steps[-1][1].rng                  # drop7 draws from model.rng


def test_the_seed_fixes_the_initial_weights():
    a, b, c = (FCN16s(2, width=TINY, seed=s) for s in (1, 1, 2))
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    assert not np.array_equal(a.params["conv2_1.weight"], c.params["conv2_1.weight"])


def test_he_initialisation_and_zero_biases_and_scores():
    model = FCN8s(21, width=0.25, seed=0)
    for name in VGG_NAMES:
        w = model.params[f"{name}.weight"]
        fan_in = np.prod(w.shape[1:])
        # The sample std of >= 1728 normals is within ~10% of sqrt(2 / fan_in).
        assert w.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.1)
        assert not model.params[f"{name}.bias"].any()
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not model.params[f"{name}.weight"].any() and not model.params[f"{name}.bias"].any()
    np.testing.assert_array_equal(model.params["upscore8.weight"], bilinear_kernel(21, 16))


def test_state_dict_round_trip():
    a = FCN8s(3, width=TINY, seed=0, dtype=np.float64)
    randomise(a, np.random.default_rng(0))
    state = a.state_dict()
    assert list(state) == list(a.params)
    state["conv1_1.weight"][...] += 1                           # a copy, not the parameter
    assert not np.array_equal(state["conv1_1.weight"], a.params["conv1_1.weight"])
    b = build_model(**a.config, dtype=np.float64, seed=9)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = np.random.default_rng(1).standard_normal((1, 3, 10, 7))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


@pytest.mark.parametrize("break_it, message", [
    (lambda s: s.pop("fc7.bias"), "missing fc7.bias"),
    (lambda s: s.__setitem__("fc8.weight", np.zeros(3)), "unexpected fc8.weight"),
    (lambda s: s.__setitem__("upscore8.weight", np.zeros((3, 3, 8, 8))), "upscore8.weight: shape"),
    (lambda s: s.__setitem__("score_fr.bias", np.zeros(3, np.float64)), "score_fr.bias: dtype"),
    (lambda s: s.__setitem__("fc6.bias", s["fc6.bias"] * np.nan), "fc6.bias: contains NaN"),
    (lambda s: s.__setitem__("fc6.bias", list(s["fc6.bias"])), "fc6.bias: expected a numpy"),
])
def test_load_state_dict_validates_everything_before_loading(break_it, message):
    model = FCN8s(3, width=TINY, seed=0)
    before = model.state_dict()
    state = {k: v + 1 for k, v in before.items()}               # every value differs...
    break_it(state)                                             # ...and one entry is bad
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state)
    for name, value in before.items():                          # nothing was half-loaded
        np.testing.assert_array_equal(model.params[name], value)


def test_config_rebuilds_the_same_architecture():
    model = FCN16s(num_classes=5, width=0.125, learn_upsampling=True, scale_skips=True,
                   dropout=0.25, seed=3)
    assert model.config == {"model": "fcn16s", "num_classes": 5, "width": 0.125,
                            "learn_upsampling": True, "scale_skips": True, "dropout": 0.25}
    again = build_model(**model.config)
    assert type(again) is FCN16s and again.config == model.config
    assert {k: v.shape for k, v in again.params.items()} == \
           {k: v.shape for k, v in model.params.items()}
    assert again.trainable == model.trainable and model.num_classes == 5


@pytest.mark.parametrize("kwargs, error", [
    (dict(model="fcn4s"), ValueError),
    (dict(num_classes=0), ValueError),
    (dict(num_classes=2.5), ValueError),
    (dict(width=0), ValueError),
    (dict(width=float("nan")), ValueError),
    (dict(dropout=1.0), ValueError),
    (dict(dtype=np.int32), TypeError),
    (dict(seed="x"), TypeError),
])
def test_bad_model_arguments(kwargs, error):
    kwargs = {"model": "fcn8s", "num_classes": 2, "width": TINY, **kwargs}
    with pytest.raises(error):
        build_model(**kwargs)


def test_bad_input_and_backward_misuse():
    model = FCN8s(2, width=TINY)
    with pytest.raises(ValueError, match="3 channels"):
        model.forward(np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float64"):
        model.forward(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="4 dimensions"):
        model.forward(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="before forward"):
        model.backward(np.zeros((1, 2, 8, 8), np.float32))
    model.forward(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="shape"):
        model.backward(np.zeros((1, 2, 8, 9), np.float32))


def test_params_view_updates_reach_the_layers():
    model = FCN32s(2, width=TINY, dropout=0.0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5))
    before = model.forward(x)
    # The scores are linear in score_fr.bias: bias b changes channel c by b[c] * U.
    model.params["score_fr.bias"][...] = [1.0, -1.0]                  # in place
    once = model.forward(x) - before
    model.params["score_fr.bias"] = np.array([2.0, 0.0])              # replacement
    twice = model.forward(x) - before
    assert np.abs(once[0, 0]).min() > 0.1
    np.testing.assert_allclose(once[0, 1], -once[0, 0], rtol=1e-12)
    np.testing.assert_allclose(twice[0, 0], 2 * once[0, 0], rtol=1e-12)
    np.testing.assert_allclose(twice[0, 1], 0, atol=1e-12)
    with pytest.raises(ValueError, match="score_fr.bias"):
        model.params["score_fr.bias"] = np.zeros(3)
    with pytest.raises(ValueError, match="score_fr.bias"):
        model.params["score_fr.bias"] = np.zeros(2, np.float32)
    with pytest.raises(KeyError):
        model.params["nope.weight"] = np.zeros(1)


# --- parity with an independent PyTorch implementation -------------------------------

def _torch_fcn(torch, name, p, x):
    """The Caffe reference net written directly in torch.nn.functional (eval mode).

    p: {name: tensor} with the model's parameter names; x: (N, 3, H, W) tensor.
    """
    fn = torch.nn.functional
    h, taps = x, {}
    blocks = [["conv1_1", "conv1_2"], ["conv2_1", "conv2_2"], ["conv3_1", "conv3_2", "conv3_3"],
              ["conv4_1", "conv4_2", "conv4_3"], ["conv5_1", "conv5_2", "conv5_3"]]
    for i, block in enumerate(blocks, start=1):
        for conv in block:
            h = fn.relu(fn.conv2d(h, p[f"{conv}.weight"], p[f"{conv}.bias"],
                                  padding=100 if conv == "conv1_1" else 1))
        h = fn.max_pool2d(h, 2, 2, ceil_mode=True)
        taps[f"pool{i}"] = h
    h = fn.relu(fn.conv2d(h, p["fc6.weight"], p["fc6.bias"]))
    h = fn.relu(fn.conv2d(h, p["fc7.weight"], p["fc7.bias"]))
    score = fn.conv2d(h, p["score_fr.weight"], p["score_fr.bias"])

    def crop(t, offset, like):
        return t[:, :, offset:offset + like.shape[2], offset:offset + like.shape[3]]

    if name == "fcn32s":
        return crop(fn.conv_transpose2d(score, p["upscore.weight"], stride=32), 19, x)
    up2 = fn.conv_transpose2d(score, p["upscore2.weight"], stride=2)
    fuse4 = up2 + crop(fn.conv2d(taps["pool4"], p["score_pool4.weight"], p["score_pool4.bias"]),
                       5, up2)
    if name == "fcn16s":
        return crop(fn.conv_transpose2d(fuse4, p["upscore16.weight"], stride=16), 27, x)
    up4 = fn.conv_transpose2d(fuse4, p["upscore_pool4.weight"], stride=2)
    fuse3 = up4 + crop(fn.conv2d(taps["pool3"], p["score_pool3.weight"], p["score_pool3.bias"]),
                       9, up4)
    return crop(fn.conv_transpose2d(fuse3, p["upscore8.weight"], stride=8), 31, x)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_backward_match_pytorch(torch, name):
    # float64 on both sides: only summation order differs, so 1e-10 relative is ample.
    model = build_model(name, num_classes=3, width=1 / 32, dtype=np.float64, seed=0, dropout=0.0)
    randomise(model, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 13, 18))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    params = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in model.params.items()}
    expected = _torch_fcn(torch, name, params, xt)
    scores = model.forward(x)
    np.testing.assert_allclose(scores, expected.detach().numpy(), rtol=1e-10,
                               atol=1e-10 * np.abs(scores).max())
    dy = np.random.default_rng(2).standard_normal(scores.shape)
    expected.backward(torch.from_numpy(dy))
    dx = model.backward(dy)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-10 * np.abs(dx).max())
    for key in model.trainable:
        expected_grad = params[key].grad.numpy()
        np.testing.assert_allclose(model.grads[key], expected_grad, rtol=1e-9,
                                   atol=1e-10 * max(np.abs(expected_grad).max(), 1e-300),
                                   err_msg=key)


@pytest.mark.parametrize("name", ALL_MODEL_NAMES)
def test_training_skips_the_gradient_of_the_image(name):
    """With ``input_gradient`` off, backward returns None and every parameter gradient
    is bit for bit what it is with dx computed (dx is the last thing backward makes, in
    the layer that reads the image: 3 input channels).  The trainer turns it off."""
    from npfcn.models import build_model

    fcn = name in MODEL_NAMES
    width = 1 / 16 if fcn or name == "segnet" else 1 / 8
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 41)).astype(np.float32)
    grads = []
    for flag in (True, False):
        model = build_model(name, num_classes=5, width=width, seed=1,
                            **({"dropout": 0.0} if fcn else {})).train()
        assert model._first_conv().params["weight"].shape[1] == 3
        model.input_gradient = flag
        assert model.input_gradient is flag
        scores = model.forward(x)
        model.zero_grad()
        dx = model.backward(np.ones_like(scores))
        assert (dx is None) == (not flag) and (dx is None or dx.shape == x.shape)
        grads.append({k: v.copy() for k, v in model.grads.items()})
    for key in grads[0]:
        np.testing.assert_array_equal(grads[0][key], grads[1][key], err_msg=key)

