"""Every model by name: the FCNs (``fcn.py``) and the encoder-decoder nets (``segnet.py``).

``build_model(**model.config)`` rebuilds any model; ``parameter_shapes`` and
``count_parameters`` answer from the architecture tables without allocating weights
(checkpoints use them to check recorded configs before building anything).
"""
import numpy as np

from . import fcn, segnet

MODEL_NAMES = fcn.MODEL_NAMES + segnet.MODEL_NAMES


def _module_for(model):
    key = str(model).lower()
    if key in segnet.MODELS:
        return segnet
    if key in fcn.ARCHITECTURES:
        return fcn
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")


def build_model(model="fcn8s", num_classes=21, width=1.0, dtype=np.float32, seed=0, **fcn_options):
    """A model by name.  ``fcn_options`` (learn_upsampling, scale_skips, dropout) only
    mean something to the FCNs; the other models have none of them and ignore them."""
    if _module_for(model) is segnet:
        return segnet.build_model(str(model).lower(), num_classes, width, dtype, seed)
    return fcn.build_model(model, num_classes=num_classes, width=width, dtype=dtype, seed=seed,
                           **fcn_options)


def parameter_shapes(model="fcn8s", num_classes=21, width=1.0):
    """``{name: shape}`` of every array in the model's ``params``."""
    return _module_for(model).parameter_shapes(str(model).lower(), num_classes, width)


def count_parameters(model="fcn8s", num_classes=21, width=1.0):
    """``(learned, fixed)`` parameter counts from the shapes alone."""
    return _module_for(model).count_parameters(str(model).lower(), num_classes, width)


def check_fits_in_memory(model, num_classes, width, dtype=np.float32):
    """Refuse a model too large for this machine's RAM before anything is allocated.

    Only the FCNs can get that large (fc6/fc7 and the C x C upsampling kernels grow
    with width and classes); the encoder-decoder nets stay far below any machine's RAM.
    """
    if _module_for(model) is fcn:
        fcn.check_fits_in_memory(str(model).lower(), num_classes, width, dtype)
