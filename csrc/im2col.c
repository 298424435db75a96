/* im2col / col2im for any kernel size, stride, padding and dilation.
 *
 * Why this exists: a convolution is one matrix product once every receptive
 * field has been copied out as a column (im2col).  The backward pass of that
 * copy - and the forward pass of a transposed convolution - is col2im, which
 * adds each column entry back to the pixel it came from.
 *
 * Both loops walk the columns in memory order (row by row of `cols`) and are
 * split across threads by (n, c) plane: each plane owns a disjoint block of
 * rows of `cols` and a disjoint plane of `x`, so no two threads ever write the
 * same element.
 */
#include <string.h>
#include "npfcn_kernels.h"

#ifdef _OPENMP
#include <omp.h>
int npfcn_num_threads(void) { return omp_get_max_threads(); }
#else
int npfcn_num_threads(void) { return 1; }
#endif

#define NPFCN_IM2COL(T, SUFFIX)                                                          \
void im2col_##SUFFIX(const T *x, T *cols, int64_t N, int64_t C, int64_t H, int64_t W,   \
                     int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,         \
                     int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW)         \
{                                                                                        \
    const int64_t planes = N * C, P = OH * OW, KK = KH * KW;                             \
    int64_t plane;                                                                       \
    _Pragma("omp parallel for schedule(static) if(planes * KK * P > 32768)")             \
    for (plane = 0; plane < planes; ++plane) {                                           \
        const T *src = x + plane * H * W;                                                \
        T *dst = cols + plane * KK * P;                                                  \
        for (int64_t i = 0; i < KH; ++i) {                                               \
            for (int64_t j = 0; j < KW; ++j, dst += P) {                                 \
                /* Columns ox in [ox_lo, ox_hi) read inside the image. */                \
                const int64_t off = j * DW - PW;                                         \
                int64_t ox_lo = off >= 0 ? 0 : (-off + SW - 1) / SW;                     \
                int64_t ox_hi = W - off <= 0 ? 0 : (W - off + SW - 1) / SW;              \
                if (ox_hi > OW) ox_hi = OW;                                              \
                if (ox_lo > ox_hi) ox_lo = ox_hi;                                        \
                for (int64_t oy = 0; oy < OH; ++oy) {                                    \
                    T *row = dst + oy * OW;                                              \
                    const int64_t iy = oy * SH - PH + i * DH;                            \
                    if (iy < 0 || iy >= H) {                                             \
                        memset(row, 0, (size_t)OW * sizeof(T));                          \
                        continue;                                                        \
                    }                                                                    \
                    const T *line = src + iy * W; /* row iy; column off + ox*SW */                                  \
                    for (int64_t ox = 0; ox < ox_lo; ++ox) row[ox] = 0;                  \
                    if (SW == 1) {                                                       \
                        if (ox_hi > ox_lo)                                               \
                            memcpy(row + ox_lo, line + off + ox_lo,                            \
                                   (size_t)(ox_hi - ox_lo) * sizeof(T));                 \
                    } else {                                                             \
                        for (int64_t ox = ox_lo; ox < ox_hi; ++ox)                       \
                            row[ox] = line[off + ox * SW];                                     \
                    }                                                                    \
                    for (int64_t ox = ox_hi; ox < OW; ++ox) row[ox] = 0;                 \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
}

#define NPFCN_COL2IM(T, SUFFIX)                                                          \
void col2im_##SUFFIX(const T *cols, T *x, int64_t N, int64_t C, int64_t H, int64_t W,   \
                     int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,         \
                     int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW)         \
{                                                                                        \
    const int64_t planes = N * C, P = OH * OW, KK = KH * KW;                             \
    int64_t plane;                                                                       \
    _Pragma("omp parallel for schedule(static) if(planes * KK * P > 32768)")             \
    for (plane = 0; plane < planes; ++plane) {                                           \
        T *dst = x + plane * H * W;                                                      \
        const T *src = cols + plane * KK * P;                                            \
        for (int64_t i = 0; i < KH; ++i) {                                               \
            for (int64_t j = 0; j < KW; ++j, src += P) {                                 \
                const int64_t off = j * DW - PW;                                         \
                int64_t ox_lo = off >= 0 ? 0 : (-off + SW - 1) / SW;                     \
                int64_t ox_hi = W - off <= 0 ? 0 : (W - off + SW - 1) / SW;              \
                if (ox_hi > OW) ox_hi = OW;                                              \
                if (ox_lo > ox_hi) ox_lo = ox_hi;                                        \
                for (int64_t oy = 0; oy < OH; ++oy) {                                    \
                    const int64_t iy = oy * SH - PH + i * DH;                            \
                    if (iy < 0 || iy >= H) continue;                                     \
                    const T *row = src + oy * OW;                                        \
                    T *line = dst + iy * W;                                        \
                    if (SW == 1) {                                                       \
                        for (int64_t ox = ox_lo; ox < ox_hi; ++ox) line[off + ox] += row[ox];  \
                    } else {                                                             \
                        for (int64_t ox = ox_lo; ox < ox_hi; ++ox)                       \
                            line[off + ox * SW] += row[ox];                                    \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
}

NPFCN_IM2COL(float, f32)
NPFCN_IM2COL(double, f64)
NPFCN_COL2IM(float, f32)
NPFCN_COL2IM(double, f64)
