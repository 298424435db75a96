"""im2col and col2im: a convolution turned into one matrix product, and back.

im2col copies every receptive field of the image into a column::

    x    : (N, C, H, W)
    cols : (N, C*KH*KW, OH*OW)
    cols[n, (c*KH + i)*KW + j, oy*OW + ox] = x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]

and is zero where that position falls into the padding.  A convolution is then
``w.reshape(O, C*KH*KW) @ cols``.

col2im is its mirror image (as in Caffe): the same loops, but each column entry
is *added* back onto the pixel it was read from.  That makes col2im the adjoint
(transpose) of im2col, ``<im2col(x), c> == <x, col2im(c)>``, which is why it is
both the backward pass of a convolution and the forward pass of a transposed
convolution.

The grid size ``out_size = (OH, OW)`` may be given instead of derived: the
transposed convolution needs a grid of exactly its input's size on an image of
its output's size (``output_padding`` and TensorFlow's "same" padding make the
image larger than the grid alone would need).  ``padding`` is the top/left
padding; the bottom/right padding is whatever the grid needs.

These functions do not validate their arguments (``npfcn.functional`` does).
"""
import numpy as np


def pair(value):
    """An int or a pair of ints as a tuple ``(h, w)``."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def conv_output_size(in_size, kernel_size, stride=1, padding=0, dilation=1, ceil_mode=False):
    """PyTorch's output size of a convolution or pooling window, per axis: ``(OH, OW)``.

    ``OH = floor((H + 2*PH - DH*(KH-1) - 1) / SH) + 1``; with ``ceil_mode`` ceil
    instead of floor, but a last window that would start in the bottom/right padding
    is dropped (as PyTorch does).  ValueError when the dilated kernel is larger than
    the padded input.
    """
    sizes = []
    for n, k, s, p, d, axis in zip(in_size, pair(kernel_size), pair(stride), pair(padding),
                                   pair(dilation), ("height", "width")):
        span = d * (k - 1) + 1                       # extent of one dilated window
        if n + 2 * p < span:
            raise ValueError(f"kernel (extent {span} with dilation {d}) is larger than the "
                             f"padded input {axis} {n} + 2*{p}")
        if ceil_mode:
            out = -(-(n + 2 * p - span) // s) + 1
            if (out - 1) * s >= n + p:               # the last window starts in the padding
                out -= 1
        else:
            out = (n + 2 * p - span) // s + 1
        sizes.append(out)
    return tuple(sizes)


def _padded_size(n, k, s, p, d, o):
    """Length of an axis padded by ``p`` in front and as much as ``o`` windows need behind."""
    return p + max(n, (o - 1) * s + (k - 1) * d + 1 - p)


def im2col(x, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """x: (N, C, H, W) -> cols: (N, C*KH*KW, OH*OW), one column per output pixel.

    ``out_size`` (OH, OW) defaults to the convolution's output size.
    """
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(kernel_size), pair(stride), pair(padding),
                                              pair(dilation))
    oh, ow = out_size or conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    padded = np.zeros((N, C, _padded_size(H, kh, sh, ph, dh, oh),
                       _padded_size(W, kw, sw, pw, dw, ow)), dtype=x.dtype)
    padded[:, :, ph:ph + H, pw:pw + W] = x
    cols = np.empty((N, C, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # Tap (i, j) of every window: a strided slice of the padded image.
            top, left = i * dh, j * dw
            cols[:, :, i, j] = padded[:, :, top:top + (oh - 1) * sh + 1:sh,
                                      left:left + (ow - 1) * sw + 1:sw]
    return cols.reshape(N, C * kh * kw, oh * ow)


def col2im(cols, image_shape, kernel_size, stride=1, padding=0, dilation=1, out_size=None):
    """cols: (N, C*KH*KW, OH*OW) -> x: (N, C, H, W) = image_shape, summing where windows overlap.

    The mirror of ``im2col``: the same slices, written with ``+=`` instead of read.
    """
    N, C, H, W = image_shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(kernel_size), pair(stride), pair(padding),
                                              pair(dilation))
    oh, ow = out_size or conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw), (dh, dw))
    padded = np.zeros((N, C, _padded_size(H, kh, sh, ph, dh, oh),
                       _padded_size(W, kw, sw, pw, dw, ow)), dtype=cols.dtype)
    cols = cols.reshape(N, C, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            padded[:, :, top:top + (oh - 1) * sh + 1:sh,
                   left:left + (ow - 1) * sw + 1:sw] += cols[:, :, i, j]
    # What landed in the padding belongs to no pixel: drop it.
    return np.ascontiguousarray(padded[:, :, ph:ph + H, pw:pw + W])
