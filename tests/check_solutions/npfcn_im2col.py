"""A correct solution under npfcn's own names and signatures: convolution by im2col and a
matrix product, transposed convolution by a matrix product and a scatter, pooling with
flat indices per (n, c) plane.  Its max_pool2d_forward has no dilation/ceil_mode
arguments, so the grader draws only the geometry the signature takes."""
import numpy as np


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _im2col(x, k, s, p, d, out):
    """x: (N, C, H, W) -> (N, C*kh*kw, oh*ow)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = k, s, p, d, out
    N, C = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((N, C, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh,
                                  j * dw:j * dw + (ow - 1) * sw + 1:sw]
    return cols.reshape(N, C * kh * kw, oh * ow)


def _col2im(cols, shape, k, s, p, d, out):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = k, s, p, d, out
    N, C, H, W = shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    cols = cols.reshape(N, C, kh, kw, oh, ow)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh,
               j * dw:j * dw + (ow - 1) * sw + 1:sw] += cols[:, :, i, j]
    return xp[:, :, ph:ph + H, pw:pw + W]


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    k, s, p, d = w.shape[2:], _pair(stride), _pair(padding), _pair(dilation)
    N, C, H, W = x.shape
    out = tuple((n + 2 * pp - dd * (kk - 1) - 1) // ss + 1
                for n, kk, ss, pp, dd in zip((H, W), k, s, p, d))
    cols = _im2col(x, k, s, p, d, out)
    y = w.reshape(len(w), -1) @ cols
    if b is not None:
        y += b[:, None]
    return y.reshape(N, len(w), *out), (x, w, b is not None, k, s, p, d, out)


def conv2d_backward(dy, cache):
    x, w, has_bias, k, s, p, d, out = cache
    N, O = dy.shape[:2]
    dy = dy.reshape(N, O, -1)
    cols = _im2col(x, k, s, p, d, out)
    dw = np.einsum("nop,nkp->ok", dy, cols).reshape(w.shape)
    dx = _col2im(w.reshape(O, -1).T @ dy, x.shape, k, s, p, d, out)
    return dx, dw, (dy.sum(axis=(0, 2)) if has_bias else None)


def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, dilation=1):
    (kh, kw), (sh, sw), (ph, pw) = w.shape[2:], _pair(stride), _pair(padding)
    (oph, opw), (dh, dw) = _pair(output_padding), _pair(dilation)
    N, C, H, W = x.shape
    O = w.shape[1]
    full = np.zeros((N, O, (H - 1) * sh + dh * (kh - 1) + 1 + oph,
                     (W - 1) * sw + dw * (kw - 1) + 1 + opw))
    stamps = np.einsum("nchw,cokl->nohwkl", x, w)
    for i in range(kh):
        for j in range(kw):
            full[:, :, i * dh:i * dh + (H - 1) * sh + 1:sh,
                 j * dw:j * dw + (W - 1) * sw + 1:sw] += stamps[..., i, j]
    OH, OW = full.shape[2] - 2 * ph, full.shape[3] - 2 * pw
    y = full[:, :, ph:ph + OH, pw:pw + OW].copy()
    if b is not None:
        y += b[None, :, None, None]
    return y, (x, w, b is not None, (sh, sw), (ph, pw), (dh, dw), full.shape)


def conv_transpose2d_backward(dy, cache):
    x, w, has_bias, (sh, sw), (ph, pw), (dh, dw), full_shape = cache
    N, C, H, W = x.shape
    kh, kw = w.shape[2:]
    dfull = np.zeros(full_shape)
    dfull[:, :, ph:ph + dy.shape[2], pw:pw + dy.shape[3]] = dy
    taps = np.empty((N, w.shape[1], H, W, kh, kw))
    for i in range(kh):
        for j in range(kw):
            taps[..., i, j] = dfull[:, :, i * dh:i * dh + (H - 1) * sh + 1:sh,
                                    j * dw:j * dw + (W - 1) * sw + 1:sw]
    dx = np.einsum("nohwkl,cokl->nchw", taps, w)
    dwt = np.einsum("nchw,nohwkl->cokl", x, taps)
    return dx, dwt, (dy.sum(axis=(0, 2, 3)) if has_bias else None)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    sh, sw = _pair(kernel_size if stride is None else stride)
    N, C, H, W = x.shape
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    y = np.empty((N, C, OH, OW))
    indices = np.empty((N, C, OH, OW), dtype=np.int64)
    for i in range(OH):
        for j in range(OW):
            window = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(N, C, -1)
            best = window.argmax(axis=2)
            y[:, :, i, j] = window.max(axis=2)
            row, col = i * sh + best // kw - ph, j * sw + best % kw - pw
            indices[:, :, i, j] = row * W + col
    return y, indices, (x.shape, indices)


def max_pool2d_backward(dy, cache):
    shape, indices = cache
    N, C, H, W = shape
    dx = np.zeros((N * C, H * W))
    np.add.at(dx, (np.arange(N * C)[:, None], indices.reshape(N * C, -1)), dy.reshape(N * C, -1))
    return dx.reshape(shape)


def max_unpool2d_forward(x, indices, kernel_size, stride=None, padding=0, output_size=None):
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    sh, sw = _pair(kernel_size if stride is None else stride)
    N, C, H, W = x.shape
    OH, OW = (H - 1) * sh - 2 * ph + kh, (W - 1) * sw - 2 * pw + kw
    y = np.zeros((N * C, OH * OW))
    y[np.arange(N * C)[:, None], indices.reshape(N * C, -1)] = x.reshape(N * C, -1)
    return y.reshape(N, C, OH, OW), (x.shape, indices)


def max_unpool2d_backward(dy, cache):
    shape, indices = cache
    N, C = shape[:2]
    planes = dy.reshape(N * C, -1)
    return planes[np.arange(N * C)[:, None], indices.reshape(N * C, -1)].reshape(shape)


def relu_forward(x):
    y = np.maximum(x, 0)
    return y, y


def relu_backward(dy, cache):
    return dy * (cache > 0)


def softmax_cross_entropy_forward(logits, target):
    """logits: (N, C, ...), target: (N, ...) -> mean loss over every pixel."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(shifted)
    prob /= prob.sum(axis=1, keepdims=True)
    onehot = np.moveaxis(np.eye(logits.shape[1])[target], -1, 1)
    count = target.size
    loss = -np.sum(onehot * np.log(prob)) / count
    return loss, (prob, onehot, count)


def softmax_cross_entropy_backward(dloss, cache):
    prob, onehot, count = cache
    return (prob - onehot) * dloss / count
