"""npfcn: fully convolutional networks for semantic segmentation in NumPy.

Layers with hand-written forward and backward passes (``npfcn.layers``,
``npfcn.functional``), a C kernel for im2col/col2im, Winograd and sub-pixel
transforms and max pooling (``csrc/``, loaded by ``npfcn.kernels.backend``), FCN-8s/16s/32s (``npfcn.models``),
metrics, data, training and a command line (``npfcn``).
"""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenBLAS (NumPy's matrix product) keeps an idle thread spinning for ~0.1 s after
# every product, which takes a core from npfcn's OpenMP kernels that run next
# (measured: a 0.2 ms im2col took 5 ms right after a matmul).  OpenBLAS reads this
# setting when NumPy loads it, so it only helps when npfcn is imported first (the
# `npfcn` command is); a value the user set wins.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def check(path_or_module, examples=None, verbose=True):
    """Grade a student's own layer functions against npfcn's reference (``npfcn check FILE``
    from Python, e.g. in a notebook); returns a report whose ``passed`` says it all.
    See ``npfcn.teach.check``."""
    from .teach.check import check as _check

    return _check(path_or_module, examples=examples, verbose=verbose)
