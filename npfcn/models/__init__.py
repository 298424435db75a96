"""FCN-8s, FCN-16s and FCN-32s on a VGG16 encoder (see ``fcn.py`` for the architecture);
SegNet, SegNet-Basic, FCN-Basic and the other encoder-decoder nets (``segnet.py``);
``registry.py`` builds any of them by name."""
from .fcn import FCN, FCN8s, FCN16s, FCN32s, upsampling_names
from .registry import MODEL_NAMES, build_model, count_parameters, parameter_shapes
from .segnet import BilinearBasic, FCNBasic, PlainNet, SegNet, SegNetBasic
from .vgg import VGG16Encoder

__all__ = ["FCN", "FCN8s", "FCN16s", "FCN32s", "MODEL_NAMES", "build_model", "count_parameters",
           "parameter_shapes", "upsampling_names", "VGG16Encoder", "SegNet", "SegNetBasic",
           "FCNBasic", "BilinearBasic", "PlainNet"]
