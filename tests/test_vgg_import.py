"""Import of torchvision-layout VGG16 weights, on small generated state dicts."""
import numpy as np
import pytest

from npfcn import functional as F
from npfcn.init import bilinear_kernel
from npfcn.models.vgg_import import PREPROCESSING, load_weights_file, vgg16_to_fcn

WIDTH = 1 / 16        # channels 4, 8, 16, 32, 32 and fc 256: the whole dict is ~1 MB
CONVS = [  # (torchvision features index, FCN name, full-width in, full-width out)
    (0, "conv1_1", 3, 64), (2, "conv1_2", 64, 64), (5, "conv2_1", 64, 128),
    (7, "conv2_2", 128, 128), (10, "conv3_1", 128, 256), (12, "conv3_2", 256, 256),
    (14, "conv3_3", 256, 256), (17, "conv4_1", 256, 512), (19, "conv4_2", 512, 512),
    (21, "conv4_3", 512, 512), (24, "conv5_1", 512, 512), (26, "conv5_2", 512, 512),
    (28, "conv5_3", 512, 512),
]


def scaled(c):
    return 3 if c == 3 else max(1, round(c * WIDTH))


def torchvision_state(seed=0, dtype=np.float32):
    """A VGG16 state dict in torchvision's layout, narrowed by WIDTH, every entry distinct."""
    rng = np.random.default_rng(seed)
    state = {}
    for index, _, cin, cout in CONVS:
        state[f"features.{index}.weight"] = rng.standard_normal(
            (scaled(cout), scaled(cin), 3, 3)).astype(dtype)
        state[f"features.{index}.bias"] = rng.standard_normal(scaled(cout)).astype(dtype)
    fc, c5 = scaled(4096), scaled(512)
    state["classifier.0.weight"] = rng.standard_normal((fc, c5 * 7 * 7)).astype(dtype)
    state["classifier.0.bias"] = rng.standard_normal(fc).astype(dtype)
    state["classifier.3.weight"] = rng.standard_normal((fc, fc)).astype(dtype)
    state["classifier.3.bias"] = rng.standard_normal(fc).astype(dtype)
    state["classifier.6.weight"] = rng.standard_normal((1000, fc)).astype(dtype)   # dropped
    state["classifier.6.bias"] = rng.standard_normal(1000).astype(dtype)
    return state


def test_every_weight_lands_in_its_named_parameter():
    state = torchvision_state()
    model = vgg16_to_fcn(state, model="fcn8s", num_classes=5, width=WIDTH)
    for index, name, _, _ in CONVS:
        np.testing.assert_array_equal(model.params[f"{name}.weight"], state[f"features.{index}.weight"])
        np.testing.assert_array_equal(model.params[f"{name}.bias"], state[f"features.{index}.bias"])
    fc6, flat = model.params["fc6.weight"], state["classifier.0.weight"]
    assert fc6.shape == (256, 32, 7, 7)
    # torchvision flattens pool5 as (channel, row, column): entry c*49 + i*7 + j.
    for o, c, i, j in [(0, 0, 0, 0), (3, 1, 2, 5), (255, 31, 6, 6), (17, 20, 0, 6)]:
        assert fc6[o, c, i, j] == flat[o, c * 49 + i * 7 + j]
    np.testing.assert_array_equal(model.params["fc6.bias"], state["classifier.0.bias"])
    assert model.params["fc7.weight"].shape == (256, 256, 1, 1)
    np.testing.assert_array_equal(model.params["fc7.weight"][:, :, 0, 0], state["classifier.3.weight"])
    np.testing.assert_array_equal(model.params["fc7.bias"], state["classifier.3.bias"])
    # The classifier's 1000 ImageNet scores are not used; the FCN's own heads start as usual.
    assert not model.params["score_fr.weight"].any() and not model.params["score_pool3.bias"].any()
    np.testing.assert_array_equal(model.params["upscore8.weight"], bilinear_kernel(5, 16))
    assert model.num_classes == 5 and PREPROCESSING == "torchvision"


def test_fc6_as_a_convolution_computes_the_linear_layer():
    # The point of the reshape: on a 7x7 pool5 map, conv fc6 == torchvision's Linear.
    state = torchvision_state(dtype=np.float64)
    model = vgg16_to_fcn(state, model="fcn32s", num_classes=2, width=WIDTH, dtype=np.float64)
    pool5 = np.random.default_rng(1).standard_normal((1, 32, 7, 7))
    conv, _ = F.conv2d_forward(pool5, model.params["fc6.weight"], model.params["fc6.bias"])
    linear = state["classifier.0.weight"] @ pool5.reshape(-1) + state["classifier.0.bias"]
    np.testing.assert_allclose(conv.reshape(-1), linear, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["fcn8s", "fcn16s", "fcn32s"])
