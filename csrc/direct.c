/* Direct stride-1 convolution for layers with few channels.
 *
 * Why this exists: im2col copies every input pixel KH*KW times into a column
 * matrix and Winograd copies it 4 times into transformed tiles; with a handful
 * of channels (FCN-8s at width 1/16 has 4 to 32) the matrix products that
 * follow are so small that those copies ARE the layer's cost.  Here each output
 * row is computed straight from the input rows it needs, which are staged once
 * (zero-padded) into a small per-thread buffer that stays in L1 cache.
 *
 * Definitions (stride 1, no dilation; PH/PW may be negative, which crops):
 *
 *   forward   y[n, o, oy, ox] = b[o] + sum_{c, i, j} w[o, c, i, j] * x[n, c, oy - PH + i, ox - PW + j]
 *   weights   dw[o, c, i, j] += sum_{n, oy, ox} dy[n, o, oy, ox] * x[n, c, oy - PH + i, ox - PW + j]
 *
 * with x = 0 outside the image.  (The input gradient is a forward call on dy
 * with the flipped, transposed weights; see npfcn/kernels/direct.py.)  Only the output
 * window [oy0, oy1) x [ox0, ox1) can see the image; outside it y is b (0 without a
 * bias: b may be NULL), and the
 * weight gradient skips it.  Python computes the window and checks every size.
 *
 * A ReLU after the convolution is fused into both directions (VGG has one after
 * every convolution, and a separate pass over each map cost as much as 1/4 of the
 * convolution here): with relu set the forward stores max(y, 0) (NaN kept), and
 * the backward reads dy through the mask y > 0 - x_mask of the input-gradient
 * call, dy_mask of the weight gradient - as it stages the rows (NULL: no mask).
 * The weight gradient also adds the window's (masked) dy into db when db is not
 * NULL: the bias gradient without another pass over dy.
 *
 * Layouts:
 *   wb      (ceil(O/4), C*KH*KW, 4): the weights of 4 output channels side by
 *           side per tap, zero for channels past O (Python builds it).
 *   stage   per thread, C*KH rows of SW = (ox1-ox0) + KW - 1 + 3*VL values: row
 *           (c*KH + i) holds x[n, c, oy - PH + i, ox0 - PW + s] at s, 0 outside the
 *           image; the 3*VL spare zeros let a last partial block of 3*VL outputs
 *           read a full block.
 *   scratch npfcn_num_threads() slices of direct_conv_scratch() elements each
 *           (the weight gradient's slice is described above its function).
 *
 * Threads: forward splits by (n, output row); every y row is written by one
 * thread.  Both loops go parallel above 8192 outputs (conv5_x of the default
 * narrow FCN-8s, 2 x 32 x 21 x 21, took 1.0 ms on one thread, 0.57 ms on two).  The weight gradient splits by (n, block of output rows) into
 * per-thread partial sums, added up at the end by one thread: no two threads
 * write one element.
 *
 * The inner loop keeps 4 output channels x 3*VL columns in twelve vector
 * variables (GCC/Clang vector extensions, 64 bytes each); where the compiler can,
 * the functions are built for AVX-512, AVX2 and baseline x86-64 and the best
 * the CPU has is picked at load time (target_clones).  Still no -ffast-math:
 * every sum runs in a fixed order.  The forward pass (and so the input
 * gradient) does not depend on the thread count; the weight gradient's
 * per-thread partial sums, in double, do only in their last bits.
 */
#include <string.h>
#include "npfcn_kernels.h"
#include "npfcn_cpu.h"          /* NPFCN_CLONES, NPFCN_INLINE */

/* Fused multiply-adds where the CPU has them (AVX2/AVX-512 clones): one rounding
 * instead of two, and half the instructions in the inner loops.  The build's
 * -std=c99 turns contraction off for everything else; this file's sums are
 * compared with the reference to rounding, never bit for bit. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif


#define NPFCN_OB 4      /* output channels per register block */

/* p[0..n) = value (the outputs that see no input: bias only). */
#define NPFCN_FILL(T, SUFFIX)                                                             \
static void fill_##SUFFIX(T *p, T value, int64_t n)                                       \
{                                                                                         \
    if (value == 0) {                                                                     \
        memset(p, 0, (size_t)(n > 0 ? n : 0) * sizeof(T));                                \
        return;                                                                           \
    }                                                                                     \
    for (int64_t k = 0; k < n; ++k) p[k] = value;                                         \
}

/* ReLU of one value, NaN kept (as csrc/relu.c): for a fused ReLU after the sum. */
#define NPFCN_RELU_VALUE(T, SUFFIX)                                                       \
NPFCN_INLINE T relu_##SUFFIX(T v)                                                         \
{                                                                                         \
    return (v > 0 || v != v) ? v : (T)0;                                                  \
}

/* dst[0..n) = src where mask > 0, else 0 (mask NULL: a plain copy).  The input
 * gradient of a convolution followed by a ReLU reads its output gradient through
 * the ReLU's mask (its output y > 0): folded into this copy, it costs no pass of
 * its own.  Both loads unconditional, so that the compiler blends vectors. */
#define NPFCN_COPY_MASKED(T, SUFFIX)                                                      \
static void copy_masked_##SUFFIX(T *restrict dst, const T *restrict src,                 \
                                 const T *restrict mask, int64_t n)                       \
{                                                                                         \
    if (!mask) {                                                                          \
        memcpy(dst, src, (size_t)(n > 0 ? n : 0) * sizeof(T));                            \
        return;                                                                           \
    }                                                                                     \
    for (int64_t k = 0; k < n; ++k) {                                                     \
        const T v = src[k];                                                               \
        dst[k] = mask[k] > 0 ? v : (T)0;                                                  \
    }                                                                                     \
}

/* Stage the C*KH input rows output row oy needs (see "stage" above); with KH
 * set to rows+KH-1 it stages the input of a block of output rows. */
