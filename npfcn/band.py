"""The constant band that FCN's padding of 100 leaves in its early feature maps.

FCN pads its input by 100 pixels so that any image survives the five poolings and
the 7x7 fc6.  For a 128x128 image conv1_1's output is 326x326, and every output that
sees only padding is the same number per channel: the bias.  That band stays
constant layer after layer - a convolution of a constant is a constant, ReLU and max
pooling keep one - while the part that sees the image grows by a pixel per 3x3
convolution, and each later convolution's own zero padding eats in from the edge.
Until the two meet (in conv4/conv5 for a 128x128 image) most of each early feature
map is known without computing it: 82 % of conv1_2's outputs, 75 % of conv2's, about
half of conv3's.

A ``Band`` describes one feature map of size (H, W)::

    +--------------------------+   ring: ``ring`` rows/columns at each edge (live)
    |  +--------------------+  |
    |  |    band: value[c]  |  |   band: everything else, channel c = value[c]
    |  |   +-----------+    |  |         for every image of the batch
    |  |   |   inner   |    |  |   inner: the rectangle that sees the image (live)
    |  |   +-----------+    |  |
    |  +--------------------+  |
    +--------------------------+

Convolutions compute only the live rectangles (``windows``) and fill the rest
with the constant; their weight gradient gets the band's share in closed form
(``weight_grad_of_band``).  Everything here is exact: a layer that ignores the band
and computes every output gets the same numbers (up to float rounding: the
constant is summed in another order).
"""
from dataclasses import dataclass

import numpy as np


# Skip a band only when it is at least this share of the map.  The ring's rows and
# thin sides cost more per output than a whole map does (short rows, transposed
# strips, a kernel call each): with a ring of 5, the band of half of an 82x82 map
# (conv3_x of a 128x128 image, 16 channels) cost 1.9 ms instead of 1.5 ms.
MIN_BAND_SHARE = 0.7


@dataclass(frozen=True)
class Band:
    size: tuple       # (H, W) of the feature map
    inner: tuple      # (y0, y1, x0, x1): the rectangle that sees the image
    ring: int         # live rows/columns at each edge
    value: np.ndarray  # (C,): the constant of each channel in the band

    @classmethod
    def of_image(cls, shape, dtype=np.float32):
        """The network's input x: (N, C, H, W): all of it is live; the padding the first
        convolution adds is the constant 0 (so it starts no ring)."""
        _, C, H, W = shape
        return cls((H, W), (0, H, 0, W), 0, np.zeros(C, dtype=dtype))

    # --- the next layer's band ----------------------------------------------------
    def after_conv(self, weight, bias, padding):
        """The band of a stride-1 convolution's output, or None where nothing is constant.

        weight: (O, C, KH, KW), bias: (O,) or None, padding: (PH, PW).  Output o reads
        inputs o - P .. o - P + K - 1, so it sees the inner rectangle for
        o in [y0 + P - K + 1, y1 + P), and the zero padding or the input's ring within
        ring + P of the edge (no ring while the constant is 0: then padding and band agree).
        """
        (H, W), (y0, y1, x0, x1) = self.size, self.inner
        (_, _, KH, KW), (PH, PW) = weight.shape, padding
        if PH != PW or KH != KW:      # one ring width per map: square kernels and padding
            return None
        OH, OW = H + 2 * PH - KH + 1, W + 2 * PW - KW + 1
        inner = (max(y0 + PH - KH + 1, 0), min(y1 + PH, OH),
                 max(x0 + PW - KW + 1, 0), min(x1 + PW, OW))
        starts_ring = self.ring > 0 or np.any(self.value != 0)
        ring = self.ring + PH if starts_ring else 0
        # Every output in the band sums the same constant inputs: b + sum_{c,i,j} w k[c].
        value = weight.astype(np.float64).sum(axis=(2, 3)) @ self.value.astype(np.float64)
        if bias is not None:
            value += bias
        return _if_any_band(Band((OH, OW), inner, ring, value.astype(weight.dtype)))

    def after_relu(self):
        return Band(self.size, self.inner, self.ring, np.maximum(self.value, 0))

    def after_pool(self, kernel_size, stride, out_size):
        """The band of a max pool without padding (ceil mode or not): output o covers
        inputs [o*s, o*s + k), so the max of a window inside the band is the constant."""
        (k, kw), (s, sw) = kernel_size, stride
        if (k, s) != (kw, sw):
            return None
        (H, W), (y0, y1, x0, x1), m = self.size, self.inner, self.ring
        OH, OW = out_size

        def covering(lo, hi, n):    # outputs whose window meets inputs [lo, hi)
            return max(-(-(lo - k + 1) // s), 0), min((hi - 1) // s + 1, n)

        iy, ix = covering(y0, y1, OH), covering(x0, x1, OW)
        # The ring's width on each side (they differ by one where a size is odd): the widest.
        ring = 0 if m == 0 else max(covering(0, m, OH)[1], OH - covering(H - m, H, OH)[0],
                                    covering(0, m, OW)[1], OW - covering(W - m, W, OW)[0])
        return _if_any_band(Band((OH, OW), (*iy, *ix), ring, self.value))

    # --- what to compute ------------------------------------------------------------
    def windows(self):
        """Disjoint rectangles (y0, y1, x0, x1) covering every live output: the inner
        rectangle first (the most work), then the ring's four strips."""
        (H, W), r = self.size, self.ring
        y0, y1, x0, x1 = self.inner
        inner = (max(y0, r), min(y1, H - r), max(x0, r), min(x1, W - r))
        rects = [inner, (0, r, 0, W), (H - r, H, 0, W), (r, H - r, 0, r), (r, H - r, W - r, W)]
        return [rect for rect in rects if rect[0] < rect[1] and rect[2] < rect[3]]

    def worth_skipping(self):
        """True when the band is a large enough share of the map to pay for the ring."""
        return self.band_outputs() >= MIN_BAND_SHARE * self.size[0] * self.size[1]

    def band_outputs(self):
        """How many positions of the map are in the band."""
        H, W = self.size
        return H * W - sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in self.windows())


def _if_any_band(band):
    return band if band.band_outputs() > 0 else None


def weight_grad_of_band(dy, windows, input_value):
    """The band's share of a convolution's weight gradient, (O, C) per tap.

    In the band every tap reads the input constant k[c], so
    dw[o, c, i, j] += (sum of dy[:, o] over the band outputs) * k[c] for every (i, j).
    dy: (N, O, OH, OW); windows: the output's live rectangles; input_value: k, (C,).
    """
    total = dy.sum(axis=(0, 2, 3), dtype=np.float64)
    for y0, y1, x0, x1 in windows:
        total -= dy[:, :, y0:y1, x0:x1].sum(axis=(0, 2, 3), dtype=np.float64)
    return np.outer(total, input_value.astype(np.float64))
