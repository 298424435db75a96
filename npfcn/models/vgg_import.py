"""Import torchvision-layout VGG16 weights into an FCN (the reference's "net surgery").

torchvision's ``vgg16`` state dict names its 13 convolutions ``features.N.weight/bias``
(N = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28: the ReLUs and pools sit in
between) and its fully connected layers ``classifier.0`` (4096, 512*7*7) and
``classifier.3`` (4096, 4096).  A fully connected layer over a 7x7x512 map is a
7x7 convolution, so fc6 is classifier.0 reshaped to (4096, 512, 7, 7) - the
flattening order of torchvision (channel, row, column) is exactly the
convolution weight's - and fc7 is classifier.3 as a 1x1 convolution.  The
1000-way ``classifier.6`` is dropped; the score layers stay at zero.

Those weights expect torchvision's input preprocessing (RGB in [0, 1], ImageNet
mean and std), named ``PREPROCESSING`` here so a checkpoint can record it.
"""
import os
import zipfile

import numpy as np

from .fcn import build_model
from .vgg import encoder_conv_specs

PREPROCESSING = "torchvision"

# The index of each convolution in torchvision's ``vgg16().features``.
FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
              "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")
TORCHVISION_TO_FCN = {**{f"features.{i}": name for i, name in zip(FEATURE_INDICES, CONV_NAMES)},
                      "classifier.0": "fc6", "classifier.3": "fc7"}


def load_weights_file(path):
    """``{name: ndarray}`` from a ``.npz`` file, or a ``.pth`` state dict when torch is installed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such weights file")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        from ..checkpoint import check_npz_sizes
        try:
            check_npz_sizes(path)          # no 8 TB allocation from a corrupted array header
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a readable .npz archive ({error})") from None
    if extension in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise ValueError(f"{path}: reading .pth files needs PyTorch, which is not installed; "
                             "convert the weights to .npz (numpy.savez) instead") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for corrupt files
            raise ValueError(f"{path}: not a readable PyTorch state dict ({error})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
        return {str(k): v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}
    raise ValueError(f"{path}: unsupported weights format {extension!r} (use .npz or .pth)")


def vgg16_to_fcn(state_dict, model="fcn8s", num_classes=21, dtype=np.float32, width=1.0,
                 **model_kwargs):
    """An FCN whose encoder holds the given VGG16 weights (torchvision layout).

    ``width`` lets a narrower VGG16 of the same layout be imported (the tests
    use one).  Every needed key must be present with the expected shape
    (ValueError naming the key otherwise); other keys (classifier.6) are ignored.
    """
    state = {_strip_prefix(str(k)): v for k, v in state_dict.items()}
    specs = {name: (cin, cout, k) for name, cin, cout, k, _ in encoder_conv_specs(width)}
    converted = {}
    for source, target in TORCHVISION_TO_FCN.items():
        cin, cout, k = specs[target]
        for kind, shape in (("weight", (cout, cin, k, k)), ("bias", (cout,))):
            key = f"{source}.{kind}"
            if key not in state:
                raise ValueError(f"VGG16 weights have no {key!r} (needed for {target}.{kind})")
            value = np.asarray(state[key])
            if value.dtype.kind != "f":
                raise ValueError(f"{key}: expected floating-point weights, got dtype {value.dtype}")
            # A fully connected weight comes flat, (out, in*k*k); a conv-shaped one is fine too.
            accepted = [shape]
            if kind == "weight" and target in ("fc6", "fc7"):
                accepted.append((cout, cin * k * k))
            if value.shape not in accepted:
                raise ValueError(f"{key} has shape {value.shape}, expected "
                                 + " or ".join(map(str, accepted)))
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{key} contains NaN or infinite values")
            converted[f"{target}.{kind}"] = value.reshape(shape)
    net = build_model(model, num_classes=num_classes, width=width, dtype=dtype, **model_kwargs)
    for name, value in converted.items():
        net.params[name][...] = value
    return net


def _strip_prefix(key):
    """``module.features.0.weight`` (DataParallel) -> ``features.0.weight``."""
    return key[len("module."):] if key.startswith("module.") else key
