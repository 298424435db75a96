"""FCN-8s, FCN-16s and FCN-32s on a VGG16 encoder (see ``fcn.py`` for the architecture)."""
from .fcn import (FCN, FCN8s, FCN16s, FCN32s, MODEL_NAMES, build_model, count_parameters,
                  parameter_shapes, upsampling_names)
from .vgg import VGG16Encoder

__all__ = ["FCN", "FCN8s", "FCN16s", "FCN32s", "MODEL_NAMES", "build_model", "count_parameters",
           "parameter_shapes", "upsampling_names", "VGG16Encoder"]
