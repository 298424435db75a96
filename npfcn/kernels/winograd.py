"""3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3).

Equals ``npfcn.reference.conv.conv2d_forward`` / ``conv2d_backward`` for 3x3
kernels, stride 1, no dilation, to float rounding (see below).

The im2col route multiplies every 3x3 window by every filter: 9 multiply-adds per
output pixel and channel pair.  Winograd's algorithm (Lavin & Gray 2016) works on
2x2 output tiles, each read from a 4x4 input tile ``d``::

    Y = A^T [ U * V ] A        U = G g G^T  (4x4, from the 3x3 filter g)
                               V = B^T d B  (4x4, from the input tile)

``*`` is elementwise, so a tile costs 16 multiplications instead of 4*9 = 36.
Summing over input channels turns the 16 elementwise products into 16 matrix
products, which is where the time goes (BLAS, through NumPy)::

    M[xi] (O, T) = U[xi] (O, C) @ V[xi] (C, T)     for xi = 0..15, T tiles

The transforms are additions only (the matrices are in ``csrc/winograd.c``) and
run in C.  The backward pass is the transpose of each linear step, in reverse:
``dM`` from dy (output transform's adjoint), ``dV = U^T dM`` and
``dU = dM V^T`` (two more sets of 16 products), then dx from dV and dw from dU
(the input and weight transforms' adjoints).  Because every step is the exact
adjoint of its forward step, the gradients are exact for this forward pass
(gradcheck agrees to rounding), and the forward pass itself equals the direct
convolution up to float rounding (a few units in the last place: the transforms
add at most 9 terms with coefficients 1 and 1/2).

F(4x4, 3x3) (``csrc/winograd4.c``) is the same on 4x4 output tiles read from 6x6
input tiles: 36 multiplications per tile instead of 16*9 = 144 (4x fewer, where
F(2x2) saves 2.25x), in 36 products over a quarter as many tiles.  Its transforms
have larger coefficients (up to 8 and 1/24), so float32 results carry a few 1e-6
of relative error instead of a few 1e-7.  ``npfcn.kernels.dispatch`` picks the
variant per layer; ``Tiles`` holds what differs between the two.

Output tiles are processed a band of tile rows at a time (all images side by
side), through reused workspaces, so memory stays bounded like the im2col path's,
and the bands are spread over the cores by ``npfcn.kernels.threads``.
"""
import numpy as np

from . import backend, boundary, threads
from .gemm import add_bias_and_relu, channel_sums, through_relu
from .workspace import workspace

# A band of tile rows is sized by two needs: its V and M should stay near 8 MB
# (64 -> 64 channels at 224x224 ran 20 % slower with 32 MB bands), yet its 16
# products need enough columns to run at speed (512 -> 512 at 28x28 ran 20 %
# slower with 112 tiles per band than with all 196).
BAND_BYTES = 8 << 20
MIN_BAND_TILES = 768
# The thinnest band worth a core of its own.  A layer too small to give each thread
# two bands runs as one band whose every step is split across the threads, meeting
# at a barrier after each: 4 x 64 -> 64 at 32x32 (256 4x4 tiles) took 330-1400 ms
# fwd+bwd that way on two cores that other programs kept busy, 22-23 ms in four
# bands of 64 tiles (best runs 21 against 9.3-9.8 ms).
MIN_PARALLEL_TILES = 64