#define NPFCN_STAGE_ROWS(T, SUFFIX)                                                       \
static void stage_rows_##SUFFIX(const T *xn, const T *maskn, T *stage, int64_t C,         \
                                int64_t H, int64_t W,                                     \
                                int64_t KH, int64_t oy, int64_t PH, int64_t PW,           \
                                int64_t ox0, int64_t SW)                                  \
{                                                                                         \
    /* stage column s holds input column ix = s + first; inside the image for s in       \
     * [s_lo, s_hi) */                                                                    \
    const int64_t first = ox0 - PW;                                                       \
    int64_t s_lo = first < 0 ? -first : 0;                                                \
    int64_t s_hi = W - first < SW ? W - first : SW;                                       \
    if (s_lo > SW) s_lo = SW;                                                             \
    if (s_hi < s_lo) s_hi = s_lo;                                                         \
    for (int64_t c = 0; c < C; ++c) {                                                     \
        for (int64_t i = 0; i < KH; ++i) {                                                \
            T *row = stage + (c * KH + i) * SW;                                           \
            const int64_t iy = oy - PH + i;                                               \
            if (iy < 0 || iy >= H || s_lo == s_hi) {                                      \
                memset(row, 0, (size_t)SW * sizeof(T));                                   \
                continue;                                                                 \
            }                                                                             \
            memset(row, 0, (size_t)s_lo * sizeof(T));                                     \
            const int64_t at = (c * H + iy) * W + (s_lo + first);                         \
            copy_masked_##SUFFIX(row + s_lo, xn + at, maskn ? maskn + at : NULL,          \
                                 s_hi - s_lo);                                            \
            memset(row + s_hi, 0, (size_t)(SW - s_hi) * sizeof(T));                       \
        }                                                                                 \
    }                                                                                     \
}

/* 3*VL outputs of 4 channels from the staged rows: out[o][v] for
 * o < nob, v < count.  Register blocking: 4 channels x 3 vectors in twelve
 * accumulators.  A multiply-add takes 4 cycles to deliver its result and the
 * CPU starts one or two per cycle, so 4 independent sums would leave it idle
 * most of the time; 12 hide the latency, and each broadcast weight feeds 3
 * vectors (3 vector loads + 4 broadcasts per 12 multiply-adds).  VEC is a GCC
 * vector type of VL elements; the accumulators are named variables, so they stay
 * in registers (an array indexed in loops was kept on the stack).  Channels
 * past nob are zero padding in wb and columns past count read the staged zeros:
 * both are computed and dropped.  Callers pass KW as the constant 3 for 3x3
 * layers so that the tap loop unrolls. */
#define NPFCN_VECTORS 3
#define NPFCN_DIRECT_BLOCK(T, SUFFIX, VEC, VL)                                            \
NPFCN_INLINE VEC load_##SUFFIX##_##VL(const T *p)                                         \
{                                                                                         \
    VEC v;                                                                                \
    memcpy(&v, p, sizeof v);          /* an unaligned vector load */                      \
    return v;                                                                             \
}                                                                                         \
NPFCN_INLINE void direct_block_##SUFFIX##_##VL(const T *restrict stage, const T *restrict wb, \
                                         const T bias[NPFCN_OB], int64_t taps_c,          \
                                         int64_t KW, int64_t SW, int64_t s,               \
                                         T *restrict out[NPFCN_OB], int64_t nob,          \
                                         int64_t count)                                   \
{                                                                                         \
    const VEC zero = {0};           /* each sum starts at its channel's bias */           \
    VEC a00 = zero + bias[0], a01 = a00, a02 = a00, a10 = zero + bias[1], a11 = a10;      \
    VEC a12 = a10, a20 = zero + bias[2], a21 = a20, a22 = a20, a30 = zero + bias[3];      \
    VEC a31 = a30, a32 = a30;                                                             \
    for (int64_t r = 0; r < taps_c; ++r) {          /* r = c*KH + i */                    \
        const T *row = stage + r * SW + s;                                                \
        const T *wr = wb + r * KW * NPFCN_OB;                                             \
        for (int64_t j = 0; j < KW; ++j) {                                                \
            const VEC x0 = load_##SUFFIX##_##VL(row + j);                                 \
            const VEC x1 = load_##SUFFIX##_##VL(row + j + VL);                            \
            const VEC x2 = load_##SUFFIX##_##VL(row + j + 2 * VL);                        \
            const T *wj = wr + j * NPFCN_OB;                                              \
            const T w0 = wj[0], w1 = wj[1], w2 = wj[2], w3 = wj[3];                       \
            a00 += w0 * x0; a01 += w0 * x1; a02 += w0 * x2;                               \
            a10 += w1 * x0; a11 += w1 * x1; a12 += w1 * x2;                               \
            a20 += w2 * x0; a21 += w2 * x1; a22 += w2 * x2;                               \
            a30 += w3 * x0; a31 += w3 * x1; a32 += w3 * x2;                               \
        }                                                                                 \
    }                                                                                     \
    T lanes[NPFCN_OB][NPFCN_VECTORS * VL];                                                \
    const int full = count == NPFCN_VECTORS * VL;   /* store straight to y */             \
    const VEC *acc[NPFCN_OB][NPFCN_VECTORS] = {{&a00, &a01, &a02}, {&a10, &a11, &a12},    \
                                               {&a20, &a21, &a22}, {&a30, &a31, &a32}};   \
    for (int64_t o = 0; o < nob; ++o) {                                                   \
        T *dst = full ? out[o] : lanes[o];                                                \
        for (int v = 0; v < NPFCN_VECTORS; ++v)                                           \
            memcpy(dst + v * VL, acc[o][v], sizeof(VEC));                                 \
        if (!full)                                                                        \
            memcpy(out[o], lanes[o], (size_t)count * sizeof(T));                          \
    }                                                                                     \
}

/* An output that sees only padding: its bias (0 without one), through the ReLU if fused. */
#define NPFCN_ONLY_BIAS(T, SUFFIX)                                                        \
NPFCN_INLINE T only_bias_##SUFFIX(const T *bias, int64_t o, int64_t relu)                 \
{                                                                                         \
    const T b = bias ? bias[o] : (T)0;                                                    \
    return relu ? relu_##SUFFIX(b) : b;                                                   \
}

/* The forward pass for one vector width: NAME is direct_conv_forward_<SUFFIX>_<width>,
 * built with the target attribute TARGET; direct_conv_forward_<SUFFIX> below picks one. */
