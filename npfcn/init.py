"""Weight initialisation: bilinear upsampling kernels, He (Kaiming) normal and orthonormal
weights, and LSUV (layer-sequential unit variance) rescaling of a model on data."""
import math

import numpy as np

from ._checks import FLOAT_DTYPES


def upsample_filt(kernel_size):
    """The 2-D bilinear interpolation filter of Caffe's FCN ``upsample_filt``: (k, k) float64.

    For a kernel of size k the centre is ``(k - 1) / 2`` and the scale factor
    ``f = ceil(k / 2)``; each tap weighs ``(1 - |i - centre| / f)`` per axis.
    Used as a transposed convolution with stride f, it interpolates bilinearly.
    """
    k = int(kernel_size)
    if k < 1:
        raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
    factor = (k + 1) // 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    taps = 1.0 - np.abs(np.arange(k) - centre) / factor
    return np.outer(taps, taps)


def bilinear_kernel(channels, kernel_size, dtype=np.float32):
    """A transposed-convolution weight (C, C, k, k) that upsamples every channel bilinearly.

    The filter sits on the channel diagonal (channel c maps only onto channel c),
    all other entries are zero - as the reference FCN's ``interp`` surgery does.
    """
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    weight = np.zeros((channels, channels, kernel_size, kernel_size), dtype=dtype)
    diagonal = np.arange(channels)
    weight[diagonal, diagonal] = upsample_filt(kernel_size)
    return weight


def he_normal(shape, rng, dtype=np.float32):
    """He (Kaiming) normal weights for a ReLU network: N(0, 2 / fan_in), fan_in = C*KH*KW.

    shape: (out, in, KH, KW).  Keeps the activations' variance roughly constant
    through a deep stack of ReLU convolutions (He et al., 2015), which is what
    lets the 15-layer VGG/fc stack train from scratch without batch norm.
    """
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    fan_in = int(np.prod(shape[1:]))
    weights = rng.standard_normal(shape, dtype=dtype)     # drawn directly in the target dtype
    weights *= dtype.type(math.sqrt(2.0 / fan_in))
    return weights


def orthogonal(shape, rng, dtype=np.float32):
    """Orthonormal convolution weights (Saxe et al., 2014), the start that LSUV
    (Mishkin & Matas, 2016) rescales: shape (out, in, KH, KW), read as an
    (out, fan_in) matrix with fan_in = in*KH*KW, gets orthonormal rows when
    out <= fan_in and orthonormal columns otherwise.

    Why not just He normal: a narrow layer draws few filters (conv1_1 of the default
    network has 4, each 27 numbers), and independent Gaussian draws can come out
    nearly parallel, so the layer passes on less of its input than it could.
    Orthonormal filters never overlap.  The matrix is the Q of a Gaussian matrix's
    QR factorisation with the signs of R's diagonal moved into Q, which makes it
    uniformly (Haar) distributed instead of biased by the factorisation's sign choice.
    """
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if len(shape) < 2 or any(int(s) < 1 for s in shape):
        raise ValueError(f"shape must be (out, in, ...) with positive sizes, got {shape!r}")
    out, fan_in = int(shape[0]), int(np.prod(shape[1:]))
    tall = rng.standard_normal((max(out, fan_in), min(out, fan_in)))   # float64: QR accuracy
    q, r = np.linalg.qr(tall)             # q: orthonormal columns
    q *= np.sign(np.diag(r))
    matrix = q if out >= fan_in else q.T   # (out, fan_in)
    return matrix.reshape(shape).astype(dtype)


def orthogonal_init(model, seed):
    """Redraw every encoder convolution's weights orthonormal (``orthogonal``), the first
    step of LSUV as Mishkin & Matas define it; ``lsuv_init`` then rescales them.  Only
    the directions matter: with zero biases a ReLU layer's output scales with its
    weights, so LSUV's rescaling undoes any scale drawn here.

    model: an FCN (its ``encoder.convs``).  The draws come from their own stream of the
    seed ([seed, 99]; the training data use [seed, 1]) so that they do not shift any
    other random sequence of the run.
    """
    rng = np.random.default_rng([int(seed), 99])
    for conv in model.encoder.convs.values():
        weight = conv.params["weight"]
        weight[...] = orthogonal(weight.shape, rng, weight.dtype)


def lsuv_init(model, x):
    """Data-dependent rescaling of the encoder's freshly drawn convolutions, He normal or
    orthonormal (LSUV, Mishkin & Matas 2016): in forward order, divide each
    convolution's weights by the standard deviation of its output on the batch
    ``x`` (N, 3, H, W), so every layer starts with unit-variance outputs on real images.
    A deep plain ReLU stack without batch normalisation then starts learning far sooner.
    Runs in eval mode (no dropout masks drawn, so the model's random stream is untouched).
    """
    from .layers import Conv2d

    was_training = model.training
    model.eval()
    h = x
    for _, module in model.encoder.steps:
        if isinstance(module, Conv2d):
            y = module.forward(h)
            std = float(y.std())
            if std > 0 and np.isfinite(std):
                module.params["weight"] /= module.params["weight"].dtype.type(std)
            y = module.forward(h)
        else:
            y = module.forward(h)
        module._cache = None        # no backward follows: drop what forward kept for it
        h = y
    model.train(was_training)
