/* Winograd F(2x2, 3x3): the transforms of a 3x3, stride-1 convolution.
 *
 * Why this exists: a 3x3 convolution computed on 2x2 output tiles needs 16
 * multiplications per tile and channel pair instead of 36 (Lavin & Gray, "Fast
 * Algorithms for Convolutional Neural Networks", 2016).  With
 *
 *        | 1  0 -1  0 |         | 1    0    0  |
 *  B^T = | 0  1  1  0 |     G = | 1/2  1/2  1/2|     A^T = | 1  1  1  0 |
 *        | 0 -1  1  0 |         | 1/2 -1/2  1/2|           | 0  1 -1 -1 |
 *        | 0  1  0 -1 |         | 0    0    1  |
 *
 * a 2x2 output tile Y of the cross-correlation of a 4x4 input tile d with a
 * 3x3 filter g is  Y = A^T [ (G g G^T) * (B^T d B) ] A  (elementwise *).
 * Summed over input channels, the 16 elementwise products become 16 matrix
 * products, done by BLAS in Python (npfcn/kernels/winograd.py):
 *     M[xi] (O, T) = U[xi] (O, C) @ V[xi] (C, T),   xi = 4*r + s in 0..15
 * where U = G g G^T (weights), V = B^T d B (input tiles), T = number of tiles.
 * This file holds the cheap, memory-bound parts: the transforms and their
 * adjoints (the backward pass is the transpose of each linear step):
 *     winograd_input      x  -> V          (B^T d B for every tile)
 *     winograd_input_adj  dV -> dx  (adds)  (B dV B^T, scattered back)
 *     winograd_output     M  -> y          (A^T M A, clipped at the edges)
 *     winograd_output_adj dy -> dM         (A dY A^T, zero outside the image)
 *     winograd_weight     w  -> U          (G g G^T)
 *     winograd_weight_adj dU -> dw  (adds)  (G^T dU G)
 *
 * Layouts.  Tile (ty, tx) covers output rows 2ty, 2ty+1 and columns 2tx,
 * 2tx+1, and input rows 2ty-PH .. 2ty-PH+3 (zero outside the image).  The
 * caller passes a block of tile rows [t0, t1) and TW tiles per row; within a
 * block the tiles of image n are numbered  t = (n*(t1-t0) + ty-t0)*TW + tx,
 * and T = N*(t1-t0)*TW.  V and dV are (16, C, T), M and dM are (16, O, T),
 * U and dU are (16, O, C), w and dw are (O, C, 3, 3).
 *
 * Threads: every function splits the work by (n, c) plane (or by (o, c) for
 * the weights), so no two threads write the same element.
 *
 * Staging.  The 16 matrices of V or M lie C*T (or O*T) elements apart; when
 * that distance is a multiple of 4 KiB (64 channels and 1008 tiles, say) the
 * 16 rows a tile touches all fall into the same L1 cache set and evict each
 * other on every store: measured 15x slower.  So each tile row is first
 * transformed into a small per-thread buffer, stage[16][TW], and moved to or
 * from the big arrays with one memcpy per matrix.  `scratch` holds, per
 * thread, 4 + 4 rows of 2*TW+2 and the 16 rows of TW: 32*(TW+1) elements.
 */
#include <string.h>
#include "npfcn_kernels.h"

#define NPFCN_WINO_CHUNK 64   /* filters transformed per staging round */

/* Elements of scratch one thread needs for TW tiles per row (see "Staging"). */
int64_t winograd_scratch(int64_t TW)
{
    return 32 * (TW + 1);
}

/* This thread's scratch: rows a[4][width], b[4][width], stage[16][TW]. */
#define NPFCN_WINO_SCRATCH(T)                                                            \
    const int64_t width = 2 * TW + 2;                                                    \
    T *a_rows = scratch + (int64_t)npfcn_thread_id() * winograd_scratch(TW);             \
    T *b_rows = a_rows + 4 * width;                                                      \
    T *stage = b_rows + 4 * width;

