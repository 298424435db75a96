"""Skip the constant part of FCN's padded feature maps - exactly.

FCN pads ``conv1_1``'s input by 100 zeros on every side, so that any image survives
the five poolings and the 7x7 ``fc6``.  For a 128x128 image the encoder's first
maps are 326x326 (then 163, 82, ...), and most of each map never sees the image:

* ``conv1_1``'s outputs that see only padding are all ``relu(bias)``: one constant
  per channel (the C kernel already skips them, npfcn.direct);
* the next 3x3 convolution (padding 1) of a map that is constant outside a box is
  constant outside that box grown by one pixel - EXCEPT along the map's own edges,
  where its zero padding makes the outermost ring differ.  So each map is one
  constant per channel outside a ``Region``: a box around the image plus a frame
  along the edges, each growing by a pixel per convolution and halving per pooling.

For the default run the regions cover 17 % of conv1_2's map, ~25 % of conv2_x's and
~45 % of conv3_x's; the rest is computed once per channel instead of per pixel.

Forward: the C kernel computes the region's rectangles and fills the rest with the
constant ``relu(b + sum_taps(w) . c_in)``.

Backward, with dZ = dY * (Y > 0) (the fused ReLU) and the constant region written
P (the positions whose whole 3x3 input patch is the constant, away from padding):

* the weight gradient splits into the region, computed pixel by pixel, and P,
  where every patch is ``c_in``: there it is ``c_in[c] * sum_P dZ[o]`` for every
  tap.  ``sum_P dZ`` = (all of dZ) - (dZ over the region), and outside the region
  dZ = dY * (c_out > 0);
* the input gradient is needed only on the previous map's region (which the
  layer below reads pixel by pixel) and as a per-channel total over the whole map
  (which the layer below needs for its own constant part).  The total follows from
  the output gradient's total and its edge rows and columns (the padding drops
  those from some taps' sums), all of which are known:
  ``sum_x dX[c] = sum_{o,i,j} w[o, c, i, j] * (sum of dZ[o] over the rows and
  columns tap (i, j) reaches)``.
* max pooling passes every output gradient to one input: totals are unchanged, and
  the input region's values come from the output region.

So a gradient travels down as (values on the region, per-channel total over the
whole map, n summed); the values outside the region are never read.  The results
equal the dense computation up to float rounding (tests/test_regions.py).  The
NumPy backend and any layer this does not cover compute densely.
"""
from dataclasses import dataclass

import numpy as np

from . import backend, direct
from .im2col import conv_output_size

#: Stop at the first map whose region covers more than this share: beyond it the
#: rectangles save less than their bookkeeping costs (measured on the default run).
MAX_FRACTION = 0.6

_enabled = True


class enabled:
    """``with regions.enabled(False): ...`` computes every map densely (to compare)."""

    def __init__(self, flag):
        self.flag = bool(flag)

    def __enter__(self):
        global _enabled
        self.previous, _enabled = _enabled, self.flag
        return self

    def __exit__(self, *exc):
        global _enabled
        _enabled = self.previous


