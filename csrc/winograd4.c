/* Winograd F(4x4, 3x3): the transforms of a 3x3, stride-1 convolution on 4x4
 * output tiles.
 *
 * Why this exists next to F(2x2, 3x3) (winograd.c): a 4x4 output tile is read
 * from a 6x6 input tile and costs 36 multiplications per channel pair instead
 * of 16 * 9 = 144, a 4x saving where F(2x2) saves 2.25x, and its transformed
 * tiles hold 36 values per 16 outputs instead of 16 per 4: the matrix products
 * do 0.56x the work of F(2x2)'s and the arrays that stream through memory are
 * 0.56x as large.  The price is precision: the transforms have coefficients up
 * to 8 (A) and 1/24 (G), so float32 results carry a few 1e-6 of relative error
 * instead of about 1e-7 (measured in tests/test_winograd.py).
 *
 * With the matrices (Lavin & Gray 2016, interpolation points 0, 1, -1, 2, -2)
 *
 *   B^T = | 4  0 -5  0  1  0 |   G = |  1/4     0     0  |   A^T = | 1  1  1  1  1  0 |
 *         | 0 -4 -4  1  1  0 |       | -1/6  -1/6  -1/6  |         | 0  1 -1  2 -2  0 |
 *         | 0  4 -4 -1  1  0 |       | -1/6   1/6  -1/6  |         | 0  1  1  4  4  0 |
 *         | 0 -2 -1  2  1  0 |       |  1/24  1/12  1/6  |         | 0  1 -1  8 -8  1 |
 *         | 0  2 -1 -2  1  0 |       |  1/24 -1/12  1/6  |
 *         | 0  4  0 -5  0  1 |       |  0     0     1    |
 *
 * a 4x4 output tile Y of the cross-correlation of a 6x6 input tile d with a
 * 3x3 filter g is  Y = A^T [ (G g G^T) * (B^T d B) ] A.  Everything else is as
 * in winograd.c, with 6x6 = 36 matrices instead of 16:
 *     M[xi] (O, T) = U[xi] (O, C) @ V[xi] (C, T),   xi = 6*r + s in 0..35
 * and the same six functions (x -> V, dV -> dx, M -> y, dy -> dM, w -> U,
 * dU -> dw).  Tile (ty, tx) covers output rows 4ty..4ty+3 and columns
 * 4tx..4tx+3 and reads input rows 4ty-PH .. 4ty-PH+5 (zero outside the image);
 * within a block of tile rows [t0, t1) the tiles are numbered
 * t = (n*(t1-t0) + ty-t0)*TW + tx, T = N*(t1-t0)*TW.  V and dV are (36, C, T),
 * M and dM are (36, O, T), U and dU are (36, O, C), w and dw are (O, C, 3, 3).
 *
 * The transforms of tiles are the 1-D transforms below applied down the columns
 * and along the rows, in loops over the tiles of a tile row that the compiler
 * vectorises; the weight transforms (once per filter, cheap) loop over the
 * matrices themselves.  Threads split the work
 * by (n, c) or (n, o) plane, or by chunks of filters: no two threads write one
 * element.  Each thread's scratch holds winograd4_scratch(TW) elements.
 */
#include <string.h>
#include "npfcn_kernels.h"

/* Built for AVX-512, AVX2 and baseline x86-64, the best picked at load time
 * (NPFCN_CLONES: the transforms are loops over the tiles of a row, and wider vectors
 * help them directly). */
#include "npfcn_cpu.h"

#define W4_M 4                  /* output tile side */
#define W4_A 6                  /* input tile side, W4_M + 3 - 1 */
#define W4_XI 36                /* transformed values per tile, W4_A * W4_A */
#define W4_CHUNK 64             /* filters transformed per staging round */

