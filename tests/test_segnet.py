"""SegNet, SegNetBasic, FCNBasic, BilinearBasic, PlainNet: shapes for any input size,
parameter counts worked out by hand, gradients (float64), checkpoints with BN statistics."""
import numpy as np
import pytest

from npfcn.checkpoint import load_checkpoint, load_model, save_checkpoint
from npfcn.gradcheck import gradcheck
from npfcn.models import MODEL_NAMES, build_model, count_parameters, parameter_shapes

NEW_MODELS = ("segnet", "segnet-basic", "fcn-basic", "bilinear-basic", "plain")


def test_registered():
    assert set(NEW_MODELS) <= set(MODEL_NAMES)


@pytest.mark.parametrize("model", NEW_MODELS)
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (33, 18), (32, 32)])
def test_scores_have_the_input_size(model, size):
    width = 1 / 16 if model in ("segnet", "plain") else 0.125
    net = build_model(model, num_classes=3, width=width)
    # batch 2: in training mode every BN needs more than one value per channel (1x1 input)
    x = np.random.default_rng(0).standard_normal((2, 3, *size)).astype(np.float32)
    y = net.forward(x)
    assert y.shape == (2, 3, *size)
    assert net.backward(np.ones_like(y)).shape == x.shape
    assert net.eval().forward(x[:1]).shape == (1, 3, *size)


def test_parameter_counts_by_hand():
    # SegNet-Basic, 11 classes: conv1 3*64*49, conv2..4 and 4 decoders 64*64*49 each (no
    # biases), 8 BN layers of 64 weights + 64 biases, a 1x1 classifier 64*11 + 11.
    basic = 3 * 64 * 49 + 7 * 64 * 64 * 49 + 8 * 128 + 64 * 11 + 11
    assert basic == 1_416_075            # the paper's Table 1 says 1.425 M
    assert count_parameters("segnet-basic", 11) == (basic, 0)
    assert build_model("segnet-basic", 11).num_parameters() == basic
    # FCN-Basic: the same encoder (4 convs + 4 BN), 4 1x1 reductions to 11, 4 x2 kernels 11x11x4x4.
    encoder = 3 * 64 * 49 + 3 * 64 * 64 * 49 + 4 * 128
    up = 4 * 11 * 11 * 16
    assert count_parameters("fcn-basic", 11) == (encoder + 4 * (64 * 11 + 11) + up, 0)
    assert count_parameters("bilinear-basic", 11) == (encoder + 4 * (64 * 11 + 11), up)
    # SegNet: VGG16's 13 convs (14.71 M with biases) + 13 BN, a decoder mirroring them.
    learned, _ = count_parameters("segnet", 11)
    assert 29.3e6 < learned < 29.6e6     # the paper: 29.5 M
    # plain: 10 3x3 convs of 128 (no bias) + 10 BN + 1x1 classifier.
    assert count_parameters("plain", 11) == (3 * 128 * 9 + 9 * 128 * 128 * 9 + 10 * 256 + 128 * 11 + 11, 0)


def test_shapes_without_allocating_agree_with_the_model():
    for model in NEW_MODELS:
        net = build_model(model, num_classes=4, width=0.125)
        assert {k: v.shape for k, v in net.params.items()} == parameter_shapes(model, 4, 0.125)


def test_segnet_encoder_has_vgg16_names():
    net = build_model("segnet", num_classes=4, width=1 / 16)
    assert list(net.encoder.convs)[:3] == ["conv1_1", "conv1_2", "conv2_1"]
    assert "conv5_3.bias" in net.params and "conv5_3_D.weight" in net.params


@pytest.mark.parametrize("model,params", [("segnet-basic", True), ("fcn-basic", False)])
def test_gradcheck_tiny_net(model, params):
    # float64: rel. error < 1e-6 (npfcn.gradcheck's scale; measured ~4e-8).  Width 1/32: 2
    # channels; a 12x12 input leaves 4 values per channel at the deepest BN (with 1 or 2 BN
    # maps x to +-1 whatever x is, and the check measures noise).  FCN-Basic: the input's
    # gradient only (it passes every layer), to keep the test at a few seconds.
    net = build_model(model, num_classes=2, width=1 / 32, dtype=np.float64, seed=3)
    x = np.random.default_rng(5).standard_normal((1, 3, 12, 12))
    gradcheck(net, (x,), params=params).assert_ok(1e-6)


def test_bilinear_basic_does_not_train_its_upsampling():
    net = build_model("bilinear-basic", num_classes=3, width=0.125)
    assert "upscore1.weight" in net.params and "upscore1.weight" not in net.trainable
    assert "bn1.running_mean" not in net.trainable


def test_checkpoint_round_trip_keeps_bn_statistics(tmp_path):
    net = build_model("segnet-basic", num_classes=3, width=0.125, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    for _ in range(3):       # training steps move the running statistics away from 0 / 1
        net.forward(x)
    assert not np.allclose(net.params["bn1.running_mean"], 0)
    path = save_checkpoint(tmp_path / "c.npz", net)
    assert "bn_decode1.running_var" in load_checkpoint(path).model_state
    again = load_model(path)
    assert type(again) is type(net)
    for name, value in net.params.items():
        np.testing.assert_array_equal(again.params[name], value)
    np.testing.assert_array_equal(again.eval().forward(x), net.eval().forward(x))


def test_eval_uses_running_statistics():
    net = build_model("segnet-basic", num_classes=3, width=0.125)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    train_scores = net.forward(x)
    eval_scores = net.eval().forward(x)
    assert not np.allclose(train_scores, eval_scores)    # running stats (after 1 step) differ


def test_vgg16_weights_fill_the_segnet_encoder():
    from npfcn.models.segnet import vgg16_to_segnet
    from npfcn.models.vgg import encoder_conv_specs
    from npfcn.models.vgg_import import TORCHVISION_TO_FCN

    width = 1 / 16
    specs = {name: (cin, cout, k) for name, cin, cout, k, _ in encoder_conv_specs(width)}
    rng = np.random.default_rng(0)
    state = {}
    for source, target in TORCHVISION_TO_FCN.items():
        cin, cout, k = specs[target]
        state[f"{source}.weight"] = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
        state[f"{source}.bias"] = rng.standard_normal(cout).astype(np.float32)
    net = vgg16_to_segnet(state, num_classes=4, width=width)
    np.testing.assert_array_equal(net.params["conv1_1.weight"], state["features.0.weight"])
    np.testing.assert_array_equal(net.params["conv5_3.bias"], state["features.28.bias"])
    del state["features.28.bias"]
    with pytest.raises(ValueError, match="features.28.bias"):
        vgg16_to_segnet(state, num_classes=4, width=width)
