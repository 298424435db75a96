"""3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3) and F(4x4, 3x3).

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
of relative error instead of a few 1e-7.  ``choose`` picks the variant per layer
(F(4x4) for the 64-128 channel layers at 56x56 and above, where it measured
faster); ``Tiles`` holds what differs between the two.

This path is what the C backend uses for 3x3, stride-1, undilated convolutions
(every VGG16 convolution); ``npfcn.functional`` keeps im2col for everything else
and the NumPy reference path always uses im2col.  Output tiles are processed a
block of tile rows at a time (all images side by side), through reused
workspaces, so memory stays bounded like the im2col path's.
"""
import numpy as np

from . import backend, blocks
from .workspace import workspace

# A block of tile rows is sized by two needs (measured on one core): its V and M
# should stay near 8 MB (64 -> 64 channels at 224x224: 84 ms with 8 MB blocks, 100 ms
# with 32 MB), yet its 16 products need enough columns to run at speed (512 -> 512
# at 28x28: 68 ms with 112 tiles per block, 57 ms with all 196).
BLOCK_BYTES = 8 << 20
MIN_BLOCK_TILES = 768
MIN_PARALLEL_TILES = 128     # the thinnest block worth a core of its own
# F(4x4, 3x3) where it measured faster than F(2x2, 3x3) (see choose())
F4_MAX_IN_CHANNELS, F4_MAX_OUT_CHANNELS, F4_MIN_TILES = 128, 256, 196


def applies(kernel_size, stride, dilation, in_channels, out_channels, tiles):
    """True when the C backend computes this convolution with Winograd F(2x2, 3x3).

    ``tiles``: the number of 2x2 output tiles of the whole batch, N*ceil(OH/2)*ceil(OW/2).
    Only 3x3, stride 1, no dilation, and only where it pays (measured on one core):

    * not when the input has far fewer channels than the output (VGG's first
      layer, 3 -> 64): the transformed output, 16 x O per tile, then dwarfs a
      product whose inner dimension is only C (3 -> 64 at 224x224 2.8x and
      8 -> 64 at 112x112 1.6x slower than im2col; 4 -> 8, 8 -> 16 and 16 -> 32
      break even or gain);
    * not on fewer than 64 tiles (512 -> 512 at 14x14 has 49): the 16 products
      are then too thin for BLAS and transforming the weights (16/9 of their
      size, every pass) is not paid back.
    """
    return (backend.active() == "c" and tuple(kernel_size) == (3, 3)
            and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and 2 * in_channels >= out_channels and tiles >= 64)


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
        per_thread = getattr(backend.kernels()[1], f"{self.prefix}_scratch")(TW)
        return workspace.get("wino_scratch", (backend.num_threads() * per_thread,), dtype)

    def lib(self, dtype):
        _, lib = backend.kernels()
        suffix = "f32" if dtype == np.float32 else "f64"
        return lambda name: getattr(lib, f"{self.prefix}_{name}_{suffix}")


F2 = Tiles(2, "winograd")   # csrc/winograd.c
F4 = Tiles(4, "winograd4")  # csrc/winograd4.c


def choose(N, C, O, OH, OW):
    """The variant for a C -> O layer with N outputs of OH x OW.

    F(4x4) does 0.56x F(2x2)'s matrix-product work, in 36 thinner products, and
    moves 0.56x the data, but its products have a quarter of the columns (tiles)
    and its transformed weights are 2.25x larger.  Measured fwd+bwd on 2 threads
    (2026-12-01, ms, F2 -> F4): 64->64 at 224 160 -> 116, 128->128 at 112
    114 -> 82, 128->256 at 56 46 -> 39, 64->128 at 112 65 -> 67 (even), but
    256->256 at 56 86 -> 102 and 512->512 at 28 90 -> 207.  So F(4x4) for up to
    F4_MAX_IN_CHANNELS in and F4_MAX_OUT_CHANNELS out, on F4_MIN_TILES 4x4 tiles.
    """
    TH, TW = F4.grid(OH, OW)
    tiles = N * TH * TW
    if C <= F4_MAX_IN_CHANNELS and O <= F4_MAX_OUT_CHANNELS and tiles >= F4_MIN_TILES:
        return F4
    return F2