static const double W4_BT[W4_A][W4_A] = {
    {4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
    {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
static const double W4_G[W4_A][3] = {
    {1.0 / 4, 0, 0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
static const double W4_AT[W4_M][W4_A] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};

/* The 1-D transforms, written out (a loop over the constant matrices kept its
 * zero tests and multiplications at run time: 5x slower).  Each maps the six
 * (or four) values i0.. to o0..; the 2-D transforms apply them down the
 * columns and then along the rows of a tile. */
#define W4_BT6(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, o4, o5)   /* B^T d */            \
    do { o0 = 4 * (i0) - 5 * (i2) + (i4);                                                \
         o1 = (i3) + (i4) - 4 * ((i1) + (i2));                                           \
         o2 = 4 * ((i1) - (i2)) + (i4) - (i3);                                           \
         o3 = 2 * ((i3) - (i1)) + (i4) - (i2);                                           \
         o4 = 2 * ((i1) - (i3)) + (i4) - (i2);                                           \
         o5 = 4 * (i1) - 5 * (i3) + (i5); } while (0)
#define W4_B6(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, o4, o5)    /* B g: the adjoint */ \
    do { o0 = 4 * (i0);                                                                  \
         o1 = 4 * ((i2) - (i1) + (i5)) + 2 * ((i4) - (i3));                              \
         o2 = -5 * (i0) - 4 * ((i1) + (i2)) - (i3) - (i4);                               \
         o3 = (i1) - (i2) + 2 * ((i3) - (i4)) - 5 * (i5);                                \
         o4 = (i0) + (i1) + (i2) + (i3) + (i4);                                          \
         o5 = (i5); } while (0)
#define W4_AT6(i0, i1, i2, i3, i4, i5, o0, o1, o2, o3)           /* A^T m */            \
    do { o0 = (i0) + (i1) + (i2) + (i3) + (i4);                                          \
         o1 = (i1) - (i2) + 2 * ((i3) - (i4));                                           \
         o2 = (i1) + (i2) + 4 * ((i3) + (i4));                                           \
         o3 = (i1) - (i2) + 8 * ((i3) - (i4)) + (i5); } while (0)
#define W4_A4(i0, i1, i2, i3, o0, o1, o2, o3, o4, o5)            /* A y: the adjoint */ \
    do { o0 = (i0);                                                                      \
         o1 = (i0) + (i1) + (i2) + (i3);                                                 \
         o2 = (i0) - (i1) + (i2) - (i3);                                                 \
         o3 = (i0) + 2 * (i1) + 4 * (i2) + 8 * (i3);                                     \
         o4 = (i0) - 2 * (i1) + 4 * (i2) - 8 * (i3);                                     \
         o5 = (i3); } while (0)

/* Elements of scratch one thread needs for TW tiles per row: two areas of
 * 24*(TW+1) (6 rows of the tile row's width 4*TW+2, or 6 rows x 4 phases of
 * TW+1), the 36 staged matrices' rows and 24 rows of intermediate products (all
 * TW long). */
int64_t winograd4_scratch(int64_t TW)
{
    return 2 * 24 * (TW + 1) + (W4_XI + 24) * TW;
}

/* This thread's scratch: a and b (24*(TW+1) each), stage[36][TW], q[24][TW]. */
#define W4_SCRATCH(T)                                                                    \
    const int64_t width = W4_M * TW + 2;                                                 \
    T *a_rows = scratch + (int64_t)npfcn_thread_id() * winograd4_scratch(TW);            \
    T *b_rows = a_rows + 24 * (TW + 1);                                                  \
    T *stage = b_rows + 24 * (TW + 1);                                                   \
    T *q_rows = stage + W4_XI * TW;

/* V = B^T d B for every tile of the block. */
#define W4_INPUT(T, SUFFIX)                                                              \
NPFCN_CLONES                                                                                \
void winograd4_input_##SUFFIX(const T *x, T *V, int64_t N, int64_t C, int64_t H,        \
                              int64_t W, int64_t PH, int64_t PW, int64_t t0, int64_t t1, \
                              int64_t TW, T *scratch)                                    \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * C;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 1024;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        W4_SCRATCH(T)                                                                    \
        (void)q_rows;                                                                    \
        const int64_t n = plane / C, c = plane % C;                                      \
        const T *src = x + plane * H * W;                                                \
        /* padded column `col` is image column col - PW; [lo, hi) hold pixels */        \
        const int64_t lo = PW < width ? PW : width;                                      \
        const int64_t hi = PW + W < width ? PW + W : width;                              \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            /* The tile row's 6 input rows, each split into 4 phases: padded column  \
             * 4t + r goes to d[p][r][t] (t < TW + 1).  Tile tx then reads its 6     \
             * columns 4tx .. 4tx+5 as phases 0-3 at t = tx and 0-1 at t = tx + 1:     \
             * contiguous in tx, so the transforms below vectorise (`ivdep`: the      \
             * compiler cannot tell the scratch rows apart by itself).  Measured on   \
             * one core, 64 channels at 224x224: 2.6x F(2x2)'s input transform time   \
             * per output when scalar, on par vectorised. */                            \
            const int64_t PL = TW + 1;             /* phase length */                    \
            T *restrict d = a_rows, *restrict z = b_rows;   /* restrict: vectorise */   \
            T *row = q_rows;                       /* one padded row, 4*PL long */       \
            for (int64_t p = 0; p < W4_A; ++p) {                                         \
                T *restrict ph = d + p * 4 * PL;                                         \
                const int64_t iy = W4_M * ty - PH + p;                                   \
                if (iy < 0 || iy >= H || hi <= lo) {                                     \
                    memset(ph, 0, (size_t)(4 * PL) * sizeof(T));                         \
                    continue;                                                            \
                }                                                                        \
                memset(row, 0, (size_t)lo * sizeof(T));                                  \
                memcpy(row + lo, src + iy * W + (lo - PW), (size_t)(hi - lo) * sizeof(T)); \
                memset(row + hi, 0, (size_t)(4 * PL - hi) * sizeof(T));                  \
                for (int64_t t = 0; t < PL; ++t) {  /* split into the 4 phases */        \
                    ph[t] = row[4 * t];                                                  \
                    ph[PL + t] = row[4 * t + 1];                                         \
                    ph[2 * PL + t] = row[4 * t + 2];                                     \
                    ph[3 * PL + t] = row[4 * t + 3];                                     \
                }                                                                        \
            }                                                                            \
            /* B^T down the columns (every phase value alike): z[k] = sum_p B^T[k][p] d[p] */ \
            _Pragma("GCC ivdep")                                                        \
            for (int64_t i = 0; i < 4 * PL; ++i) {                                       \
                const T *dc = d + i;                                                     \
                T *zc = z + i;                                                           \
                W4_BT6(dc[0], dc[4 * PL], dc[8 * PL], dc[12 * PL], dc[16 * PL],          \
                       dc[20 * PL], zc[0], zc[4 * PL], zc[8 * PL], zc[12 * PL],          \
                       zc[16 * PL], zc[20 * PL]);                                        \
            }                                                                            \
            /* ... then B along each row, tile by tile: stage[6k + s][tx] */             \
            for (int k = 0; k < W4_A; ++k) {                                             \
                const T *z0 = z + k * 4 * PL, *z1 = z0 + PL, *z2 = z1 + PL, *z3 = z2 + PL; \
                T *restrict v = stage + (W4_A * k) * TW;                                          \
                _Pragma("GCC ivdep")                                                    \
                for (int64_t tx = 0; tx < TW; ++tx)                                      \
                    W4_BT6(z0[tx], z1[tx], z2[tx], z3[tx], z0[tx + 1], z1[tx + 1], v[tx], \
                           v[TW + tx], v[2 * TW + tx], v[3 * TW + tx], v[4 * TW + tx],   \
                           v[5 * TW + tx]);                                              \
            }                                                                            \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < W4_XI; ++xi)                                       \
                memcpy(V + (xi * C + c) * T_ + base, stage + xi * TW, (size_t)TW * sizeof(T)); \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* dx += the adjoint of winograd4_input: each tile's B dV B^T added back onto the
 * 6x6 input window it came from (the windows of neighbouring tiles overlap). */
#define W4_INPUT_ADJ(T, SUFFIX)                                                          \
NPFCN_CLONES                                                                                \
void winograd4_input_adj_##SUFFIX(const T *dV, T *dx, int64_t N, int64_t C, int64_t H,  \
                                  int64_t W, int64_t PH, int64_t PW, int64_t t0,         \
                                  int64_t t1, int64_t TW, T *scratch)                    \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * C;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 1024;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        W4_SCRATCH(T)                                                                    \
        (void)q_rows;                                                                    \
        const int64_t n = plane / C, c = plane % C;                                      \
        T *dst = dx + plane * H * W;                                                     \
        const int64_t lo = PW < width ? PW : width;                                      \
        const int64_t hi = PW + W < width ? PW + W : width;                              \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < W4_XI; ++xi)                                       \
                memcpy(stage + xi * TW, dV + (xi * C + c) * T_ + base, (size_t)TW * sizeof(T)); \
            /* B along each row: e[r][4tx + q] += (B dV[6r + .])[q] (tiles overlap) */    \
            T *restrict e = a_rows, *restrict dd = b_rows;                                                 \
            memset(e, 0, (size_t)(W4_A * width) * sizeof(T));                            \
            for (int r = 0; r < W4_A; ++r) {                                             \
                T *er = e + r * width;                                                   \
                const T *restrict g = stage + (W4_A * r) * TW;                           \
                for (int64_t tx = 0; tx < TW; ++tx) {                                    \
                    T o0, o1, o2, o3, o4, o5;                                            \
                    W4_B6(g[tx], g[TW + tx], g[2 * TW + tx], g[3 * TW + tx],             \
                          g[4 * TW + tx], g[5 * TW + tx], o0, o1, o2, o3, o4, o5);       \
                    T *q = er + W4_M * tx;                                               \
                    q[0] += o0; q[1] += o1; q[2] += o2; q[3] += o3; q[4] += o4; q[5] += o5; \
                }                                                                        \
            }                                                                            \
            /* ... and down the columns: dd[p] = (B e[.])[p] */                          \
            _Pragma("GCC ivdep")                                                         \
            for (int64_t col = 0; col < width; ++col) {                                  \
                const T *ec = e + col;                                                   \
                T *dc = dd + col;                                                        \
                W4_B6(ec[0], ec[width], ec[2 * width], ec[3 * width], ec[4 * width],     \
                      ec[5 * width], dc[0], dc[width], dc[2 * width], dc[3 * width],     \
                      dc[4 * width], dc[5 * width]);                                     \
            }                                                                            \
            for (int p = 0; p < W4_A; ++p) {                                             \
                const int64_t iy = W4_M * ty - PH + p;                                   \
                if (iy < 0 || iy >= H) continue;                                         \
                T *line = dst + iy * W + (lo - PW);                                      \
                const T *src = dd + p * width + lo;                                      \
                for (int64_t col = 0; col < hi - lo; ++col) line[col] += src[col];       \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* y = A^T M A for every tile, clipped to the OH x OW output. */
#define W4_OUTPUT(T, SUFFIX)                                                             \
NPFCN_CLONES                                                                                \
void winograd4_output_##SUFFIX(const T *M, T *y, int64_t N, int64_t O, int64_t OH,      \
                               int64_t OW, int64_t t0, int64_t t1, int64_t TW,           \
                               T *scratch)                                               \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * O;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 1024;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        W4_SCRATCH(T)                                                                    \
        const int64_t n = plane / O, o = plane % O;                                      \
        T *dst = y + plane * OH * OW;                                                    \
        T *out = a_rows;            /* 4 output rows of 4*TW columns */                  \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < W4_XI; ++xi)                                       \
                memcpy(stage + xi * TW, M + (xi * O + o) * T_ + base, (size_t)TW * sizeof(T)); \
            /* q[a][s] = (A^T M)[a][s] for every tile (q_rows[6a + s][tx]) */            \
            for (int s = 0; s < W4_A; ++s) {                                             \
                const T *restrict m = stage + s * TW;         /* M[r][s] at r*6*TW */    \
                T *restrict q = q_rows + s * TW;                       /* q[a][s] at a*6*TW */    \
                _Pragma("GCC ivdep")                                                     \
                for (int64_t tx = 0; tx < TW; ++tx)                                      \
                    W4_AT6(m[tx], m[6 * TW + tx], m[12 * TW + tx], m[18 * TW + tx],      \
                           m[24 * TW + tx], m[30 * TW + tx], q[tx], q[6 * TW + tx],      \
                           q[12 * TW + tx], q[18 * TW + tx]);                            \
            }                                                                            \
            /* Y[a][b] = (q A)[a][b], into out[a][4tx + b] */                            \
            for (int a = 0; a < W4_M; ++a) {                                             \
                const T *restrict q = q_rows + (W4_A * a) * TW;                          \
                T *restrict o = out + a * W4_M * TW;                                              \
                _Pragma("GCC ivdep")                                                     \
                for (int64_t tx = 0; tx < TW; ++tx)                                      \
                    W4_AT6(q[tx], q[TW + tx], q[2 * TW + tx], q[3 * TW + tx],            \
                           q[4 * TW + tx], q[5 * TW + tx], o[4 * tx], o[4 * tx + 1],     \
                           o[4 * tx + 2], o[4 * tx + 3]);                                \
            }                                                                            \
            for (int a = 0; a < W4_M; ++a) {                                             \
                const int64_t oy = W4_M * ty + a;                                        \
                if (oy < OH)                                                             \
                    memcpy(dst + oy * OW, out + a * W4_M * TW, (size_t)OW * sizeof(T));  \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* dM = A dY A^T for every tile, where dY is the tile's 4x4 of dy (0 outside). */
#define W4_OUTPUT_ADJ(T, SUFFIX)                                                         \
NPFCN_CLONES                                                                                \
void winograd4_output_adj_##SUFFIX(const T *dy, T *dM, int64_t N, int64_t O, int64_t OH, \
                                   int64_t OW, int64_t t0, int64_t t1, int64_t TW,       \
                                   T *scratch)                                           \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * O;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 1024;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        W4_SCRATCH(T)                                                                    \
        const int64_t n = plane / O, o = plane % O;                                      \
        const T *src = dy + plane * OH * OW;                                             \
        T *rows4 = a_rows;          /* the tile row's 4 rows of dy, zero past OW/OH */   \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            for (int a = 0; a < W4_M; ++a) {                                             \
                T *row = rows4 + a * W4_M * TW;                                          \
                const int64_t oy = W4_M * ty + a;                                        \
                if (oy < OH) {                                                           \
                    memcpy(row, src + oy * OW, (size_t)OW * sizeof(T));                  \
                    memset(row + OW, 0, (size_t)(W4_M * TW - OW) * sizeof(T));           \
                } else {                                                                 \
                    memset(row, 0, (size_t)(W4_M * TW) * sizeof(T));                     \
                }                                                                        \
            }                                                                            \
            /* p[a][s] = (dY[a][.] A^T)[s]: A applied along each row (q_rows[6a + s]) */ \
            for (int a = 0; a < W4_M; ++a) {                                             \
                const T *restrict row = rows4 + a * W4_M * TW;                           \
                T *restrict p = q_rows + (W4_A * a) * TW;                                         \
                _Pragma("GCC ivdep")                                                     \
                for (int64_t tx = 0; tx < TW; ++tx) {                                    \
                    const T *yv = row + W4_M * tx;                                       \
                    W4_A4(yv[0], yv[1], yv[2], yv[3], p[tx], p[TW + tx], p[2 * TW + tx], \
                          p[3 * TW + tx], p[4 * TW + tx], p[5 * TW + tx]);               \
                }                                                                        \
            }                                                                            \
            /* dM[r][s] = (A p[.][s])[r], into stage[6r + s] */                          \
            for (int s = 0; s < W4_A; ++s) {                                             \
                const T *restrict p = q_rows + s * TW;        /* p[a][s] at a*6*TW */    \
                T *restrict m = stage + s * TW;                        /* dM[r][s] at r*6*TW */   \
                _Pragma("GCC ivdep")                                                     \
                for (int64_t tx = 0; tx < TW; ++tx)                                      \
                    W4_A4(p[tx], p[6 * TW + tx], p[12 * TW + tx], p[18 * TW + tx],       \
                          m[tx], m[6 * TW + tx], m[12 * TW + tx], m[18 * TW + tx],       \
                          m[24 * TW + tx], m[30 * TW + tx]);                             \
            }                                                                            \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < W4_XI; ++xi)                                       \
                memcpy(dM + (xi * O + o) * T_ + base, stage + xi * TW, (size_t)TW * sizeof(T)); \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* U[xi][o][c] = (G g G^T)[xi] for every filter g = w[o][c] (3x3), and the
 * adjoint dw[o][c] += G^T dU[.][o][c] G; dU: (36, O, C). */