#define NPFCN_WINO_INPUT(T, SUFFIX)                                                      \
void winograd_input_##SUFFIX(const T *x, T *V, int64_t N, int64_t C, int64_t H,         \
                             int64_t W, int64_t PH, int64_t PW, int64_t t0, int64_t t1, \
                             int64_t TW, T *scratch)                                     \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * C;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 4096;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        NPFCN_WINO_SCRATCH(T)                                                            \
        const int64_t n = plane / C, c = plane % C;                                      \
        const T *src = x + plane * H * W;                                                \
        /* padded column `col` is image column col - PW; [lo, hi) hold pixels */        \
        const int64_t lo = PW < width ? PW : width;                                      \
        const int64_t hi = PW + W < width ? PW + W : width;                              \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            T *d = a_rows, *z = b_rows;                                                  \
            for (int64_t k = 0; k < 4; ++k) {   /* the tile row's 4 input rows */        \
                T *row = d + k * width;                                                  \
                const int64_t iy = 2 * ty - PH + k;                                      \
                if (iy < 0 || iy >= H || hi <= lo) {                                     \
                    memset(row, 0, (size_t)width * sizeof(T));                           \
                    continue;                                                            \
                }                                                                        \
                memset(row, 0, (size_t)lo * sizeof(T));                                  \
                memcpy(row + lo, src + iy * W + (lo - PW), (size_t)(hi - lo) * sizeof(T)); \
                memset(row + hi, 0, (size_t)(width - hi) * sizeof(T));                   \
            }                                                                            \
            /* B^T down the columns: z[k] = sum_p B^T[k][p] d[p] */                      \
            for (int64_t col = 0; col < width; ++col) {                                  \
                const T d0 = d[col], d1 = d[width + col];                                \
                const T d2 = d[2 * width + col], d3 = d[3 * width + col];                \
                z[col] = d0 - d2;                                                        \
                z[width + col] = d1 + d2;                                                \
                z[2 * width + col] = d2 - d1;                                            \
                z[3 * width + col] = d1 - d3;                                            \
            }                                                                            \
            /* ... then B along each row, tile by tile, into stage[4k + s] */            \
            for (int64_t k = 0; k < 4; ++k) {                                            \
                const T *zk = z + k * width;                                             \
                T *v0 = stage + (4 * k) * TW, *v1 = v0 + TW, *v2 = v1 + TW, *v3 = v2 + TW; \
                for (int64_t tx = 0; tx < TW; ++tx) {                                    \
                    const T e0 = zk[2 * tx], e1 = zk[2 * tx + 1];                        \
                    const T e2 = zk[2 * tx + 2], e3 = zk[2 * tx + 3];                    \
                    v0[tx] = e0 - e2;                                                    \
                    v1[tx] = e1 + e2;                                                    \
                    v2[tx] = e2 - e1;                                                    \
                    v3[tx] = e1 - e3;                                                    \
                }                                                                        \
            }                                                                            \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < 16; ++xi)                                          \
                memcpy(V + (xi * C + c) * T_ + base, stage + xi * TW, (size_t)TW * sizeof(T)); \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* dx += the adjoint of winograd_input: each tile's B dV B^T added back onto
 * the 4x4 input window it came from (windows of neighbouring tiles overlap). */