def tile_count(N, OH, OW):
    """2x2 output tiles in a batch of N outputs of OH x OW (the ``tiles`` of ``applies``)."""
    TH, TW = F2.grid(OH, OW)
    return N * TH * TW


def _tile_row_blocks(N, C, O, TH, TW, itemsize, tiles=None):
    """Blocks [t0, t1) of tile rows: V (xi*C) and M (xi*O) within BLOCK_BYTES, unless
    that leaves fewer than MIN_BLOCK_TILES tiles (columns of the products) per block.

    With several threads and tiles enough for it, up to four blocks per thread (of
    at least MIN_PARALLEL_TILES each), so that npfcn.blocks can give every core
    whole blocks to itself.  ``tiles``: the variant (F2 when None).
    """
    xi = (tiles or F2).xi
    per_row = xi * (C + O) * N * TW * itemsize
    step = max(1, BLOCK_BYTES // max(1, per_row), -(-MIN_BLOCK_TILES // (N * TW)))
    threads = backend.num_threads()
    if threads > 1 and N * TH * TW >= 2 * threads * MIN_PARALLEL_TILES:
        step = min(step, max(-(-TH // (4 * threads)), -(-MIN_PARALLEL_TILES // (N * TW))))
    return [(t, min(t + step, TH)) for t in range(0, TH, step)]


def _check(x, w, padding, out_shape):
    """What the C transforms rely on; a last gate even though callers check too."""
    for name, a in (("input", x), ("weight", w)):
        if not (isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64)
                and a.flags.c_contiguous):
            raise ValueError(f"winograd conv: {name} must be a C-contiguous float32/float64 array")
    if x.ndim != 4 or w.ndim != 4 or w.dtype != x.dtype:
        raise ValueError("winograd conv: input and weight must be 4-D arrays of one dtype")
    N, C, H, W = x.shape
    O, Cw, KH, KW = w.shape
    PH, PW = padding
    OH, OW = H + 2 * PH - 2, W + 2 * PW - 2
    if (Cw, KH, KW) != (C, 3, 3) or min(PH, PW) < 0 or min(OH, OW) < 1 \
            or tuple(out_shape) != (N, O, OH, OW):
        raise ValueError(f"winograd conv: weight {w.shape}, padding {padding} and output "
                         f"{tuple(out_shape)} do not fit an input {x.shape}")
    return N, C, H, W, O, PH, PW, OH, OW


def transform_weight(w, tiles=F2):
    """w: (O, C, 3, 3) -> U: (a*a, O, C), U[a*r+s] = (G g G^T)[r, s]."""
    O, C = w.shape[:2]
    U = workspace.get("wino_U", (tiles.xi, O, C), w.dtype)
    tiles.lib(w.dtype)("weight")(backend.pointer(w), backend.pointer(U), O, C)
    return U


def conv3x3_forward(x, w, padding, y, tiles=None):
    """Fill y with the 3x3 stride-1 cross-correlation of x and w (no bias).

    x: (N, C, H, W), w: (O, C, 3, 3), padding: (PH, PW), y: (N, O, OH, OW) with
    OH = H + 2*PH - 2 and OW = W + 2*PW - 2; returns y.  ``tiles``: F2 or F4
    (None: ``choose``).
    """
    N, C, H, W, O, PH, PW, OH, OW = _check(x, w, padding, y.shape)
    tiles = tiles or choose(N, C, O, OH, OW)
    kernel = tiles.lib(x.dtype)
    TH, TW = tiles.grid(OH, OW)
    U = transform_weight(w, tiles)

    def forward_block(rows):
        """The output rows of tile rows [t0, t1): no other block writes them."""
        t0, t1 = rows
        T = N * (t1 - t0) * TW
        V = workspace.get("wino_V", (tiles.xi, C, T), x.dtype)
        M = workspace.get("wino_M", (tiles.xi, O, T), x.dtype)
        scratch = tiles.scratch(TW, x.dtype)
        kernel("input")(backend.pointer(x), backend.pointer(V), N, C, H, W, PH, PW,
                        t0, t1, TW, backend.pointer(scratch))
        np.matmul(U, V, out=M)
        kernel("output")(backend.pointer(M), backend.pointer(y), N, O, OH, OW, t0, t1, TW,
                         backend.pointer(scratch))

    blocks.run(_tile_row_blocks(N, C, O, TH, TW, x.itemsize, tiles), forward_block)
    return y


def conv3x3_backward(dy, x, w, padding, dw2, tiles=None):
    """Gradients of conv3x3_forward: returns dx and ADDS the weight gradient into dw2.

    dy: (N, O, OH, OW) C-contiguous, x and w as in the forward pass,
    dw2: a C-contiguous (O, C*9) array (the caller's zeros or accumulator);
    ``tiles`` as in the forward pass (None: ``choose``, the same choice).
    """
    N, C, H, W, O, PH, PW, OH, OW = _check(x, w, padding, dy.shape)
    if not (isinstance(dy, np.ndarray) and dy.dtype == x.dtype and dy.flags.c_contiguous):
        raise ValueError("winograd conv: the output gradient must be C-contiguous, of x's dtype")
    if not (isinstance(dw2, np.ndarray) and dw2.dtype == x.dtype and dw2.flags.c_contiguous
            and dw2.size == O * C * 9):
        raise ValueError(f"winograd conv: dw must be a C-contiguous array of {O * C * 9} values")
    tiles = tiles or choose(N, C, O, OH, OW)
    kernel = tiles.lib(x.dtype)
    TH, TW = tiles.grid(OH, OW)
    U = transform_weight(w, tiles)
    dx = np.zeros((N, C, H, W), dtype=x.dtype)

    def backward_block(rows):
        """Adds the block's share into dx; returns its share of dU = sum dM V^T."""
        t0, t1 = rows
        T = N * (t1 - t0) * TW
        scratch = tiles.scratch(TW, x.dtype)
        dM = workspace.get("wino_M", (tiles.xi, O, T), x.dtype)
        kernel("output_adj")(backend.pointer(dy), backend.pointer(dM), N, O, OH, OW, t0, t1, TW,
                             backend.pointer(scratch))
        # dV = U^T dM, then dx += its input-transform adjoint
        dV = workspace.get("wino_V", (tiles.xi, C, T), x.dtype)
        for xi in range(tiles.xi):
            # one 2-D product per xi: BLAS takes U[xi].T as a transposed operand,
            # while NumPy's stacked matmul would run a transposed stack without BLAS
            # (measured 128 ms against 4 ms for 16 x 512 x 512 @ 512 x 126)
            np.matmul(U[xi].T, dM[xi], out=dV[xi])
        kernel("input_adj")(backend.pointer(dV), backend.pointer(dx), N, C, H, W, PH, PW,
                            t0, t1, TW, backend.pointer(scratch))
        # dM V^T, with V rebuilt from x (cheaper than keeping it from forward)
        V = dV
        kernel("input")(backend.pointer(x), backend.pointer(V), N, C, H, W, PH, PW,
                        t0, t1, TW, backend.pointer(scratch))
        return np.matmul(dM, V.transpose(0, 2, 1))

    plan = _tile_row_blocks(N, C, O, TH, TW, x.itemsize, tiles)
    parallel = len(plan) >= 2 * backend.num_threads()
    # Neighbouring blocks add into shared rows of dx (2 with F2, 2 with F4: the input
    # windows of tile rows overlap by 2), blocks two apart never do: in parallel, the
    # even blocks go first, then the odd ones.
    phases = [plan[0::2], plan[1::2]] if parallel else [plan]
    dU = None
    for phase in phases:
        for part in blocks.run(phase, backward_block, parallel=parallel):
            dU = part if dU is None else dU + part   # the first part is a fresh array
    kernel("weight_adj")(backend.pointer(dU), backend.pointer(dw2), O, C)
    return dx
