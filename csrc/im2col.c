/* im2col / col2im for any kernel size, stride, padding and dilation.
 *
 * Why this exists: a convolution is one matrix product once every receptive
 * field has been copied out as a column (im2col).  The backward pass of that
 * copy - and the forward pass of a transposed convolution - is col2im, which
 * adds each column entry back to the pixel it came from.
 *
 * Column layout.  Row r = (c*KH + i)*KW + j of image n starts at
 *     cols + n*image_stride + r*row_stride
 * and holds OH*OW contiguous entries.  Two layouts are used:
 *   per image  (N, C*KH*KW, OH*OW): image_stride = C*KH*KW*OH*OW, row_stride = OH*OW
 *   batched    (C*KH*KW, N, OH*OW): image_stride = OH*OW,         row_stride = N*OH*OW
 * The batched one lets a layer do ONE matrix product over the whole batch
 * (weight (O, C*KH*KW) times columns (C*KH*KW, N*OH*OW)) instead of N skinny ones.
 *
 * Threads: im2col splits the work by output row (n, c, i, j): each row of
 * `cols` is written by exactly one thread.  col2im splits by (n, c) plane:
 * all rows that add into one plane of `x` belong to the same thread, so no two
 * threads ever write the same element.  Small calls stay on one thread, where
 * waking a second one costs more than it saves.
 */
#include <string.h>
#include "npfcn_kernels.h"

#ifdef _OPENMP
#include <omp.h>
int npfcn_num_threads(void) { return omp_get_max_threads(); }
void npfcn_set_num_threads(int64_t n) { if (n >= 1) omp_set_num_threads((int)n); }
int npfcn_thread_id(void) { return omp_get_thread_num(); }
#else
int npfcn_num_threads(void) { return 1; }
void npfcn_set_num_threads(int64_t n) { (void)n; }
int npfcn_thread_id(void) { return 0; }
#endif

/* Below 131072 elements copied (the number in the pragmas), one thread does the
 * whole call. */

/* The columns ox in [*lo, *hi) whose input column off + ox*SW lies in [0, W). */
static void npfcn_inside(int64_t off, int64_t SW, int64_t W, int64_t OW,
                         int64_t *lo, int64_t *hi)
{
    int64_t a = off >= 0 ? 0 : (-off + SW - 1) / SW;
    int64_t b = W - off <= 0 ? 0 : (W - off + SW - 1) / SW;
    if (b > OW) b = OW;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

#define NPFCN_IM2COL(T, SUFFIX)                                                          \
void im2col_strided_##SUFFIX(const T *x, T *cols, int64_t N, int64_t C, int64_t H,      \
                     int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW,          \
                     int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,         \
                     int64_t OW, int64_t image_stride, int64_t row_stride)               \
{                                                                                        \
    const int64_t KK = KH * KW, rows = N * C * KK;                                       \
    int64_t row;                                                                         \
    const int64_t parallel = rows * OH * OW > 131072;                        \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */   \
    _Pragma("omp parallel for schedule(static) if(parallel)")                \
    for (row = 0; row < rows; ++row) {                                                   \
        const int64_t plane = row / KK, k = row % KK, i = k / KW, j = k % KW;           \
        const int64_t n = plane / C, c = plane % C;                                      \
        const T *src = x + plane * H * W;                                                \
        T *dst = cols + n * image_stride + (c * KK + k) * row_stride;                    \
        const int64_t off = j * DW - PW;                                                 \
        int64_t ox_lo, ox_hi;                                                            \
        npfcn_inside(off, SW, W, OW, &ox_lo, &ox_hi);                                    \
        for (int64_t oy = 0; oy < OH; ++oy) {                                            \
            T *out = dst + oy * OW;                                                      \
            const int64_t iy = oy * SH - PH + i * DH;                                    \
            if (iy < 0 || iy >= H) {                                                     \
                memset(out, 0, (size_t)OW * sizeof(T));                                  \
                continue;                                                                \
            }                                                                            \
            const T *line = src + iy * W; /* input column off + ox*SW */                 \
            for (int64_t ox = 0; ox < ox_lo; ++ox) out[ox] = 0;                          \
            if (SW == 1) {                                                               \
                if (ox_hi > ox_lo)                                                       \
                    memcpy(out + ox_lo, line + off + ox_lo,                              \
                           (size_t)(ox_hi - ox_lo) * sizeof(T));                         \
            } else {                                                                     \
                for (int64_t ox = ox_lo; ox < ox_hi; ++ox) out[ox] = line[off + ox * SW];\
            }                                                                            \
            for (int64_t ox = ox_hi; ox < OW; ++ox) out[ox] = 0;                         \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                \
}                                                                                        \
                                                                                         \
void im2col_##SUFFIX(const T *x, T *cols, int64_t N, int64_t C, int64_t H, int64_t W,   \
                     int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,         \
                     int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW)         \
{                                                                                        \
    im2col_strided_##SUFFIX(x, cols, N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, \
                            C * KH * KW * OH * OW, OH * OW);                             \
}

#define NPFCN_COL2IM(T, SUFFIX)                                                          \
void col2im_strided_##SUFFIX(const T *cols, T *x, int64_t N, int64_t C, int64_t H,      \
                     int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW,          \
                     int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,         \
                     int64_t OW, int64_t image_stride, int64_t row_stride)               \
{                                                                                        \
    const int64_t planes = N * C, KK = KH * KW;                                          \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * KK * OH * OW > 131072;                        \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */          \
    _Pragma("omp parallel for schedule(static) if(parallel)")                       \
    for (plane = 0; plane < planes; ++plane) {                                           \
        const int64_t n = plane / C, c = plane % C;                                      \
        T *dst = x + plane * H * W;                                                      \
        for (int64_t i = 0; i < KH; ++i) {                                               \
            for (int64_t j = 0; j < KW; ++j) {                                           \
                const T *src = cols + n * image_stride + (c * KK + i * KW + j) * row_stride; \
                const int64_t off = j * DW - PW;                                         \
                int64_t ox_lo, ox_hi;                                                    \
                npfcn_inside(off, SW, W, OW, &ox_lo, &ox_hi);                            \
                for (int64_t oy = 0; oy < OH; ++oy) {                                    \
                    const int64_t iy = oy * SH - PH + i * DH;                            \
                    if (iy < 0 || iy >= H) continue;                                     \
                    const T *in = src + oy * OW;                                         \
                    T *line = dst + iy * W;                                              \
                    if (SW == 1) {                                                       \
                        for (int64_t ox = ox_lo; ox < ox_hi; ++ox) line[off + ox] += in[ox]; \
                    } else {                                                             \
                        for (int64_t ox = ox_lo; ox < ox_hi; ++ox)                       \
                            line[off + ox * SW] += in[ox];                               \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                       \
}                                                                                        \
                                                                                         \
void col2im_##SUFFIX(const T *cols, T *x, int64_t N, int64_t C, int64_t H, int64_t W,   \
                     int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,         \
                     int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW)         \
{                                                                                        \
    col2im_strided_##SUFFIX(cols, x, N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW, \
                            C * KH * KW * OH * OW, OH * OW);                             \
}

NPFCN_IM2COL(float, f32)
NPFCN_IM2COL(double, f64)
NPFCN_COL2IM(float, f32)
NPFCN_COL2IM(double, f64)