#define NPFCN_WINO_INPUT_ADJ(T, SUFFIX)                                                  \
void winograd_input_adj_##SUFFIX(const T *dV, T *dx, int64_t N, int64_t C, int64_t H,   \
                                 int64_t W, int64_t PH, int64_t PW, int64_t t0,          \
                                 int64_t t1, int64_t TW, T *scratch)                     \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * C;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 4096;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        NPFCN_WINO_SCRATCH(T)                                                            \
        const int64_t n = plane / C, c = plane % C;                                      \
        T *dst = dx + plane * H * W;                                                     \
        const int64_t lo = PW < width ? PW : width;                                      \
        const int64_t hi = PW + W < width ? PW + W : width;                              \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < 16; ++xi)                                          \
                memcpy(stage + xi * TW, dV + (xi * C + c) * T_ + base, (size_t)TW * sizeof(T)); \
            /* B^T's transpose along each row: e[r][2tx + q] += sum_s B^T[s][q] dV[r][s] */ \
            T *e = a_rows, *dd = b_rows;                                                 \
            memset(e, 0, (size_t)(4 * width) * sizeof(T));                               \
            for (int64_t r = 0; r < 4; ++r) {                                            \
                T *er = e + r * width;                                                   \
                const T *g0 = stage + (4 * r) * TW, *g1 = g0 + TW, *g2 = g1 + TW, *g3 = g2 + TW; \
                for (int64_t tx = 0; tx < TW; ++tx) {                                    \
                    er[2 * tx] += g0[tx];                                                \
                    er[2 * tx + 1] += g1[tx] - g2[tx] + g3[tx];                          \
                    er[2 * tx + 2] += g1[tx] + g2[tx] - g0[tx];                          \
                    er[2 * tx + 3] -= g3[tx];                                            \
                }                                                                        \
            }                                                                            \
            /* ... and down the columns: dd[p] = sum_r B^T[r][p] e[r] */                 \
            for (int64_t col = 0; col < width; ++col) {                                  \
                const T e0 = e[col], e1 = e[width + col];                                \
                const T e2 = e[2 * width + col], e3 = e[3 * width + col];                \
                dd[col] = e0;                                                            \
                dd[width + col] = e1 - e2 + e3;                                          \
                dd[2 * width + col] = e1 + e2 - e0;                                      \
                dd[3 * width + col] = -e3;                                               \
            }                                                                            \
            for (int64_t p = 0; p < 4; ++p) {                                            \
                const int64_t iy = 2 * ty - PH + p;                                      \
                if (iy < 0 || iy >= H) continue;                                         \
                T *line = dst + iy * W + (lo - PW);                                      \
                const T *q = dd + p * width + lo;                                        \
                for (int64_t col = 0; col < hi - lo; ++col) line[col] += q[col];         \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* y = A^T M A for every tile, clipped to the OH x OW output. */
#define NPFCN_WINO_OUTPUT(T, SUFFIX)                                                     \
void winograd_output_##SUFFIX(const T *M, T *y, int64_t N, int64_t O, int64_t OH,       \
                              int64_t OW, int64_t t0, int64_t t1, int64_t TW, T *scratch) \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * O;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 4096;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        NPFCN_WINO_SCRATCH(T)                                                            \
        (void)a_rows;                                                                    \
        const int64_t n = plane / O, o = plane % O;                                      \
        T *dst = y + plane * OH * OW;                                                    \
        const int64_t full = OW / 2; /* tiles whose two columns are both inside */       \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < 16; ++xi)                                          \
                memcpy(stage + xi * TW, M + (xi * O + o) * T_ + base, (size_t)TW * sizeof(T)); \
            const T *m = stage;                                                          \
            T *row0 = dst + (2 * ty) * OW, *row1 = row0 + OW;                            \
            const int has_row1 = 2 * ty + 1 < OH;                                        \
            for (int64_t tx = 0; tx < TW; ++tx) {                                        \
                /* q[a][s] = (A^T M)[a][s], then Y[a][b] = (q A)[a][b] */                \
                T q[2][4];                                                               \
                for (int s = 0; s < 4; ++s) {                                            \
                    const T m0 = m[s * TW + tx], m1 = m[(4 + s) * TW + tx];              \
                    const T m2 = m[(8 + s) * TW + tx], m3 = m[(12 + s) * TW + tx];       \
                    q[0][s] = m0 + m1 + m2;                                              \
                    q[1][s] = m1 - m2 - m3;                                              \
                }                                                                        \
                row0[2 * tx] = q[0][0] + q[0][1] + q[0][2];                              \
                if (tx < full) row0[2 * tx + 1] = q[0][1] - q[0][2] - q[0][3];           \
                if (has_row1) {                                                          \
                    row1[2 * tx] = q[1][0] + q[1][1] + q[1][2];                          \
                    if (tx < full) row1[2 * tx + 1] = q[1][1] - q[1][2] - q[1][3];       \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* dM = A dY A^T for every tile, where dY is the tile's 2x2 of dy (0 outside). */
#define NPFCN_WINO_OUTPUT_ADJ(T, SUFFIX)                                                 \
void winograd_output_adj_##SUFFIX(const T *dy, T *dM, int64_t N, int64_t O, int64_t OH, \
                                  int64_t OW, int64_t t0, int64_t t1, int64_t TW,        \
                                  T *scratch)                                            \
{                                                                                        \
    const int64_t rows = t1 - t0, T_ = N * rows * TW, planes = N * O;                    \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * rows * TW > 4096;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        NPFCN_WINO_SCRATCH(T)                                                            \
        (void)a_rows;                                                                    \
        const int64_t n = plane / O, o = plane % O;                                      \
        const T *src = dy + plane * OH * OW;                                             \
        const int64_t full = OW / 2;                                                     \
        for (int64_t ty = t0; ty < t1; ++ty) {                                           \
            const T *row0 = src + (2 * ty) * OW, *row1 = row0 + OW;                      \
            const int has_row1 = 2 * ty + 1 < OH;                                        \
            T *m = stage;                                                                \
            for (int64_t tx = 0; tx < TW; ++tx) {                                        \
                const T y00 = row0[2 * tx];                                              \
                const T y01 = tx < full ? row0[2 * tx + 1] : (T)0;                       \
                const T y10 = has_row1 ? row1[2 * tx] : (T)0;                            \
                const T y11 = has_row1 && tx < full ? row1[2 * tx + 1] : (T)0;           \
                /* p = A dY, A's rows (1,0) (1,1) (1,-1) (0,-1); then dM = p A^T */      \
                const T p[4][2] = {{y00, y01}, {y00 + y10, y01 + y11},                   \
                                   {y00 - y10, y01 - y11}, {-y10, -y11}};                \
                for (int r = 0; r < 4; ++r) {                                            \
                    m[(4 * r + 0) * TW + tx] = p[r][0];                                  \
                    m[(4 * r + 1) * TW + tx] = p[r][0] + p[r][1];                        \
                    m[(4 * r + 2) * TW + tx] = p[r][0] - p[r][1];                        \
                    m[(4 * r + 3) * TW + tx] = -p[r][1];                                 \
                }                                                                        \
            }                                                                            \
            const int64_t base = (n * rows + (ty - t0)) * TW;                            \
            for (int64_t xi = 0; xi < 16; ++xi)                                          \
                memcpy(dM + (xi * O + o) * T_ + base, stage + xi * TW, (size_t)TW * sizeof(T)); \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

/* U[xi][o][c] = (G g G^T)[xi] for every filter g = w[o][c] (3x3). */
#define NPFCN_WINO_WEIGHT(T, SUFFIX)                                                     \
void winograd_weight_##SUFFIX(const T *w, T *U, int64_t O, int64_t C)             \
{                                                                                        \
    const int64_t pairs = O * C, chunks = (pairs + NPFCN_WINO_CHUNK - 1) / NPFCN_WINO_CHUNK; \
    int64_t chunk;                                                                       \
    const int64_t parallel = pairs > 16384;                                             \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (chunk = 0; chunk < chunks; ++chunk) {                                           \
        T stage[16][NPFCN_WINO_CHUNK];                                                   \
        const int64_t q0 = chunk * NPFCN_WINO_CHUNK;                                     \
        const int64_t count = pairs - q0 < NPFCN_WINO_CHUNK ? pairs - q0 : NPFCN_WINO_CHUNK; \
        for (int64_t i = 0; i < count; ++i) {                                            \
            const T *g = w + (q0 + i) * 9;                                               \
            T h[4][3]; /* h = G g */                                                     \
            for (int v = 0; v < 3; ++v) {                                                \
                h[0][v] = g[v];                                                          \
                h[1][v] = (T)0.5 * (g[v] + g[3 + v] + g[6 + v]);                         \
                h[2][v] = (T)0.5 * (g[v] - g[3 + v] + g[6 + v]);                         \
                h[3][v] = g[6 + v];                                                      \
            }                                                                            \
            for (int r = 0; r < 4; ++r) { /* (h G^T)[r] */                               \
                stage[4 * r + 0][i] = h[r][0];                                           \
                stage[4 * r + 1][i] = (T)0.5 * (h[r][0] + h[r][1] + h[r][2]);            \
                stage[4 * r + 2][i] = (T)0.5 * (h[r][0] - h[r][1] + h[r][2]);            \
                stage[4 * r + 3][i] = h[r][2];                                           \
            }                                                                            \
        }                                                                                \
        for (int xi = 0; xi < 16; ++xi)                                                  \
            memcpy(U + xi * pairs + q0, stage[xi], (size_t)count * sizeof(T));           \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}                                                                                        \
                                                                                         \
/* dw[o][c] += G^T dU[.][o][c] G, the adjoint of winograd_weight; dU: (16, O, C). */     \
void winograd_weight_adj_##SUFFIX(const T *dU, T *dw, int64_t O, int64_t C)             \
{                                                                                        \
    const int64_t pairs = O * C, chunks = (pairs + NPFCN_WINO_CHUNK - 1) / NPFCN_WINO_CHUNK; \
    int64_t chunk;                                                                       \
    const int64_t parallel = pairs > 16384;                                             \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (chunk = 0; chunk < chunks; ++chunk) {                                           \
        T stage[16][NPFCN_WINO_CHUNK];                                                   \
        const int64_t q0 = chunk * NPFCN_WINO_CHUNK;                                     \
        const int64_t count = pairs - q0 < NPFCN_WINO_CHUNK ? pairs - q0 : NPFCN_WINO_CHUNK; \
        for (int xi = 0; xi < 16; ++xi)                                                  \
            memcpy(stage[xi], dU + xi * pairs + q0, (size_t)count * sizeof(T));          \
        for (int64_t i = 0; i < count; ++i) {                                            \
            T h[4][3]; /* h = dU G, row by row */                                        \
            for (int r = 0; r < 4; ++r) {                                                \
                const T u0 = stage[4 * r][i], u1 = stage[4 * r + 1][i];                  \
                const T u2 = stage[4 * r + 2][i], u3 = stage[4 * r + 3][i];              \
                h[r][0] = u0 + (T)0.5 * (u1 + u2);                                       \
                h[r][1] = (T)0.5 * (u1 - u2);                                            \
                h[r][2] = (T)0.5 * (u1 + u2) + u3;                                       \
            }                                                                            \
            T *g = dw + (q0 + i) * 9;                                                    \
            for (int v = 0; v < 3; ++v) { /* G^T h */                                    \
                g[v] += h[0][v] + (T)0.5 * (h[1][v] + h[2][v]);                          \
                g[3 + v] += (T)0.5 * (h[1][v] - h[2][v]);                                \
                g[6 + v] += (T)0.5 * (h[1][v] + h[2][v]) + h[3][v];                      \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

NPFCN_WINO_INPUT(float, f32)
NPFCN_WINO_INPUT(double, f64)
NPFCN_WINO_INPUT_ADJ(float, f32)
NPFCN_WINO_INPUT_ADJ(double, f64)
NPFCN_WINO_OUTPUT(float, f32)
NPFCN_WINO_OUTPUT(double, f64)
NPFCN_WINO_OUTPUT_ADJ(float, f32)
NPFCN_WINO_OUTPUT_ADJ(double, f64)
NPFCN_WINO_WEIGHT(float, f32)
NPFCN_WINO_WEIGHT(double, f64)
