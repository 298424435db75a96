/* Max pooling with argmax indices, and its backward pass.
 *
 * indices[plane, oy, ox] is the flat position iy*W + ix of the maximum inside
 * the (unpadded) H x W plane, as PyTorch returns it.  Padding never wins: only
 * positions inside the image are considered, so an index always points into
 * the plane.  NaN wins over any number (as in PyTorch), so NaN propagates.
 * Ties keep the first position in scan order.
 */
#include "npfcn_kernels.h"

/* One step of the scan: value v at position p replaces the best so far when it
 * is larger, or when it is NaN and the best is not (NaN wins and then keeps
 * winning; ties keep the earlier one).  Written as selects, not branches: on
 * real data "is it larger?" is a coin toss the branch predictor keeps losing. */
#define NPFCN_TAKE(T, v, p)                                                                 \
    do {                                                                                 \
        const T v_ = (v);                                                                \
        const int take_ = (v_ > best_val) | ((v_ != v_) & (best_val == best_val));       \
        best_val = take_ ? v_ : best_val;                                                \
        best = take_ ? (p) : best;                                                       \
    } while (0)

/* The FCN/VGG case, 2x2 windows at stride 2 without padding, on one plane:
 * the same scan order as the general loop, without its per-tap bounds checks.
 * With ceil_mode the last row/column of windows may hang over the edge; those
 * windows just have fewer taps. */
#define NPFCN_MAXPOOL2X2(T, SUFFIX)                                                      \
static void maxpool2x2_plane_##SUFFIX(const T *src, T *out, int64_t *idx, int64_t H,    \
                                      int64_t W, int64_t OH, int64_t OW)                 \
{                                                                                        \
    const int64_t full_ow = W / 2;   /* windows with both columns inside */             \
    for (int64_t oy = 0; oy < OH; ++oy) {                                                \
        const int64_t iy = 2 * oy;                                                       \
        const int has_row2 = iy + 1 < H;                                                 \
        const T *r0 = src + iy * W, *r1 = has_row2 ? r0 + W : r0;                        \
        const int64_t p1 = has_row2 ? (iy + 1) * W : iy * W; /* row 2, or row 1 again */ \
        T *o = out + oy * OW;                                                            \
        int64_t *k = idx + oy * OW;                                                      \
        for (int64_t ox = 0; ox < full_ow && ox < OW; ++ox) {                            \
            const int64_t ix = 2 * ox;                                                   \
            int64_t best = iy * W + ix;                                                  \
            T best_val = r0[ix];                                                         \
            NPFCN_TAKE(T, r0[ix + 1], iy * W + ix + 1);                                     \
            /* Without a second row this re-reads row 1: never larger, no change. */     \
            NPFCN_TAKE(T, r1[ix], p1 + ix);                                                 \
            NPFCN_TAKE(T, r1[ix + 1], p1 + ix + 1);                                         \
            o[ox] = best_val;                                                            \
            k[ox] = best;                                                                \
        }                                                                                \
        for (int64_t ox = full_ow; ox < OW; ++ox) {  /* the last column alone */         \
            const int64_t ix = 2 * ox;                                                   \
            int64_t best = iy * W + ix;                                                  \
            T best_val = r0[ix];                                                         \
            if (has_row2) NPFCN_TAKE(T, r1[ix], p1 + ix);                                   \
            o[ox] = best_val;                                                            \
            k[ox] = best;                                                                \
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
    const int plain2x2 = KH == 2 && KW == 2 && SH == 2 && SW == 2 && PH == 0 && PW == 0  \
                         && DH == 1 && DW == 1;                                          \
    _Pragma("omp parallel for schedule(static) if(NC * H * W > 131072)")                 \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *src = x + plane * H * W;                                                \
        T *out = y + plane * OH * OW;                                                    \
        int64_t *idx = indices + plane * OH * OW;                                        \
        if (plain2x2) {                                                                  \
            maxpool2x2_plane_##SUFFIX(src, out, idx, H, W, OH, OW);                      \
            continue;                                                                    \
        }                                                                                \
        for (int64_t oy = 0; oy < OH; ++oy) {                                            \
            for (int64_t ox = 0; ox < OW; ++ox) {                                        \
                int64_t best = -1;                                                       \
                T best_val = 0;                                                          \
                for (int64_t i = 0; i < KH; ++i) {                                       \
                    const int64_t iy = oy * SH - PH + i * DH;                            \
                    if (iy < 0 || iy >= H) continue;                                     \
                    for (int64_t j = 0; j < KW; ++j) {                                   \
                        const int64_t ix = ox * SW - PW + j * DW;                        \
                        if (ix < 0 || ix >= W) continue;                                 \
                        const T v = src[iy * W + ix];                                    \
                        /* best_val != best_val: a NaN already won; keep it. */          \
                        if (best < 0 || (best_val == best_val && (v > best_val || v != v))) { \
                            best = iy * W + ix;                                          \
                            best_val = v;                                                \
                        }                                                                \
                    }                                                                    \
                }                                                                        \
                out[oy * OW + ox] = best_val;                                            \
                idx[oy * OW + ox] = best;                                                \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
}                                                                                        \
                                                                                         \
void maxpool_backward_##SUFFIX(const T *dy, const int64_t *indices, T *dx, int64_t NC,  \
                     int64_t HW, int64_t OHW)                                            \
{                                                                                        \
    int64_t plane;                                                                       \
    _Pragma("omp parallel for schedule(static) if(NC * HW > 131072)")                    \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *g = dy + plane * OHW;                                                   \
        const int64_t *idx = indices + plane * OHW;                                      \
        T *out = dx + plane * HW;                                                        \
        for (int64_t k = 0; k < OHW; ++k) out[idx[k]] += g[k];                           \
    }                                                                                    \
}

NPFCN_MAXPOOL2X2(float, f32)
NPFCN_MAXPOOL2X2(double, f64)
NPFCN_MAXPOOL(float, f32)
NPFCN_MAXPOOL(double, f64)
