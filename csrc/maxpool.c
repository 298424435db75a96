/* Max pooling with argmax indices, and its backward pass.
 *
 * indices[plane, oy, ox] is the flat position iy*W + ix of the maximum inside
 * the (unpadded) H x W plane, as PyTorch returns it.  Padding never wins: only
 * positions inside the image are considered, so an index always points into
 * the plane.  NaN wins over any number (as in PyTorch), so NaN propagates.
 * Ties keep the first position in scan order.
 */
#include <string.h>

#include "npfcn_kernels.h"

/* One step of the scan: value v at offset off_v replaces the best so far when
 * it is larger, or when it is NaN and the best is not (NaN wins and then keeps
 * winning; ties keep the earlier one).  Written as a plain `if` on purpose:
 * GCC if-converts it into vector compares and blends, so the 2x2 loop below
 * runs 4 windows per instruction (the same test written with `|` and `?:` on
 * an int flag is not vectorised by GCC 12). */
#define NPFCN_TAKE(T, v, off_v)                                                           \
    do {                                                                                 \
        const T v_ = (v);                                                                \
        if (v_ > best_val || (v_ != v_ && best_val == best_val)) {                       \
            best_val = v_;                                                               \
            off = (off_v);                                                               \
        }                                                                                \
    } while (0)

/* The FCN/VGG case, 2x2 windows at stride 2 without padding.
 *
 * One row of n full windows: top row r0, bottom row r1 (which is r0 itself when
 * the image has no second row there: re-reading a tap never changes the
 * maximum, so row_step is then 0 and never used).  p0 is the flat position of
 * the first window's top-left pixel.  off is the winner's offset from its
 * window's top-left pixel, kept in an integer as wide as T so that the
 * compares and the offset select share one vector width. */
#define NPFCN_MAXPOOL2X2_ROW(T, OFF_T, SUFFIX)                                           \
static void maxpool2x2_row_##SUFFIX(const T *restrict r0, const T *restrict r1,         \
                                    T *restrict out, int64_t *restrict idx, int64_t n,   \
                                    int64_t p0, OFF_T row_step)                          \
{                                                                                        \
    for (int64_t ox = 0; ox < n; ++ox) {                                                 \
        T best_val = r0[2 * ox];                                                         \
        OFF_T off = 0;                                                                   \
        NPFCN_TAKE(T, r0[2 * ox + 1], 1);                                                \
        NPFCN_TAKE(T, r1[2 * ox], row_step);                                             \
        NPFCN_TAKE(T, r1[2 * ox + 1], row_step + 1);                                     \
        out[ox] = best_val;                                                              \
        idx[ox] = p0 + 2 * ox + off;                                                     \
    }                                                                                    \
}

/* One plane of 2x2 stride-2 pooling.  With ceil_mode the last row/column of
 * windows may hang over the edge; those windows just have fewer taps. */
#define NPFCN_MAXPOOL2X2(T, OFF_T, SUFFIX)                                               \
static void maxpool2x2_plane_##SUFFIX(const T *src, T *out, int64_t *idx, int64_t H,    \
                                      int64_t W, int64_t OH, int64_t OW)                 \
{                                                                                        \
    const int64_t full_ow = W / 2 < OW ? W / 2 : OW;  /* both columns inside */         \
    for (int64_t oy = 0; oy < OH; ++oy) {                                                \
        const int64_t iy = 2 * oy;                                                       \
        const int has_row2 = iy + 1 < H;                                                 \
        const T *r0 = src + iy * W, *r1 = has_row2 ? r0 + W : r0;                        \
        T *o = out + oy * OW;                                                            \
        int64_t *k = idx + oy * OW;                                                      \
        maxpool2x2_row_##SUFFIX(r0, r1, o, k, full_ow, iy * W, has_row2 ? (OFF_T)W : 0); \
        for (int64_t ox = full_ow; ox < OW; ++ox) {  /* the last column alone */         \
            const int64_t ix = 2 * ox;                                                   \
            T best_val = r0[ix];                                                         \
            OFF_T off = 0;                                                               \
            if (has_row2) NPFCN_TAKE(T, r1[ix], (OFF_T)W);                               \
            o[ox] = best_val;                                                            \
            k[ox] = iy * W + ix + off;                                                   \
        }                                                                                \
    }                                                                                    \
}

