"""The one place that chooses how an op is computed, and every threshold of that choice.

``NPFCN_BACKEND=numpy`` (``backend.active() == "numpy"``): every op is the
textbook function of ``npfcn.reference``, path ``"reference"``.

On the C backend:

=================  ==========================================================  =====================
op                 path: when                                                  core
=================  ==========================================================  =====================
conv2d             ``pointwise``: 1x1, stride 1, no padding (fc7, scores)      ``gemm.pointwise_conv``
                   ``direct``: stride 1, no dilation, kernel <= 5x5, at        ``direct.direct_conv``
                   most 64 channels in and out (the narrow FCNs); of the 3x3
                   layers Winograd could take, those of at most 512 channel
                   pairs, and those of at most 32 channels with fewer than
                   40000 4x4 tiles x channels
                   ``direct_large``: the same with kernels > 5x5               ``direct.direct_conv``
                   (SegNet-Basic's 7x7 layers); also, before Winograd,
                   every layer ``channel.applies`` to (float32 64 -> 64
                   3x3), which direct.py hands to ``channel.py``
                   ``winograd4``: 3x3, stride 1, no dilation, up to 128 in     ``winograd.f4_conv``
                   and 256 out, and >= 196 4x4 output tiles
                   ``winograd2``: other 3x3 stride-1 layers with 2*in >= out   ``winograd.f2_conv``
                   and >= 64 2x2 output tiles
                   ``bands``: everything else (im2col in bands + matmul)       ``gemm.banded_conv``
conv_transpose2d   ``subpixel``: kernel a multiple of the stride, no           ``subpixel.subpixel_transposed_conv``
                   dilation (FCN's upsampling)
                   ``bands``: everything else (matmul + col2im in bands)       ``gemm.banded_transposed_conv``
max pool, unpool,  ``c``                                                       ``pooling``, ``relu``,
relu, im2col                                                                   ``bands``
cross-entropy      ``c``: float32                                              ``softmax``
=================  ==========================================================  =====================

``npfcn.functional`` records the chosen path in the op's cache, and its backward
pass takes the same path from there: nothing is decided twice.

Where the thresholds come from (fwd+bwd on 2 threads, each path timed alone, Zen 4;
docs/kernels.md).  With its flat layout (csrc/direct.c) the direct loop beats Winograd
on 3x3 layers of up to 64 channels until Winograd's products get big: 32 -> 32 at 2 x
21x21 0.52 ms against 0.81 (F2), at 2 x 41x41 1.28 against 1.67 (F4), at 2 x 82x82
4.3-4.7 against 4.8-6.9; but F(4x4) wins 32 -> 32 at 2 x 163x163 (16.3 against 20.2
ms), and 64 -> 64 layers: at 4 x 32x32 a draw or F(4x4) (6.3/7.1 against 6.5/5.7 ms in
two runs, quiet), at 2 x 82x82 12.3 against 16.3, at 224x224 41 against 61.  So 3x3
layers of up to 32 channels stay direct below WINOGRAD_OVER_DIRECT 4x4 tiles x channels
(882 x 32 = 28k: direct; 3362 x 32 = 108k: Winograd), wider ones go to Winograd
wherever it applies; and layers of at most 512 channel pairs stay direct at any size
(the default run's 4 -> 4 at 2 x 326x326 has 13,448 tiles, but Winograd's products with
4 channels are all transform and no arithmetic: the default training step took 65-95 ms
instead of 40-50 when it went there).  Winograd loses to im2col
when the input has far fewer channels than the output (VGG's 3 -> 64: the
transformed output, 16 x O per tile, dwarfs a product whose inner dimension is C)
and on fewer than 64 tiles (512 -> 512 at 14x14: the 16 products are too thin for
BLAS and the weight transform is not paid back).  F(4x4) does 0.56x F(2x2)'s
multiplications but in products with a quarter of the columns and 2.25x larger
transformed weights: faster for the 64-128 channel layers at 56x56 and above,
slower for 256 channels and more.

SegNet-Basic's 7x7 layers (64 -> 64, batch 4): the direct loop's forward pass ran
137-217 GFLOP/s against 110-141 for im2col + matmul from 23x30 to 180x240 (Zen 4, 2
threads, under load; docs/kernels.md), and with vectors along the 64 output channels
(``channel.py``, AVX-512) 180-207 at every size, forward, dx and dw alike.  Other large
kernels have direct.c's weight gradient where it has a register-blocked loop (7 wide,
AVX-512: the first layer, 3 -> 64), else im2col + matmul.
"""
import numpy as np

from . import backend, channel, direct, gemm, subpixel, winograd