#define NPFCN_DIRECT_FORWARD(T, SUFFIX, NAME, TARGET, VL)                                 \
TARGET                                                                                    \
static void NAME(const T *x, const T *x_mask, const T *wb, const T *bias,                 \
        T *y, int64_t relu, int64_t N, int64_t C,                                         \
        int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t PH, int64_t PW, \
        int64_t OH, int64_t OW, int64_t oy0, int64_t oy1, int64_t ox0, int64_t ox1,      \
        T *scratch)                                                                       \
{                                                                                         \
    const int64_t RX = ox1 - ox0, SW = RX + KW - 1 + NPFCN_VECTORS * VL;                  \
    const int64_t taps_c = C * KH, blocks = (O + NPFCN_OB - 1) / NPFCN_OB;                \
    const int64_t tasks = N * OH;                                                         \
    int64_t task;                                                                         \
    const int64_t parallel = N * O * OH * OW > 8192;                                     \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (task = 0; task < tasks; ++task) {                                                \
        const int64_t n = task / OH, oy = task % OH;                                      \
        T *yrow = y + n * O * OH * OW + oy * OW;    /* channel o at + o*OH*OW */          \
        if (oy < oy0 || oy >= oy1 || RX <= 0) {     /* sees no input: just the bias */    \
            for (int64_t o = 0; o < O; ++o)                                               \
                fill_##SUFFIX(yrow + o * OH * OW, only_bias_##SUFFIX(bias, o, relu), OW); \
            continue;                                                                     \
        }                                                                                 \
        T *stage = scratch + (int64_t)npfcn_thread_id() * taps_c * SW;                    \
        stage_rows_##SUFFIX(x + n * C * H * W, x_mask ? x_mask + n * C * H * W : NULL,    \
                            stage, C, H, W, KH, oy, PH, PW, ox0, SW);                     \
        for (int64_t b = 0; b < blocks; ++b) {                                            \
            const int64_t nob = O - b * NPFCN_OB < NPFCN_OB ? O - b * NPFCN_OB : NPFCN_OB;\
            T *out[NPFCN_OB];                                                             \
            T bq[NPFCN_OB];                                                               \
            for (int64_t o = 0; o < NPFCN_OB; ++o) {                                      \
                out[o] = yrow + (b * NPFCN_OB + (o < nob ? o : 0)) * OH * OW;             \
                bq[o] = bias && o < nob ? bias[b * NPFCN_OB + o] : 0;                     \
            }                                                                             \
            for (int64_t o = 0; o < nob; ++o) {                                           \
                const T edge = only_bias_##SUFFIX(bias, b * NPFCN_OB + o, relu);          \
                fill_##SUFFIX(out[o], edge, ox0);                                         \
                fill_##SUFFIX(out[o] + ox1, edge, OW - ox1);                              \
            }                                                                             \
            const T *wblock = wb + b * taps_c * KW * NPFCN_OB;                            \
            for (int64_t s = 0; s < RX; s += NPFCN_VECTORS * VL) {                        \
                T *dst[NPFCN_OB];                                                         \
                const int64_t count = RX - s < NPFCN_VECTORS * VL ? RX - s : NPFCN_VECTORS * VL; \
                for (int o = 0; o < NPFCN_OB; ++o) dst[o] = out[o] + ox0 + s;             \
                if (KW == 3)        /* a constant: the tap loop unrolls */                \
                    direct_block_##SUFFIX##_##VL(stage, wblock, bq, taps_c, 3, SW, s, dst, nob, count); \
                else                                                                      \
                    direct_block_##SUFFIX##_##VL(stage, wblock, bq, taps_c, KW, SW, s, dst, nob, count); \
                for (int64_t o = 0; relu && o < nob; ++o)   /* fused ReLU, still in L1 */ \
                    for (int64_t v = 0; v < count; ++v)                                   \
                        dst[o][v] = relu_##SUFFIX(dst[o][v]);                             \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    npfcn_release_core(held);                                                            \
}

/* Stage the rows of the flat layout (see flat_rows_max) for output rows oy .. oy+R-1. */
#define NPFCN_STAGE_FLAT(T, SUFFIX)                                                       \
static void stage_flat_##SUFFIX(const T *xn, const T *maskn, T *stage, int64_t C,         \
                                int64_t H, int64_t W, int64_t KH, int64_t oy, int64_t R,  \
                                int64_t PH, int64_t PW, int64_t ox0, int64_t WP,          \
                                int64_t SW)                                               \
{                                                                                         \
    const int64_t first = ox0 - PW;     /* input column of position 0 of each row */     \
    int64_t s_lo = first < 0 ? -first : 0;                                                \
    int64_t s_hi = W - first < WP ? W - first : WP;                                       \
    if (s_lo > WP) s_lo = WP;                                                             \
    if (s_hi < s_lo) s_hi = s_lo;                                                         \
    for (int64_t c = 0; c < C; ++c)                                                       \
        for (int64_t i = 0; i < KH; ++i) {                                                \
            T *row = stage + (c * KH + i) * SW;                                           \
            for (int64_t r = 0; r < R; ++r) {                                             \
                T *seg = row + r * WP;                                                    \
                const int64_t iy = oy - PH + i + r;                                       \
                if (iy < 0 || iy >= H || s_lo == s_hi) {                                  \
                    memset(seg, 0, (size_t)WP * sizeof(T));                               \
                    continue;                                                             \
                }                                                                         \
                memset(seg, 0, (size_t)s_lo * sizeof(T));                                 \
                const int64_t at = (c * H + iy) * W + (s_lo + first);                     \
                copy_masked_##SUFFIX(seg + s_lo, xn + at, maskn ? maskn + at : NULL,      \
                                     s_hi - s_lo);                                        \
                memset(seg + s_hi, 0, (size_t)(WP - s_hi) * sizeof(T));                   \
            }                                                                             \
            memset(row + R * WP, 0, (size_t)(SW - R * WP) * sizeof(T));                   \
        }                                                                                 \
}

/* The forward pass in the flat layout: the same sums as direct_conv_forward, each
 * block's 3*VL outputs computed into a buffer and copied to the parts of y that are
 * outputs (positions q with q % WP < RX), through the ReLU when fused. */
