/* Max pooling with argmax indices, and its backward pass.
 *
 * indices[plane, oy, ox] is the flat position iy*W + ix of the maximum inside
 * the (unpadded) H x W plane, as PyTorch returns it.  Padding never wins: only
 * positions inside the image are considered, so an index always points into
 * the plane.  NaN wins over any number (as in PyTorch), so NaN propagates.
 * Ties keep the first position in scan order.
 */
#include "npfcn_kernels.h"

#define NPFCN_MAXPOOL(T, SUFFIX)                                                         \
void maxpool_forward_##SUFFIX(const T *x, T *y, int64_t *indices, int64_t NC,           \
                     int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t SH,           \
                     int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,         \
                     int64_t OH, int64_t OW)                                             \
{                                                                                        \
    int64_t plane;                                                                       \
    _Pragma("omp parallel for schedule(static) if(NC * OH * OW * KH * KW > 32768)")      \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *src = x + plane * H * W;                                                \
        T *out = y + plane * OH * OW;                                                    \
        int64_t *idx = indices + plane * OH * OW;                                        \
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
    _Pragma("omp parallel for schedule(static) if(NC * OHW > 32768)")                    \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *g = dy + plane * OHW;                                                   \
        const int64_t *idx = indices + plane * OHW;                                      \
        T *out = dx + plane * HW;                                                        \
        for (int64_t k = 0; k < OHW; ++k) out[idx[k]] += g[k];                           \
    }                                                                                    \
}

NPFCN_MAXPOOL(float, f32)
NPFCN_MAXPOOL(double, f64)