/* General windows: every tap is bounds-checked, so padding never wins. */
#define NPFCN_MAXPOOL_GENERAL(T, SUFFIX)                                                 \
static void maxpool_plane_##SUFFIX(const T *src, T *out, int64_t *idx, int64_t H,       \
                                   int64_t W, int64_t KH, int64_t KW, int64_t SH,        \
                                   int64_t SW, int64_t PH, int64_t PW, int64_t DH,       \
                                   int64_t DW, int64_t OH, int64_t OW)                   \
{                                                                                        \
    for (int64_t oy = 0; oy < OH; ++oy) {                                                \
        for (int64_t ox = 0; ox < OW; ++ox) {                                            \
            int64_t best = -1;                                                           \
            T best_val = 0;                                                              \
            for (int64_t i = 0; i < KH; ++i) {                                           \
                const int64_t iy = oy * SH - PH + i * DH;                                \
                if (iy < 0 || iy >= H) continue;                                         \
                for (int64_t j = 0; j < KW; ++j) {                                       \
                    const int64_t ix = ox * SW - PW + j * DW;                            \
                    if (ix < 0 || ix >= W) continue;                                     \
                    const T v = src[iy * W + ix];                                        \
                    /* best_val != best_val: a NaN already won; keep it. */              \
                    if (best < 0 || (best_val == best_val && (v > best_val || v != v))) { \
                        best = iy * W + ix;                                              \
                        best_val = v;                                                    \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
            out[oy * OW + ox] = best_val;                                                \
            idx[oy * OW + ox] = best;                                                    \
        }                                                                                \
    }                                                                                    \
}

#define NPFCN_MAXPOOL(T, SUFFIX)                                                         \
void maxpool_forward_##SUFFIX(const T *x, T *y, int64_t *indices, int64_t NC,           \
                     int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t SH,           \
                     int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,         \
                     int64_t OH, int64_t OW)                                             \
{                                                                                        \
    int64_t plane;                                                                       \
    /* W < 2**30: the 2x2 loop keeps offsets up to W + 1 in a 32-bit int for float. */   \
    const int plain2x2 = KH == 2 && KW == 2 && SH == 2 && SW == 2 && PH == 0 && PW == 0  \
                         && DH == 1 && DW == 1 && W < ((int64_t)1 << 30);                \
    const int64_t parallel = NC * H * W > 131072;                                        \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *src = x + plane * H * W;                                                \
        T *out = y + plane * OH * OW;                                                    \
        int64_t *idx = indices + plane * OH * OW;                                        \
        if (plain2x2)                                                                    \
            maxpool2x2_plane_##SUFFIX(src, out, idx, H, W, OH, OW);                      \
        else                                                                             \
            maxpool_plane_##SUFFIX(src, out, idx, H, W, KH, KW, SH, SW, PH, PW, DH, DW,  \
                                   OH, OW);                                              \
    }                                                                                    \
    npfcn_release_core(held);                                                            \
}                                                                                        \
                                                                                         \
/* dx = 0, then dx[idx[k]] += dy[k] per plane: every element of dx is written,  \
 * so the caller passes an uninitialised array.  Zeroing one plane right before  \
 * its scatter keeps it in cache (a separate zero pass over the whole of dx      \
 * would write it to memory twice). */                                           \
void maxpool_backward_##SUFFIX(const T *dy, const int64_t *indices, T *dx, int64_t NC,  \
                     int64_t HW, int64_t OHW)                                            \
{                                                                                        \
    int64_t plane;                                                                       \
    const int64_t parallel = NC * HW > 131072;                                           \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *g = dy + plane * OHW;                                                   \
        const int64_t *idx = indices + plane * OHW;                                      \
        T *out = dx + plane * HW;                                                        \
        memset(out, 0, (size_t)HW * sizeof(T));                                          \
        for (int64_t k = 0; k < OHW; ++k) out[idx[k]] += g[k];                           \
    }                                                                                    \
    npfcn_release_core(held);                                                            \
}

NPFCN_MAXPOOL2X2_ROW(float, int32_t, f32)
NPFCN_MAXPOOL2X2(float, int32_t, f32)
NPFCN_MAXPOOL2X2_ROW(double, int64_t, f64)
NPFCN_MAXPOOL2X2(double, int64_t, f64)
NPFCN_MAXPOOL_GENERAL(float, f32)
NPFCN_MAXPOOL_GENERAL(double, f64)
NPFCN_MAXPOOL(float, f32)
NPFCN_MAXPOOL(double, f64)