class Tiles:
    """One Winograd variant F(m x m, 3x3): output tiles of m x m read from input tiles
    of a x a (a = m + 2), a*a matrix products, and its C transforms."""

    def __init__(self, m, prefix):
        self.m, self.a, self.xi, self.prefix = m, m + 2, (m + 2) ** 2, prefix

    def __repr__(self):
        return f"F({self.m}x{self.m}, 3x3)"

    def grid(self, OH, OW):
        """Number of output tiles per column and per row: (TH, TW)."""
        return -(-OH // self.m), -(-OW // self.m)

    def scratch(self, TW, dtype):
        """Per-thread rows the tile transforms work in (see "Staging" in csrc/winograd.c),
        sized by the C code itself."""
        per_thread = getattr(backend.lib(), f"{self.prefix}_scratch")(TW)
        return workspace.get("wino_scratch", (backend.num_threads() * per_thread,), dtype)

    def lib(self, dtype):
        lib, suffix = backend.lib(), boundary.suffix(dtype)
        return lambda name: getattr(lib, f"{self.prefix}_{name}_{suffix}")


F2 = Tiles(2, "winograd")   # csrc/winograd.c
F4 = Tiles(4, "winograd4")  # csrc/winograd4.c


def tile_row_bands(N, C, O, TH, TW, itemsize, tiles=None):
    """Bands [t0, t1) of tile rows: V (xi*C) and M (xi*O) within BAND_BYTES, unless
    that leaves fewer than MIN_BAND_TILES tiles (columns of the products) per band.

    With several threads and tiles enough for it, up to four bands per thread (of
    at least MIN_PARALLEL_TILES each), so that npfcn.kernels.threads can give every
    core whole bands to itself.  ``tiles``: the variant (F2 when None).
    """
    xi = (tiles or F2).xi
    per_row = xi * (C + O) * N * TW * itemsize
    step = max(1, BAND_BYTES // max(1, per_row), -(-MIN_BAND_TILES // (N * TW)))
    threads = backend.num_threads()
    if threads > 1 and N * TH * TW >= 2 * threads * MIN_PARALLEL_TILES:
        step = min(step, max(-(-TH // (4 * threads)), -(-MIN_PARALLEL_TILES // (N * TW))))
    return [(t, min(t + step, TH)) for t in range(0, TH, step)]


def _geometry(x, w, padding):
    """(N, C, H, W, O, PH, PW, OH, OW) of a 3x3 stride-1 convolution with padding >= 0."""
    if getattr(x, "ndim", 0) != 4 or getattr(w, "ndim", 0) != 4:
        raise ValueError("winograd conv: input and weight must be 4-D arrays")
    (N, C, H, W), (O, Cw, KH, KW), (PH, PW) = x.shape, w.shape, padding
    OH, OW = H + 2 * PH - 2, W + 2 * PW - 2
    if (Cw, KH, KW) != (C, 3, 3) or min(PH, PW) < 0 or min(OH, OW) < 1:
        raise ValueError(f"winograd conv: weight {w.shape} and padding {padding} do not fit "
                         f"an input {x.shape}")
    return N, C, H, W, O, PH, PW, OH, OW


def transform_weight(w, tiles=F2):
    """w: (O, C, 3, 3) -> U: (a*a, O, C), U[a*r+s] = (G g G^T)[r, s]."""
    O, C = w.shape[:2]
    U = workspace.get("wino_U", (tiles.xi, O, C), w.dtype)
    boundary.check("winograd weight", w.dtype, {"weight": (w, (O, C, 3, 3))})
    tiles.lib(w.dtype)("weight")(boundary.pointer(w), boundary.pointer(U), O, C)
    return U


def conv3x3(x, w, padding, tiles, out=None):
    """The 3x3 stride-1 cross-correlation of x and w (no bias), written into ``out``.

    x: (N, C, H, W), w: (O, C, 3, 3), padding: (PH, PW) -> y: (N, O, OH, OW) with
    OH = H + 2*PH - 2 and OW = W + 2*PW - 2.  ``tiles``: F2 or F4.
    """
    N, C, H, W, O, PH, PW, OH, OW = _geometry(x, w, padding)
    y = np.empty((N, O, OH, OW), dtype=x.dtype) if out is None else out
    boundary.check("winograd conv", x.dtype, {"input": (x, (N, C, H, W)),
                                              "weight": (w, (O, C, 3, 3)),
                                              "output": (y, (N, O, OH, OW))})
    kernel = tiles.lib(x.dtype)
    TH, TW = tiles.grid(OH, OW)
    U = transform_weight(w, tiles)
    P = boundary.pointer

    def forward_band(rows):
        """The output rows of tile rows [t0, t1): no other band writes them."""
        t0, t1 = rows
        T = N * (t1 - t0) * TW
        V = workspace.get("wino_V", (tiles.xi, C, T), x.dtype)
        M = workspace.get("wino_M", (tiles.xi, O, T), x.dtype)
        scratch = tiles.scratch(TW, x.dtype)
        kernel("input")(P(x), P(V), N, C, H, W, PH, PW, t0, t1, TW, P(scratch))
        np.matmul(U, V, out=M)
        kernel("output")(P(M), P(y), N, O, OH, OW, t0, t1, TW, P(scratch))

    threads.run(tile_row_bands(N, C, O, TH, TW, x.itemsize, tiles), forward_band)
    return y


def conv3x3_grads(dy, x, w, padding, dw2, tiles):
    """Gradients of ``conv3x3``: returns dx and ADDS the weight gradient into dw2.

    dy: (N, O, OH, OW), x and w as in the forward pass, dw2: an array of O*C*9
    values (the caller's zeros or accumulator); ``tiles``: the forward pass's variant.
    """
    N, C, H, W, O, PH, PW, OH, OW = _geometry(x, w, padding)
    boundary.check("winograd conv gradient", x.dtype, {
        "input": (x, (N, C, H, W)), "weight": (w, (O, C, 3, 3)),
        "output gradient": (dy, (N, O, OH, OW)), "weight gradient": (dw2, O * C * 9)})
    kernel = tiles.lib(x.dtype)
    TH, TW = tiles.grid(OH, OW)
    U = transform_weight(w, tiles)
    dx = np.zeros((N, C, H, W), dtype=x.dtype)
    P = boundary.pointer

    def backward_band(rows):
        """Adds the band's share into dx; returns its share of dU = sum dM V^T."""
        t0, t1 = rows
        T = N * (t1 - t0) * TW
        scratch = tiles.scratch(TW, x.dtype)
        dM = workspace.get("wino_M", (tiles.xi, O, T), x.dtype)
        kernel("output_adj")(P(dy), P(dM), N, O, OH, OW, t0, t1, TW, P(scratch))
        # dV = U^T dM, then dx += its input-transform adjoint
        dV = workspace.get("wino_V", (tiles.xi, C, T), x.dtype)
        for xi in range(tiles.xi):
            # one 2-D product per xi: BLAS takes U[xi].T as a transposed operand,
            # while NumPy's stacked matmul would run a transposed stack without BLAS
            # (30x slower for 16 x 512 x 512 @ 512 x 126)
            np.matmul(U[xi].T, dM[xi], out=dV[xi])
        kernel("input_adj")(P(dV), P(dx), N, C, H, W, PH, PW, t0, t1, TW, P(scratch))
        # dM V^T, with V rebuilt from x (cheaper than keeping it from forward)
        V = dV
        kernel("input")(P(x), P(V), N, C, H, W, PH, PW, t0, t1, TW, P(scratch))
        return np.matmul(dM, V.transpose(0, 2, 1))

    plan = tile_row_bands(N, C, O, TH, TW, x.itemsize, tiles)
    parallel = len(plan) >= 2 * backend.num_threads()
    # Neighbouring bands add into shared rows of dx (2 with F2, 2 with F4: the input
    # windows of tile rows overlap by 2), bands two apart never do: in parallel, the
    # even bands go first, then the odd ones.
    phases = [plan[0::2], plan[1::2]] if parallel else [plan]
    dU = None
    for phase in phases:
        for part in threads.run(phase, backward_band, parallel=parallel):
            dU = part if dU is None else dU + part   # the first part is a fresh array
    kernel("weight_adj")(P(dU), P(dw2), O, C)
    return dx


# --- the signatures npfcn.kernels.dispatch expects (see npfcn.kernels.gemm) ----------

def f2_conv(x, w, b, g, relu):
    """F(2x2, 3x3) forward of geometry g, then bias and ReLU."""
    return add_bias_and_relu(conv3x3(x, w, (g[4], g[5]), F2), b, relu)


def f2_conv_grads(dy, x, w, has_bias, g, relu_y, dw2, input_gradient=True):
    """(dx, db); dx is computed even without ``input_gradient`` (conv3x3_grads gets dw
    and dx from the same transformed tiles)."""
    dy = through_relu(dy, relu_y)
    return conv3x3_grads(dy, x, w, (g[4], g[5]), dw2, F2), channel_sums(dy) if has_bias else None


def f4_conv(x, w, b, g, relu):
    """F(4x4, 3x3) forward of geometry g, then bias and ReLU."""
    return add_bias_and_relu(conv3x3(x, w, (g[4], g[5]), F4), b, relu)


def f4_conv_grads(dy, x, w, has_bias, g, relu_y, dw2, input_gradient=True):
    """As ``f2_conv_grads``, with F(4x4, 3x3)."""
    dy = through_relu(dy, relu_y)
    return conv3x3_grads(dy, x, w, (g[4], g[5]), dw2, F4), channel_sums(dy) if has_bias else None