#define NPFCN_DIRECT_FORWARD_FLAT(T, SUFFIX, NAME, TARGET, VL)                            \
TARGET                                                                                    \
static void NAME(const T *x, const T *x_mask, const T *wb, const T *bias,                 \
        T *y, int64_t relu, int64_t N, int64_t C,                                         \
        int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t PH, int64_t PW, \
        int64_t OH, int64_t OW, int64_t oy0, int64_t oy1, int64_t ox0, int64_t ox1,      \
        T *scratch)                                                                       \
{                                                                                         \
    const int64_t RX = ox1 - ox0, RY = oy1 - oy0, WP = RX + KW - 1;                       \
    const int64_t BL = NPFCN_VECTORS * VL, taps_c = C * KH;                               \
    const int64_t blocks = (O + NPFCN_OB - 1) / NPFCN_OB;                                 \
    const int64_t R_max = flat_rows_max(C, KH, WP, sizeof(T));                            \
    const int64_t slice = direct_conv_scratch_##SUFFIX(0, C, O, KH, KW, RX);              \
    /* at least two bands per thread where the rows allow it */                           \
    const int64_t want = 2 * npfcn_num_threads();                                         \
    int64_t R = RY > 0 ? RY : 1;                                                          \
    if (R > R_max) R = R_max;                                                             \
    if (N > 0 && N * ((RY + R - 1) / R) < want && RY > 1) {                               \
        const int64_t per_image = (want + N - 1) / N;                                     \
        const int64_t rows = (RY + per_image - 1) / per_image;                            \
        if (rows < R) R = rows > 0 ? rows : 1;                                            \
    }                                                                                     \
    const int64_t SW = flat_stage_row(R, WP, KW, BL);                                     \
    for (int64_t n = 0; n < N; ++n)      /* rows that see no input: just the bias */      \
        for (int64_t oy = 0; oy < OH; ++oy)                                               \
            if (oy < oy0 || oy >= oy1 || RX <= 0)                                         \
                for (int64_t o = 0; o < O; ++o)                                           \
                    fill_##SUFFIX(y + ((n * O + o) * OH + oy) * OW,                       \
                                  only_bias_##SUFFIX(bias, o, relu), OW);                 \
    if (RX <= 0 || RY <= 0)                                                               \
        return;                                                                           \
    const int64_t bands = (RY + R - 1) / R, tasks = N * bands;                            \
    int64_t task;                                                                         \
    const int64_t parallel = N * O * OH * OW > 8192;                                     \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (task = 0; task < tasks; ++task) {                                                \
        const int64_t n = task / bands, b0 = oy0 + (task % bands) * R;                    \
        const int64_t rows = oy1 - b0 < R ? oy1 - b0 : R, span = rows * WP;               \
        T *stage = scratch + (int64_t)npfcn_thread_id() * slice;                          \
        T *buffer = stage + taps_c * SW;                                                  \
        stage_flat_##SUFFIX(x + n * C * H * W, x_mask ? x_mask + n * C * H * W : NULL,    \
                            stage, C, H, W, KH, b0, rows, PH, PW, ox0, WP, SW);           \
        for (int64_t b = 0; b < blocks; ++b) {                                            \
            const int64_t nob = O - b * NPFCN_OB < NPFCN_OB ? O - b * NPFCN_OB : NPFCN_OB;\
            T bq[NPFCN_OB];                                                               \
            T *out[NPFCN_OB];                                                             \
            for (int64_t o = 0; o < NPFCN_OB; ++o) {                                      \
                bq[o] = bias && o < nob ? bias[b * NPFCN_OB + o] : 0;                     \
                out[o] = buffer + o * BL;                                                 \
            }                                                                             \
            for (int64_t o = 0; o < nob; ++o) {          /* columns that see no input */  \
                const T edge = only_bias_##SUFFIX(bias, b * NPFCN_OB + o, relu);          \
                for (int64_t r = 0; r < rows; ++r) {                                      \
                    T *yrow = y + ((n * O + b * NPFCN_OB + o) * OH + b0 + r) * OW;        \
                    fill_##SUFFIX(yrow, edge, ox0);                                       \
                    fill_##SUFFIX(yrow + ox1, edge, OW - ox1);                            \
                }                                                                         \
            }                                                                             \
            const T *wblock = wb + b * taps_c * KW * NPFCN_OB;                            \
            for (int64_t q0 = 0; q0 < span; q0 += BL) {                                   \
                if (KW == 3)        /* a constant: the tap loop unrolls */                \
                    direct_block_##SUFFIX##_##VL(stage, wblock, bq, taps_c, 3, SW, q0, out, nob, BL); \
                else                                                                      \
                    direct_block_##SUFFIX##_##VL(stage, wblock, bq, taps_c, KW, SW, q0, out, nob, BL); \
                const int64_t q1 = q0 + BL < span ? q0 + BL : span;                       \
                for (int64_t q = q0; q < q1;) {      /* the outputs among q0 .. q1-1 */   \
                    const int64_t r = q / WP, col = q % WP;                               \
                    const int64_t end = q1 - q < WP - col ? q1 : q + WP - col;            \
                    if (col < RX) {                                                       \
                        const int64_t count = (end - q < RX - col ? end - q : RX - col);  \
                        for (int64_t o = 0; o < nob; ++o) {                               \
                            T *dst = y + ((n * O + b * NPFCN_OB + o) * OH + b0 + r) * OW  \
                                     + ox0 + col;                                         \
                            const T *src = out[o] + (q - q0);                             \
                            if (relu)                                                     \
                                for (int64_t v = 0; v < count; ++v)                       \
                                    dst[v] = relu_##SUFFIX(src[v]);                       \
                            else                                                          \
                                memcpy(dst, src, (size_t)count * sizeof(T));              \
                        }                                                                 \
                    }                                                                     \
                    q = end;                                                              \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    npfcn_release_core(held);                                                            \
}

/* Elements of T a thread's scratch slice holds, rounded up to whole doubles. */
static int64_t npfcn_round8(int64_t elements, int64_t size)
{
    return (elements * size + 7) / 8 * 8 / size;
}

/* sum_v a[v] * b[v] for v < n, n a multiple of VL: four vectors of partial sums
 * (four independent chains keep the adder busy), then the VL lanes in double. */
#define NPFCN_DOT(T, SUFFIX, VEC, VL)                                                     \
NPFCN_INLINE VEC loadw_##SUFFIX(const T *p)                                              \
{                                                                                         \
    VEC v;                                                                                \
    memcpy(&v, p, sizeof v);                                                              \
    return v;                                                                             \
}                                                                                         \
NPFCN_INLINE double dot_##SUFFIX(const T *restrict a, const T *restrict b, int64_t n)   \
{                                                                                         \
    VEC s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                                           \
    int64_t k = 0;                                                                        \
    for (; k + 4 * VL <= n; k += 4 * VL) {                                                \
        s0 += loadw_##SUFFIX(a + k) * loadw_##SUFFIX(b + k);                                \
        s1 += loadw_##SUFFIX(a + k + VL) * loadw_##SUFFIX(b + k + VL);                      \
        s2 += loadw_##SUFFIX(a + k + 2 * VL) * loadw_##SUFFIX(b + k + 2 * VL);              \
        s3 += loadw_##SUFFIX(a + k + 3 * VL) * loadw_##SUFFIX(b + k + 3 * VL);              \
    }                                                                                     \
    for (; k < n; k += VL)                                                                \
        s0 += loadw_##SUFFIX(a + k) * loadw_##SUFFIX(b + k);                                \
    s0 = (s0 + s1) + (s2 + s3);                                                           \
    T lanes[VL];                                                                          \
    memcpy(lanes, &s0, sizeof s0);                                                        \
    double total = 0;                                                                     \
    for (int v = 0; v < VL; ++v) total += lanes[v];                                       \
    return total;                                                                         \
}

/* Twelve dot products at once: for the gradient rows g[0..3] and x shifted by
 * 0, 1, 2, sums[q][j] = sum_k g[q][k] * x[k + j], n a multiple of VL.  Seven
 * loads feed twelve multiply-adds in twelve independent chains (the latency
 * argument of direct_block); the lanes are added up in double.  Reads x up to
 * x[n + 1]: the staged block ends with zeros. */
#define NPFCN_DW3(T, SUFFIX, VEC, VL)                                                     \
NPFCN_INLINE double lanes_sum_##SUFFIX(VEC a)                                             \
{                                                                                         \
    T lanes[VL];                                                                          \
    memcpy(lanes, &a, sizeof a);                                                          \
    double total = 0;                                                                     \
    for (int v = 0; v < VL; ++v) total += lanes[v];                                       \
    return total;                                                                         \
}                                                                                         \
NPFCN_INLINE void dw3_##SUFFIX(const T *const g[NPFCN_OB], const T *restrict x,          \
                               int64_t n, double sums[NPFCN_OB][3])                       \
{                                                                                         \
    VEC a00 = {0}, a01 = {0}, a02 = {0}, a10 = {0}, a11 = {0}, a12 = {0};                 \
    VEC a20 = {0}, a21 = {0}, a22 = {0}, a30 = {0}, a31 = {0}, a32 = {0};                 \
    const T *restrict g0 = g[0], *restrict g1 = g[1];                                     \
    const T *restrict g2 = g[2], *restrict g3 = g[3];                                     \
    for (int64_t k = 0; k < n; k += VL) {                                                 \
        const VEC x0 = loadw_##SUFFIX(x + k), x1 = loadw_##SUFFIX(x + k + 1);             \
        const VEC x2 = loadw_##SUFFIX(x + k + 2);                                         \
        VEC u = loadw_##SUFFIX(g0 + k);                                                   \
        a00 += u * x0; a01 += u * x1; a02 += u * x2;                                      \
        u = loadw_##SUFFIX(g1 + k);                                                       \
        a10 += u * x0; a11 += u * x1; a12 += u * x2;                                      \
        u = loadw_##SUFFIX(g2 + k);                                                       \
        a20 += u * x0; a21 += u * x1; a22 += u * x2;                                      \
        u = loadw_##SUFFIX(g3 + k);                                                       \
        a30 += u * x0; a31 += u * x1; a32 += u * x2;                                      \
    }                                                                                     \
    sums[0][0] = lanes_sum_##SUFFIX(a00); sums[0][1] = lanes_sum_##SUFFIX(a01);           \
    sums[0][2] = lanes_sum_##SUFFIX(a02); sums[1][0] = lanes_sum_##SUFFIX(a10);           \
    sums[1][1] = lanes_sum_##SUFFIX(a11); sums[1][2] = lanes_sum_##SUFFIX(a12);           \
    sums[2][0] = lanes_sum_##SUFFIX(a20); sums[2][1] = lanes_sum_##SUFFIX(a21);           \
    sums[2][2] = lanes_sum_##SUFFIX(a22); sums[3][0] = lanes_sum_##SUFFIX(a30);           \
    sums[3][1] = lanes_sum_##SUFFIX(a31); sums[3][2] = lanes_sum_##SUFFIX(a32);           \
}

/* The same for 7x7 kernels (SegNet-Basic): 3 gradient rows x 7 shifts in 21
 * accumulators, each x vector loaded once and used by 3 multiply-adds, each g
 * vector by 7 (10 loads per 21 multiply-adds, where a dot product per weight
 * needs 2 per 1).  21 accumulators + 3 g + 1 x vectors need AVX-512's 32
 * registers: on AVX2 (16) they spill, so Python calls this only where the CPU has
 * AVX-512 (npfcn/kernels/direct.py).  Reads x up to x[n + 5]. */
#define NPFCN_DW7_OB 3
#define NPFCN_DW7_TAP(VEC, SUFFIX, J)                                                     \
    { const VEC xj = loadw_##SUFFIX(x + k + J);                                           \
      a0[J] += u0 * xj; a1[J] += u1 * xj; a2[J] += u2 * xj; }
#define NPFCN_DW7(T, SUFFIX, VEC, VL)                                                     \
NPFCN_INLINE void dw7_##SUFFIX(const T *const g[NPFCN_DW7_OB], const T *restrict x,      \
                               int64_t n, double sums[NPFCN_DW7_OB][7])                   \
{                                                                                         \
    VEC a0[7] = {{0}}, a1[7] = {{0}}, a2[7] = {{0}};                                      \
    const T *restrict g0 = g[0], *restrict g1 = g[1], *restrict g2 = g[2];               \
    for (int64_t k = 0; k < n; k += VL) {                                                 \
        const VEC u0 = loadw_##SUFFIX(g0 + k), u1 = loadw_##SUFFIX(g1 + k);               \
        const VEC u2 = loadw_##SUFFIX(g2 + k);                                            \
        NPFCN_DW7_TAP(VEC, SUFFIX, 0) NPFCN_DW7_TAP(VEC, SUFFIX, 1)                       \
        NPFCN_DW7_TAP(VEC, SUFFIX, 2) NPFCN_DW7_TAP(VEC, SUFFIX, 3)                       \
        NPFCN_DW7_TAP(VEC, SUFFIX, 4) NPFCN_DW7_TAP(VEC, SUFFIX, 5)                       \
        NPFCN_DW7_TAP(VEC, SUFFIX, 6)                                                     \
    }                                                                                     \
    for (int j = 0; j < 7; ++j) {                                                         \
        sums[0][j] = lanes_sum_##SUFFIX(a0[j]);                                           \
        sums[1][j] = lanes_sum_##SUFFIX(a1[j]);                                           \
        sums[2][j] = lanes_sum_##SUFFIX(a2[j]);                                           \
    }                                                                                     \
}

/* The weight gradient works on blocks of output rows (enough for dots of
 * NPFCN_DW_MIN_DOT elements), with the
 * staged input rows and dy's rows all GW = RX + KW - 1 apart and zero past their
 * data.  Then, flattened, dy's block g and input plane c line up so that
 *     dw[o, c, i, j] += dot(g[o], xs[c] + i*GW + j, n),  n = round_up(rows*GW, VL)
 * ONE long dot product per weight and block: g is zero wherever an output lies
 * outside the window (and from rows*GW to n), so the pairs that wrap into the next
 * row add nothing.  GW is not rounded up to the vector length: a 30-wide row
 * would then take 48 places, 30 of them useful, against 30 of 36.
 * Scratch per thread, in elements of T (direct_conv_scratch): the staged block
 * (C planes of rows+KH-1 rows, plus KW+VL zeros the last shifted reads run into),
 * dy's block (O planes of GP = round_up(block rows * GW, VL) values) and the
 * partial sums (doubles). */
/* The flat layout of the forward pass (direct_conv_forward_flat): a band of R output
 * rows is one sequence of R*WP positions, WP = RX + KW - 1 (each row followed by the
 * KW-1 positions a wider image would have), and blocks of 3*VL outputs run along it
 * across row ends.  Staged row (c*KH + i) holds input rows oy-PH+i .. oy-PH+i+R-1 side
 * by side, WP values each (zeros outside the image), so that output position q reads
 * staged row (c*KH + i) at q + j for tap (c, i, j), as the row layout does for one
 * row.  What this buys: a row's last block is no longer computed for a whole block
 * of outputs; 30-wide rows filled 62 % of 24-wide blocks, and fill 83 % of the flat
 * sequence (30 of 36).  R: as many rows as keep the stage near FLAT_STAGE_BYTES. */
#define NPFCN_FLAT_STAGE_BYTES (256 << 10)
static int64_t flat_rows_max(int64_t C, int64_t KH, int64_t WP, int64_t size)
{
    const int64_t per_row = C * KH * WP * size;
    const int64_t rows = per_row > 0 ? NPFCN_FLAT_STAGE_BYTES / per_row : 1;
    return rows > 1 ? rows : 1;
}

static int64_t flat_stage_row(int64_t R, int64_t WP, int64_t KW, int64_t block)
{
    return R * WP + block + KW;     /* the last block's reads, up to q + KW - 1 + block */
}

#define NPFCN_DW_MIN_DOT 2048   /* block rows: dots at least this long (or the image) */
#define NPFCN_DIRECT_SCRATCH(T, SUFFIX, VL)                                               \
static int64_t dw_row_##SUFFIX(int64_t RX, int64_t KW)                                    \
{                                                                                         \
    return (RX > 0 ? RX : 0) + KW - 1;                                                    \
}                                                                                         \
static int64_t dw_block_rows_##SUFFIX(int64_t RX, int64_t KW)                             \
{                                                                                         \
    const int64_t rows = (NPFCN_DW_MIN_DOT + dw_row_##SUFFIX(RX, KW) - 1) / dw_row_##SUFFIX(RX, KW); \
    return rows > 8 ? rows : 8;                                                           \
}                                                                                         \
static int64_t dw_stage_len_##SUFFIX(int64_t C, int64_t KH, int64_t KW, int64_t RX)       \
{                                                                                         \
    return npfcn_round8(C * (dw_block_rows_##SUFFIX(RX, KW) + KH - 1)                     \
                        * dw_row_##SUFFIX(RX, KW) + KW + VL, sizeof(T));                  \
}                                                                                         \
static int64_t dw_plane_##SUFFIX(int64_t RX, int64_t KW)     /* GP */                     \
{                                                                                         \
    const int64_t n = dw_block_rows_##SUFFIX(RX, KW) * dw_row_##SUFFIX(RX, KW);           \
    return (n + VL - 1) / VL * VL;                                                        \
}                                                                                         \
int64_t direct_conv_scratch_##SUFFIX(int64_t weight_grad, int64_t C, int64_t O,         \
                                     int64_t KH, int64_t KW, int64_t RX)                  \
{                                                                                         \
    if (!weight_grad) {     /* the flat layout's stage and block buffer (>= the row one's) */ \
        const int64_t WP = (RX > 0 ? RX : 0) + KW - 1;                                    \
        const int64_t R = flat_rows_max(C, KH, WP, sizeof(T));                            \
        return npfcn_round8(C * KH * flat_stage_row(R, WP, KW, NPFCN_VECTORS * VL)        \
                            + NPFCN_OB * NPFCN_VECTORS * VL, sizeof(T));                  \
    }                                                                                     \
    return dw_stage_len_##SUFFIX(C, KH, KW, RX)                                           \
         + npfcn_round8(O * dw_plane_##SUFFIX(RX, KW), sizeof(T))                          \
         + (O * C * KH * KW + O) * (int64_t)(sizeof(double) / sizeof(T));                 \
}

/* The weight gradient's register-blocked loops (dw3, dw7): OB gradient rows x TAPS
 * shifts per call of FN, for every input plane c and kernel row i.  Rows past O repeat
 * a real row (their sums are dropped).  Expanded inside direct_conv_weight_grad, whose
 * variables it uses. */
#define NPFCN_DW_BLOCKED(T, FN, OB, TAPS)                                                  \
    for (int64_t o = 0; o < O; o += (OB)) {                                               \
        const int64_t nob = O - o < (OB) ? O - o : (OB);                                  \
        const T *gq[OB];                                                                  \
        for (int64_t q = 0; q < (OB); ++q)                                                \
            gq[q] = g + (o + (q < nob ? q : 0)) * GP;                                     \
        for (int64_t c = 0; c < C; ++c)                                                   \
            for (int64_t i = 0; i < KH; ++i) {                                            \
                double sums[OB][TAPS];                                                    \
                FN(gq, stage + (c * rows_in + i) * GW, n_dot, sums);                      \
                for (int64_t q = 0; q < nob; ++q)                                         \
                    for (int64_t j = 0; j < (TAPS); ++j)                                  \
                        partial[(((o + q) * C + c) * KH + i) * (TAPS) + j] += sums[q][j]; \
            }                                                                             \
    }

/* VL: the layout's vector length (dots and dy's planes rounded to it, as the scratch);
 * VEC, of LANES elements (LANES divides VL): the vectors of the bias sums. */
#define NPFCN_DIRECT_WEIGHT_GRAD(T, SUFFIX, VEC, LANES, VL)                               \
NPFCN_CLONES                                                                              \
void direct_conv_weight_grad_##SUFFIX(const T *x, const T *dy, const T *dy_mask, T *dw,  \
        T *db, int64_t N,                                                                 \
        int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t PH,  \
        int64_t PW, int64_t OH, int64_t OW, int64_t oy0, int64_t oy1, int64_t ox0,       \
        int64_t ox1, T *scratch)                                                          \
{                                                                                         \
    const int64_t RX = ox1 - ox0, RY = oy1 - oy0, GW = dw_row_##SUFFIX(RX, KW);           \
    const int64_t wsize = O * C * KH * KW, threads = npfcn_num_threads();                 \
    const int wide_registers = NPFCN_HAS_AVX512();      /* dw7's 25 vectors fit */        \
    const int64_t stage_len = dw_stage_len_##SUFFIX(C, KH, KW, RX);                       \
    const int64_t BR = dw_block_rows_##SUFFIX(RX, KW);                                    \
    const int64_t GP = dw_plane_##SUFFIX(RX, KW);                                         \
    const int64_t g_len = npfcn_round8(O * GP, sizeof(T));                                \
    const int64_t slice = direct_conv_scratch_##SUFFIX(1, C, O, KH, KW, RX);              \
    for (int64_t t = 0; t < threads; ++t)   /* dw's partial sums, then db's */            \
        memset(scratch + t * slice + stage_len + g_len, 0, (size_t)(wsize + O) * sizeof(double)); \
    if (RX > 0 && RY > 0) {                                                               \
        const int64_t row_blocks = (RY + BR - 1) / BR;                                    \
        const int64_t tasks = N * row_blocks;                                             \
        int64_t task;                                                                     \
        const int64_t parallel = N * O * RY * RX > 8192;                                 \
        const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */           \
        _Pragma("omp parallel for schedule(static) if(parallel)")                        \
        for (task = 0; task < tasks; ++task) {                                            \
            const int64_t n = task / row_blocks;                                          \
            const int64_t first = oy0 + (task % row_blocks) * BR;                         \
            const int64_t rows = oy1 - first < BR ? oy1 - first : BR;                     \
            const int64_t rows_in = rows + KH - 1;                                        \
            const int64_t n_dot = (rows * GW + VL - 1) / VL * VL;                         \
            T *stage = scratch + (int64_t)npfcn_thread_id() * slice;                      \
            T *g = stage + stage_len;                                                     \
            double *partial = (double *)(g + g_len);                                      \
            /* input rows first-PH .. first-PH+rows_in-1; plane c at c*rows_in*GW */      \
            stage_rows_##SUFFIX(x + n * C * H * W, NULL, stage, C, H, W, rows_in, first,  \
                                PH, PW, ox0, GW);                                         \
            memset(stage + C * rows_in * GW, 0, (size_t)(KW + VL) * sizeof(T));          \
            for (int64_t o = 0; o < O; ++o) {                                             \
                memset(g + o * GP + rows * GW, 0, (size_t)(GP - rows * GW) * sizeof(T));  \
                for (int64_t r = 0; r < rows; ++r) {                                      \
                    T *gr = g + o * GP + r * GW;                                          \
                    const int64_t at = ((n * O + o) * OH + first + r) * OW + ox0;         \
                    copy_masked_##SUFFIX(gr, dy + at, dy_mask ? dy_mask + at : NULL, RX);  \
                    memset(gr + RX, 0, (size_t)(GW - RX) * sizeof(T));                    \
                    if (db) {           /* the bias gradient from the same staged row */  \
                        /* in vector lanes (a scalar sum would wait 4 cycles per add: no \
                         * -ffast-math to reorder it), then the lanes in double */        \
                        VEC lane_sums = {0};                                              \
                        int64_t k = 0;                                                    \
                        for (; k + LANES <= RX; k += LANES)                               \
                            lane_sums += loadw_##SUFFIX(gr + k);                          \
                        T lanes[LANES];                                                   \
                        memcpy(lanes, &lane_sums, sizeof lanes);                          \
                        for (int v = 0; v < LANES; ++v) partial[wsize + o] += lanes[v];   \
                        for (; k < RX; ++k) partial[wsize + o] += gr[k];                  \
                    }                                                                     \
                }                                                                         \
            }                                                                             \
            if (KW == 3)            /* VGG's 3x3: 4 channels x 3 shifts at once */        \
                NPFCN_DW_BLOCKED(T, dw3_##SUFFIX, NPFCN_OB, 3)                            \
            else if (KW == 7 && wide_registers)     /* SegNet-Basic's 7x7 */              \
                NPFCN_DW_BLOCKED(T, dw7_##SUFFIX, NPFCN_DW7_OB, 7)                        \
            else {                                                                        \
                for (int64_t o = 0; o < O; ++o)                                           \
                    for (int64_t c = 0; c < C; ++c)                                       \
                        for (int64_t i = 0; i < KH; ++i)                                  \
                            for (int64_t j = 0; j < KW; ++j)                              \
                                partial[((o * C + c) * KH + i) * KW + j] += dot_##SUFFIX( \
                                    g + o * GP, stage + (c * rows_in + i) * GW + j,       \
                                    n_dot);                                               \
            }                                                                             \
        }                                                                                 \
        npfcn_release_core(held);                                                        \
    }                                                                                     \
    for (int64_t k = 0; k < wsize + (db ? O : 0); ++k) {                                  \
        double total = 0;                                                                 \
        for (int64_t t = 0; t < threads; ++t)                                             \
            total += ((const double *)(scratch + t * slice + stage_len + g_len))[k];      \
        if (k < wsize)                                                                    \
            dw[k] += (T)total;                                                            \
        else                                                                              \
            db[k - wsize] += (T)total;                                                    \
    }                                                                                     \
}

NPFCN_FILL(float, f32)
NPFCN_FILL(double, f64)
NPFCN_RELU_VALUE(float, f32)
NPFCN_RELU_VALUE(double, f64)
NPFCN_COPY_MASKED(float, f32)
NPFCN_COPY_MASKED(double, f64)
NPFCN_STAGE_ROWS(float, f32)
NPFCN_STAGE_ROWS(double, f64)
NPFCN_STAGE_FLAT(float, f32)
NPFCN_STAGE_FLAT(double, f64)
NPFCN_ONLY_BIAS(float, f32)
NPFCN_ONLY_BIAS(double, f64)
/* The forward pass keeps 12 vector accumulators: in 64-byte vectors that is 12 of
 * AVX-512's 32 registers, but 24 of AVX2's 16 - the compiler spilled them to the
 * stack, and the AVX2 build ran several times slower (docs/kernels.md has the figures).
 * So it is built twice: 64-byte vectors for CPUs with AVX-512, 32-byte vectors
 * (12 of AVX2's 16 registers) for the rest, and each call takes the one the CPU
 * suits (direct_conv_vector_bytes).  The scratch is sized for the wider: its
 * stage rows are longer. */
typedef float npfcn_vf32 __attribute__((vector_size(64)));    /* 16 floats */
typedef double npfcn_vf64 __attribute__((vector_size(64)));   /* 8 doubles */
typedef float npfcn_vf32w __attribute__((vector_size(32)));   /* 8 floats */
typedef double npfcn_vf64w __attribute__((vector_size(32)));  /* 4 doubles */
NPFCN_DIRECT_BLOCK(float, f32, npfcn_vf32, 16)
NPFCN_DIRECT_BLOCK(double, f64, npfcn_vf64, 8)
NPFCN_DIRECT_BLOCK(float, f32, npfcn_vf32w, 8)
NPFCN_DIRECT_BLOCK(double, f64, npfcn_vf64w, 4)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NPFCN_AVX512 __attribute__((target("arch=x86-64-v4")))
#define NPFCN_HAS_AVX512() __builtin_cpu_supports("x86-64-v4")
#else
#define NPFCN_AVX512
#define NPFCN_HAS_AVX512() 0
#endif
NPFCN_DIRECT_FORWARD(float, f32, direct_conv_forward_f32_64, NPFCN_AVX512, 16)
NPFCN_DIRECT_FORWARD(double, f64, direct_conv_forward_f64_64, NPFCN_AVX512, 8)
NPFCN_DIRECT_FORWARD(float, f32, direct_conv_forward_f32_32, NPFCN_CLONES, 8)
NPFCN_DIRECT_FORWARD(double, f64, direct_conv_forward_f64_32, NPFCN_CLONES, 4)
NPFCN_DIRECT_FORWARD_FLAT(float, f32, direct_conv_forward_flat_f32_64, NPFCN_AVX512, 16)
NPFCN_DIRECT_FORWARD_FLAT(double, f64, direct_conv_forward_flat_f64_64, NPFCN_AVX512, 8)
NPFCN_DIRECT_FORWARD_FLAT(float, f32, direct_conv_forward_flat_f32_32, NPFCN_CLONES, 8)
NPFCN_DIRECT_FORWARD_FLAT(double, f64, direct_conv_forward_flat_f64_32, NPFCN_CLONES, 4)
/* The forward pass's vector width in bytes: 0 until the first call picks 64 where the
 * CPU has AVX-512, else 32.  direct_conv_vector_bytes(32 or 64) sets it (64 only where
 * the CPU can run it), so that tests run both builds on a CPU that has both;
 * direct_conv_vector_bytes(0) only reports it.  Returns the width in use. */
static int64_t npfcn_direct_bytes = 0;

int64_t direct_conv_vector_bytes(int64_t request)
{
    if (request == 32 || (request == 64 && NPFCN_HAS_AVX512()))
        npfcn_direct_bytes = request;
    else if (npfcn_direct_bytes == 0)
        npfcn_direct_bytes = NPFCN_HAS_AVX512() ? 64 : 32;
    return npfcn_direct_bytes;
}

/* width: the vector width in bytes this call wants (npfcn/kernels/direct.py chooses it
 * per layer); 64 runs the AVX-512 build only where it is allowed (see above), anything
 * else the 32-byte one.  flat: the flat layout (direct_conv_forward_flat) or rows. */
#define NPFCN_DIRECT_FORWARD_DISPATCH(T, SUFFIX)                                          \
void direct_conv_forward_##SUFFIX(const T *x, const T *x_mask, const T *wb, const T *bias, \
        T *y, int64_t relu, int64_t N, int64_t C,                                         \
        int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t PH, int64_t PW, \
        int64_t OH, int64_t OW, int64_t oy0, int64_t oy1, int64_t ox0, int64_t ox1,      \
        T *scratch, int64_t width, int64_t flat)                                          \
{                                                                                         \
    const int wide = width == 64 && direct_conv_vector_bytes(0) == 64;                    \
    (flat ? (wide ? direct_conv_forward_flat_##SUFFIX##_64 : direct_conv_forward_flat_##SUFFIX##_32) \
          : (wide ? direct_conv_forward_##SUFFIX##_64 : direct_conv_forward_##SUFFIX##_32))(\
        x, x_mask, wb, bias, y, relu, N, C, H, W, O, KH, KW, PH, PW, OH, OW,              \
        oy0, oy1, ox0, ox1, scratch);                                                     \
}
NPFCN_DIRECT_FORWARD_DISPATCH(float, f32)
NPFCN_DIRECT_FORWARD_DISPATCH(double, f64)
/* The weight gradient streams long rows with mostly unaligned loads (x shifted
 * by 1 and 2): in 32-byte vectors its loop ran 1.3-2x faster than in 64-byte
 * ones on AVX-512 (measured). */
NPFCN_DOT(float, f32, npfcn_vf32w, 8)
NPFCN_DOT(double, f64, npfcn_vf64w, 4)
NPFCN_DW3(float, f32, npfcn_vf32w, 8)
NPFCN_DW3(double, f64, npfcn_vf64w, 4)
NPFCN_DW7(float, f32, npfcn_vf32w, 8)
NPFCN_DW7(double, f64, npfcn_vf64w, 4)
NPFCN_DIRECT_SCRATCH(float, f32, 16)
NPFCN_DIRECT_SCRATCH(double, f64, 8)
NPFCN_DIRECT_WEIGHT_GRAD(float, f32, npfcn_vf32w, 8, 16)
NPFCN_DIRECT_WEIGHT_GRAD(double, f64, npfcn_vf64w, 4, 8)