@dataclass(frozen=True)
class Region:
    """The part of an (H, W) map that may differ from one constant per channel:
    the box [y0, y1) x [x0, x1) and a frame ``frame`` pixels wide along the edges."""
    H: int
    W: int
    y0: int
    y1: int
    x0: int
    x1: int
    frame: int

    def rects(self):
        """(k, 4) int64 rows (y0, y1, x0, x1) that cover the region without
        overlapping, sorted by x0 (what npfcn.direct's rectangles must be)."""
        H, W, f = self.H, self.W, self.frame
        if 2 * f >= H or 2 * f >= W:
            return np.array([[0, H, 0, W]], dtype=np.int64)
        rects = []
        if f:
            rects += [(0, f, 0, W), (H - f, H, 0, W), (f, H - f, 0, f)]
        box = (max(self.y0, f), min(self.y1, H - f), max(self.x0, f), min(self.x1, W - f))
        if box[0] < box[1] and box[2] < box[3]:
            rects.append(box)
        if f:
            rects.append((f, H - f, W - f, W))
        return np.array(rects, dtype=np.int64).reshape(-1, 4)

    def fraction(self):
        rects = self.rects()
        return float(((rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2])).sum()) / (self.H * self.W)

    def mask(self):
        """(H, W) bool, True on the region (for tests and pictures)."""
        mask = np.zeros((self.H, self.W), dtype=bool)
        for y0, y1, x0, x1 in self.rects():
            mask[y0:y1, x0:x1] = True
        return mask

    def after_conv3x3(self):
        """The region of a 3x3, padding 1, stride 1 convolution's output."""
        return Region(self.H, self.W, max(self.y0 - 1, 0), min(self.y1 + 1, self.H),
                      max(self.x0 - 1, 0), min(self.x1 + 1, self.W), self.frame + 1)

    def after_pool2x2(self, OH, OW):
        """The region of a 2x2, stride 2 max pooling's (OH, OW) output (ceil mode or not):
        the windows that hold a pixel of the input's region."""
        f = self.frame
        edge = max(-(-f // 2), OH - (self.H - f) // 2, OW - (self.W - f) // 2) if f else 0
        return Region(OH, OW, self.y0 // 2, min(-(-self.y1 // 2), OH),
                      self.x0 // 2, min(-(-self.x1 // 2), OW), min(edge, max(OH, OW)))


def _conv_kind(module):
    """"first" for a padded first convolution whose window the kernel finds, "3x3"
    for a 3x3 / padding 1 one, None for a layer this module does not handle."""
    from .layers import ConvReLU2d, MaxPool2d

    if isinstance(module, MaxPool2d):
        ok = (module.kernel_size == (2, 2) and module.stride == (2, 2)
              and module.padding == (0, 0) and module.dilation == (1, 1))
        return "pool" if ok else None
    if not isinstance(module, ConvReLU2d) or "bias" not in module.params:
        return None
    O, C, KH, KW = module.params["weight"].shape
    if not direct.applies((KH, KW), module.stride, module.dilation, C, O):
        return None
    if (KH, KW) == (3, 3) and module.padding == (1, 1):
        return "3x3"
    return "first"


def plan(modules, x_shape):
    """How many of ``modules`` (from the first) to run by regions for an input of
    x_shape, and each one's output region: ``(count, [Region, ...])``; (0, []) when
    the C backend is off or the first layer leaves nothing to skip.

    The first module must be a convolution whose input is the zero-padded image;
    after it 3x3 convolutions and 2x2 poolings, until a map's region covers more
    than MAX_FRACTION of it (or a layer of another kind comes).
    """
    if not _enabled or backend.active() != "c" or not modules or _conv_kind(modules[0]) != "first":
        return 0, []
    first = modules[0]
    N, C, H, W = x_shape
    O, _, KH, KW = first.params["weight"].shape
    (PH, PW) = first.padding
    OH, OW = H + 2 * PH - KH + 1, W + 2 * PW - KW + 1
    (y0, y1), (x0, x1) = direct.window(H, OH, KH, PH), direct.window(W, OW, KW, PW)
    region = Region(OH, OW, y0, y1, x0, x1, 0)
    if region.fraction() > MAX_FRACTION:
        return 0, []
    regions = [region]
    for module in modules[1:]:
        kind = _conv_kind(module)
        if kind == "3x3":
            nxt = region.after_conv3x3()
        elif kind == "pool":
            OH, OW = conv_output_size((region.H, region.W), (2, 2), 2, 0, 1, module.ceil_mode)
            if OH < 1 or OW < 1:
                break
            nxt = region.after_pool2x2(OH, OW)
        else:
            break
        if nxt.fraction() > MAX_FRACTION:
            break
        regions.append(nxt)
        region = nxt
    # End on a convolution's or pooling's output either way; a prefix that ends
    # right after the first layer saves nothing on the way back.
    return len(regions), regions


class RegionRun:
    """One forward and backward pass of a prefix of the encoder by regions.

    forward(x: (N, 3, H, W)) -> the last prefix module's output, exact everywhere
    (the constant part filled in); backward(dy: the gradient of that output, dense)
    -> d/dx of the image, adding every parameter gradient into the modules' grads.
    """

    def __init__(self, modules, regions):
        self.modules, self.regions = modules, regions
        self._saved = None

    def forward(self, x):
        saved = []
        constant = None     # the current map's value outside its region, per channel (float64)
        for module, region in zip(self.modules, self.regions):
            kind = _conv_kind(module)
            if kind == "pool":
                y = module.forward(x)       # dense: cheap, and its indices cover everything
                saved.append((x, y, constant, constant))    # the max of equal values
            else:
                w, b = module.params["weight"], module.params["bias"]
                if kind == "first":         # its input is the image padded with zeros
                    out_constant, fill, rects = np.maximum(b, 0), None, None
                else:
                    out_constant = np.maximum(
                        b + w.sum(axis=(2, 3), dtype=np.float64) @ constant, 0).astype(x.dtype)
                    fill, rects = out_constant, region.rects()
                y = np.empty((len(x), w.shape[0], region.H, region.W), dtype=x.dtype)
                direct.conv_forward(x, w, module.padding, y, bias=b, relu=True, rects=rects,
                                    fill=fill)
                saved.append((x, y, constant, out_constant.astype(np.float64)))
                constant = out_constant.astype(np.float64)
            x = y
        self._saved = saved
        return x

    def backward(self, dy):
        if self._saved is None:
            raise ValueError("RegionRun.backward() called before forward()")
        saved, self._saved = self._saved, None
        dy = np.ascontiguousarray(dy)
        total = dy.sum(axis=(0, 2, 3), dtype=np.float64)    # per channel, over the whole map
        for index in range(len(self.modules) - 1, -1, -1):
            module = self.modules[index]
            kind = _conv_kind(module)
            if kind == "pool":
                dy = module.backward(dy)    # totals unchanged: each output feeds one input
                continue
            in_region = self.regions[index - 1] if index > 0 else None
            dy, total = _conv_backward(module, kind, saved[index], dy, total,
                                       self.regions[index], in_region)
        return dy


def _rect_sums(a, rects):
    """sum over n and the rectangles of a: (N, C, H, W) -> (C,) float64."""
    total = np.zeros(a.shape[1], dtype=np.float64)
    for y0, y1, x0, x1 in rects:
        total += a[:, :, y0:y1, x0:x1].sum(axis=(0, 2, 3), dtype=np.float64)
    return total


def _conv_backward(module, kind, saved, dy, total, region, in_region):
    """One convolution (ReLU fused) by regions; see the module docstring.

    saved: (x, y, x's constant, y's constant) of the forward pass; dy: (N, O, H, W),
    valid on ``region``; total: (O,) its sum over the whole map.  Returns (dx valid on
    in_region - for the first layer: dx of the image -, dx's per-channel total).
    """
    x, y, in_constant, out_constant = saved
    w = module.params["weight"]
    O, C, KH, KW = w.shape
    dw, db = module.grads["weight"], module.grads["bias"]
    rects = direct.window_rects(*x.shape[2:], *y.shape[2:], KH, KW, *module.padding) \
        if kind == "first" else region.rects()
    # the region pixel by pixel: into dw, and its sum of dZ into region_dz
    region_dz = np.zeros(O, dtype=x.dtype)
    direct.add_weight_grad(dy, x, w.shape, module.padding, dw.reshape(-1), y, region_dz, rects)
    # outside it y is its constant, so dZ = dY wherever that constant is > 0
    outside_dz = np.where(out_constant > 0, total - _rect_sums(dy, rects), 0.0)
    db += (region_dz + outside_dz).astype(db.dtype)
    flipped = direct.flipped_transposed(w)
    if kind == "first":
        # its input is the image padded with zeros: no dw term outside, and dx is the image's
        return direct.conv_forward(dy, flipped, (KH - 1 - module.padding[0],
                                                 KW - 1 - module.padding[1]), x_mask=y), None
    # every patch outside the region is x's constant, on every tap
    dw += (outside_dz[:, None, None, None] * in_constant[None, :, None, None]).astype(dw.dtype)
    dx = np.empty_like(x)
    direct.conv_forward(dy, flipped, (1, 1), dx, x_mask=y, rects=in_region.rects(),
                        fill=np.zeros(C, dtype=x.dtype))
    return dx, _input_total(w, dy, y, region_dz + outside_dz)


def _input_total(w, dy, y, total_dz):
    """Per input channel, the sum of dx over n and the whole map, for a 3x3 / padding 1
    convolution with dZ = dy * (y > 0) and its per-channel total ``total_dz``.

        dx[c, r, q] = sum_{o,i,j} w[o, c, i, j] dZ[o, r + 1 - i, q + 1 - j]

    so over all r tap row i reaches every row of dZ but row 0 (i = 0) or row H-1
    (i = 2); likewise the columns.  Edge rows and columns lie in the frame, where dy is
    known.  Returns (C,) float64.
    """
    H, W = y.shape[2:]

    def dz(rows, cols):
        return (dy[:, :, rows, cols] * (y[:, :, rows, cols] > 0)).astype(np.float64)

    edge_rows = {0: dz(0, slice(None)), 2: dz(H - 1, slice(None))}      # (N, O, W)
    edge_cols = {0: dz(slice(None), 0), 2: dz(slice(None), W - 1)}      # (N, O, H)
    reach = np.empty((w.shape[0], 3, 3), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            s = total_dz.copy()
            if i != 1:
                s -= edge_rows[i].sum(axis=(0, 2))
            if j != 1:
                s -= edge_cols[j].sum(axis=(0, 2))
            if i != 1 and j != 1:       # the corner was taken away twice
                s += edge_rows[i][:, :, 0 if j == 0 else W - 1].sum(axis=0)
            reach[:, i, j] = s
    return np.einsum("ocij,oij->c", w.astype(np.float64), reach)