DIRECT_MAX_CHANNELS = 64       # in and out
DIRECT_MAX_KERNEL = 5          # larger kernels: direct_large
DIRECT_MAX_WINOGRAD_CHANNELS = 32   # a 3x3 layer Winograd can take stays direct up to here
WINOGRAD_OVER_DIRECT = 40000   # ... and below this many 4x4 tiles in the batch x channels
DIRECT_ALWAYS_CHANNEL_PAIRS = 512   # in x out: at most this, direct at any size
WINOGRAD_MIN_TILES = 64        # 2x2 output tiles in the batch
F4_MAX_IN_CHANNELS, F4_MAX_OUT_CHANNELS = 128, 256
F4_MIN_TILES = 196             # 4x4 output tiles in the batch

# path -> (forward core, backward core); the signatures are given in npfcn.kernels.gemm.
CONV2D = {
    "pointwise": (gemm.pointwise_conv, gemm.pointwise_conv_grads),
    "direct": (direct.direct_conv, direct.direct_conv_grads),
    "direct_large": (direct.direct_conv, direct.large_kernel_grads),
    "winograd4": (winograd.f4_conv, winograd.f4_conv_grads),
    "winograd2": (winograd.f2_conv, winograd.f2_conv_grads),
    "bands": (gemm.banded_conv, gemm.banded_conv_grads),
}
CONV_TRANSPOSE2D = {
    "subpixel": (subpixel.subpixel_transposed_conv, subpixel.subpixel_transposed_conv_grads),
    "bands": (gemm.banded_transposed_conv, gemm.banded_transposed_conv_grads),
}


def _tiles(N, OH, OW, m):
    """Output tiles of m x m in a batch of N outputs of OH x OW."""
    return N * -(-OH // m) * -(-OW // m)


def conv2d_path(x_shape, w_shape, g, dtype=np.float32):
    """The path of a convolution of x: (N, C, H, W) with w: (O, C, KH, KW), geometry g
    ``(KH, KW, SH, SW, PH, PW, DH, DW, OH, OW)``, in ``dtype``."""
    if backend.active() != "c":
        return "reference"
    N, C, H, W = x_shape
    O = w_shape[0]
    KH, KW, SH, SW, PH, PW, DH, DW, OH, OW = g
    if (KH, KW, SH, SW, PH, PW) == (1, 1, 1, 1, 0, 0) and (OH, OW) == (H, W):
        return "pointwise"
    if (SH, SW, DH, DW) != (1, 1, 1, 1):
        return "bands"
    winograd = (KH, KW) == (3, 3) and 2 * C >= O and _tiles(N, OH, OW, 2) >= WINOGRAD_MIN_TILES
    if max(C, O) <= DIRECT_MAX_CHANNELS:
        if max(KH, KW) > DIRECT_MAX_KERNEL:
            return "direct_large"
        if not winograd or channel.applies(dtype, C, O, KH, KW) \
                or C * O <= DIRECT_ALWAYS_CHANNEL_PAIRS \
                or (max(C, O) <= DIRECT_MAX_WINOGRAD_CHANNELS
                    and _tiles(N, OH, OW, 4) * max(C, O) < WINOGRAD_OVER_DIRECT):
            return "direct"
    if winograd:
        if C <= F4_MAX_IN_CHANNELS and O <= F4_MAX_OUT_CHANNELS \
                and _tiles(N, OH, OW, 4) >= F4_MIN_TILES:
            return "winograd4"
        return "winograd2"
    return "bands"


def conv_transpose2d_path(w_shape, stride, dilation):
    """The path of a transposed convolution with w: (C, O, KH, KW)."""
    if backend.active() != "c":
        return "reference"
    KH, KW = w_shape[2:]
    if tuple(dilation) == (1, 1) and KH % stride[0] == 0 and KW % stride[1] == 0:
        return "subpixel"
    return "bands"


def cross_entropy_path(dtype):
    """The softmax cross-entropy's path: ``"c"`` (csrc/softmax.c) for float32 scores on
    the C backend - fwd+bwd at 21 x 224 x 224 1.1-1.2 ms against the reference's 3.0-3.4
    (Zen 4, 2 threads) - else ``"reference"`` (float64: the gradient checks' dtype)."""
    return "c" if backend.active() == "c" and np.dtype(dtype) == np.float32 else "reference"


def simple_path():
    """The path of the ops with one C kernel each (max pooling, max unpooling, ReLU,
    whole-grid im2col / col2im): ``"c"`` or ``"reference"``."""
    return "c" if backend.active() == "c" else "reference"