def test_imported_model_runs_and_takes_its_options(name):
    model = vgg16_to_fcn(torchvision_state(), model=name, num_classes=3, width=WIDTH,
                         scale_skips=True, seed=1)
    assert model.config["model"] == name and model.config["scale_skips"]
    assert model.forward(np.zeros((1, 3, 9, 9), np.float32)).shape == (1, 3, 9, 9)


def test_conv_shaped_fc_weights_and_dataparallel_prefix_are_accepted():
    state = torchvision_state()
    expected = state["classifier.0.weight"].reshape(256, 32, 7, 7).copy()
    state["classifier.0.weight"] = expected
    state = {f"module.{k}": v for k, v in state.items()}
    model = vgg16_to_fcn(state, num_classes=2, width=WIDTH)
    np.testing.assert_array_equal(model.params["fc6.weight"], expected)


@pytest.mark.parametrize("key, value, message", [
    ("features.7.weight", np.zeros((8, 4, 3, 3), np.float32), r"features\.7\.weight has shape"),
    ("features.0.bias", np.zeros(5, np.float32), r"features\.0\.bias has shape"),
    ("classifier.0.weight", np.zeros((256, 32 * 7 * 6), np.float32), r"classifier\.0\.weight"),
    ("classifier.3.weight", np.zeros((256, 255), np.float32), r"classifier\.3\.weight"),
    ("features.2.weight", np.zeros((4, 4, 3, 3), np.int64), r"features\.2\.weight.*floating"),
    ("features.28.bias", np.full(32, np.nan, np.float32), r"features\.28\.bias.*NaN"),
])
def test_mismatches_raise_naming_the_key(key, value, message):
    state = torchvision_state()
    state[key] = value
    with pytest.raises(ValueError, match=message):
        vgg16_to_fcn(state, num_classes=2, width=WIDTH)


def test_missing_key_and_wrong_width_are_named():
    state = torchvision_state()
    del state["features.24.weight"]
    with pytest.raises(ValueError, match=r"features\.24\.weight.*conv5_1"):
        vgg16_to_fcn(state, width=WIDTH)
    with pytest.raises(ValueError, match=r"features\.0\.weight has shape \(4, 3, 3, 3\)"):
        vgg16_to_fcn(torchvision_state(), width=1.0)     # full width expects 64 channels


def test_npz_file_round_trip(tmp_path):
    state = torchvision_state()
    path = tmp_path / "vgg16.npz"
    np.savez(path, **state)
    loaded = load_weights_file(path)
    assert set(loaded) == set(state)
    for k in state:
        np.testing.assert_array_equal(loaded[k], state[k])
    model = vgg16_to_fcn(loaded, num_classes=2, width=WIDTH)
    np.testing.assert_array_equal(model.params["conv4_2.weight"], state["features.19.weight"])


def test_pth_file(tmp_path, torch):
    state = torchvision_state()
    path = tmp_path / "vgg16.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    loaded = load_weights_file(str(path))
    for k in state:
        np.testing.assert_array_equal(loaded[k], state[k])
    model = vgg16_to_fcn(loaded, num_classes=2, width=WIDTH)
    np.testing.assert_array_equal(model.params["conv1_1.bias"], state["features.0.bias"])


def test_torchvision_model_state_dict_imports(torch):
    # The real layout: a torchvision-style nn.Sequential narrowed by WIDTH.
    nn = torch.nn
    layers, cin = [], 3
    for block in ([64] * 2, [128] * 2, [256] * 3, [512] * 3, [512] * 3):
        for c in block:
            layers += [nn.Conv2d(cin, scaled(c), 3, padding=1), nn.ReLU(inplace=True)]
            cin = scaled(c)
        layers.append(nn.MaxPool2d(2, 2))
    vgg = nn.Module()
    vgg.features = nn.Sequential(*layers)
    vgg.classifier = nn.Sequential(nn.Linear(cin * 49, scaled(4096)), nn.ReLU(True), nn.Dropout(),
                                   nn.Linear(scaled(4096), scaled(4096)), nn.ReLU(True),
                                   nn.Dropout(), nn.Linear(scaled(4096), 1000))
    state = {k: v.detach().numpy() for k, v in vgg.state_dict().items()}
    model = vgg16_to_fcn(state, num_classes=2, width=WIDTH)
    np.testing.assert_array_equal(model.params["conv5_3.weight"],
                                  vgg.features[28].weight.detach().numpy())
    np.testing.assert_array_equal(model.params["fc7.weight"][:, :, 0, 0],
                                  vgg.classifier[3].weight.detach().numpy())


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_weights_file(tmp_path / "missing.npz")
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"weights\.h5.*unsupported"):
        load_weights_file(bad)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"broken\.npz"):
        load_weights_file(broken)
