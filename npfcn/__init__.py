"""npfcn: fully convolutional networks for semantic segmentation in NumPy.

Layers with hand-written forward and backward passes (``npfcn.layers``,
``npfcn.functional``), a C kernel for im2col/col2im and max pooling
(``csrc/``, loaded by ``npfcn.backend``), FCN-8s/16s/32s (``npfcn.models``),
metrics, data, training and a command line (``npfcn``).
"""
__version__ = "0.1.0"
