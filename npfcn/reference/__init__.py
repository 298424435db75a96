"""The reference path: every op of npfcn in plain NumPy, forward beside backward.

This is the textbook and the oracle.  ``NPFCN_BACKEND=numpy`` runs exactly these
functions; the fast kernels (``npfcn.kernels``) must give the same numbers.  No
workspace, no threads, no backend switches, no argument checks (``npfcn.functional``
validates and then dispatches here or to a kernel).  Each ``*_forward`` returns
``(out, cache)`` and each ``*_backward(dy, cache)`` the gradients, with the same
names and arguments as ``npfcn.functional``.

Read them in this order:

1. ``im2col.py``      - im2col / col2im: a convolution as one matrix product, and its mirror
2. ``conv.py``        - convolution (im2col + matmul) and transposed convolution
                        (matmul + col2im), each one the other's backward pass
3. ``pooling.py``     - max pooling with indices, and max unpooling
4. ``elementwise.py`` - ReLU, dropout, the FCN crop, the skip sum
5. ``softmax.py``     - softmax cross-entropy with ignore label and class weights
6. ``batchnorm.py``   - batch normalisation (SegNet's layers)
"""
from .batchnorm import batch_norm2d_backward, batch_norm2d_forward
from .conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                   conv_transpose2d_forward, conv_transpose2d_geometry)
from .elementwise import (add_backward, add_forward, crop_backward, crop_forward,
                          dropout_backward, dropout_forward, relu_backward, relu_forward)
from .im2col import col2im, conv_output_size, im2col
from .pooling import (max_pool2d_backward, max_pool2d_forward, max_unpool2d_backward,
                      max_unpool2d_forward, max_unpool2d_output_size)
from .softmax import softmax_cross_entropy_backward, softmax_cross_entropy_forward

__all__ = [
    "im2col", "col2im", "conv_output_size",
    "conv2d_forward", "conv2d_backward",
    "conv_transpose2d_geometry", "conv_transpose2d_forward", "conv_transpose2d_backward",
    "max_pool2d_forward", "max_pool2d_backward",
    "max_unpool2d_output_size", "max_unpool2d_forward", "max_unpool2d_backward",
    "relu_forward", "relu_backward", "dropout_forward", "dropout_backward",
    "crop_forward", "crop_backward", "add_forward", "add_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "batch_norm2d_forward", "batch_norm2d_backward",
]