#define W4_WEIGHT(T, SUFFIX)                                                             \
void winograd4_weight_##SUFFIX(const T *w, T *U, int64_t O, int64_t C)                  \
{                                                                                        \
    const int64_t pairs = O * C, chunks = (pairs + W4_CHUNK - 1) / W4_CHUNK;             \
    int64_t chunk;                                                                       \
    const int64_t parallel = pairs > 16384;                                             \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (chunk = 0; chunk < chunks; ++chunk) {                                           \
        T stage[W4_XI][W4_CHUNK];                                                        \
        const int64_t q0 = chunk * W4_CHUNK;                                             \
        const int64_t count = pairs - q0 < W4_CHUNK ? pairs - q0 : W4_CHUNK;             \
        for (int64_t i = 0; i < count; ++i) {                                            \
            const T *g = w + (q0 + i) * 9;                                               \
            T h[W4_A][3];           /* h = G g */                                        \
            for (int r = 0; r < W4_A; ++r)                                               \
                for (int v = 0; v < 3; ++v) {                                            \
                    T sum = 0;                                                           \
                    for (int k = 0; k < 3; ++k)                                          \
                        if (W4_G[r][k] != 0) sum += (T)W4_G[r][k] * g[3 * k + v];        \
                    h[r][v] = sum;                                                       \
                }                                                                        \
            for (int r = 0; r < W4_A; ++r)  /* (h G^T)[r][s] */                         \
                for (int s = 0; s < W4_A; ++s) {                                         \
                    T sum = 0;                                                           \
                    for (int v = 0; v < 3; ++v)                                          \
                        if (W4_G[s][v] != 0) sum += h[r][v] * (T)W4_G[s][v];             \
                    stage[W4_A * r + s][i] = sum;                                        \
                }                                                                        \
        }                                                                                \
        for (int xi = 0; xi < W4_XI; ++xi)                                               \
            memcpy(U + xi * pairs + q0, stage[xi], (size_t)count * sizeof(T));           \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}                                                                                        \
                                                                                         \
void winograd4_weight_adj_##SUFFIX(const T *dU, T *dw, int64_t O, int64_t C)            \
{                                                                                        \
    const int64_t pairs = O * C, chunks = (pairs + W4_CHUNK - 1) / W4_CHUNK;             \
    int64_t chunk;                                                                       \
    const int64_t parallel = pairs > 16384;                                             \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (chunk = 0; chunk < chunks; ++chunk) {                                           \
        T stage[W4_XI][W4_CHUNK];                                                        \
        const int64_t q0 = chunk * W4_CHUNK;                                             \
        const int64_t count = pairs - q0 < W4_CHUNK ? pairs - q0 : W4_CHUNK;             \
        for (int xi = 0; xi < W4_XI; ++xi)                                               \
            memcpy(stage[xi], dU + xi * pairs + q0, (size_t)count * sizeof(T));          \
        for (int64_t i = 0; i < count; ++i) {                                            \
            T h[W4_A][3];           /* h = dU G, row by row */                           \
            for (int r = 0; r < W4_A; ++r)                                               \
                for (int v = 0; v < 3; ++v) {                                            \
                    T sum = 0;                                                           \
                    for (int s = 0; s < W4_A; ++s)                                       \
                        if (W4_G[s][v] != 0) sum += stage[W4_A * r + s][i] * (T)W4_G[s][v]; \
                    h[r][v] = sum;                                                       \
                }                                                                        \
            T *g = dw + (q0 + i) * 9;                                                    \
            for (int k = 0; k < 3; ++k)     /* G^T h */                                  \
                for (int v = 0; v < 3; ++v) {                                            \
                    T sum = 0;                                                           \
                    for (int r = 0; r < W4_A; ++r)                                       \
                        if (W4_G[r][k] != 0) sum += (T)W4_G[r][k] * h[r][v];             \
                    g[3 * k + v] += sum;                                                 \
                }                                                                        \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

W4_INPUT(float, f32)
W4_INPUT(double, f64)
W4_INPUT_ADJ(float, f32)
W4_INPUT_ADJ(double, f64)
W4_OUTPUT(float, f32)
W4_OUTPUT(double, f64)
W4_OUTPUT_ADJ(float, f32)
W4_OUTPUT_ADJ(double, f64)
W4_WEIGHT(float, f32)
W4_WEIGHT(double, f64)
