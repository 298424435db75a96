/* Max unpooling: place each value at its index in a zero image, and the
 * gradient of that, a gather.
 *
 *   x, indices : (NC, HW)   indices[plane, k] is a flat position in an OH x OW
 *   y          : (NC, OHW)  output plane, checked by Python to lie in [0, OHW)
 *
 * Forward:  y = 0, then y[plane, indices[plane, k]] = x[plane, k] in order of k
 *           (with repeated indices the last value wins; PyTorch does not promise
 *           which one wins).
 * Backward: dx[plane, k] = dy[plane, indices[plane, k]].
 */
#include <string.h>

#include "npfcn_kernels.h"

#define NPFCN_UNPOOL(T, SUFFIX)                                                          \
void max_unpool_forward_##SUFFIX(const T *x, const int64_t *indices, T *y, int64_t NC,  \
                                 int64_t HW, int64_t OHW)                                \
{                                                                                        \
    int64_t plane;                                                                       \
    const int64_t parallel = NC * OHW > 131072;                                          \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *v = x + plane * HW;                                                     \
        const int64_t *idx = indices + plane * HW;                                       \
        T *out = y + plane * OHW;                                                        \
        /* Zero one plane right before its scatter: it is still in cache when the       \
         * values land, and y needs no separate zero pass over memory. */               \
        memset(out, 0, (size_t)OHW * sizeof(T));                                         \
        for (int64_t k = 0; k < HW; ++k) out[idx[k]] = v[k];                             \
    }                                                                                    \
    npfcn_release_core(held);                                                            \
}                                                                                        \
                                                                                         \
void max_unpool_backward_##SUFFIX(const T *dy, const int64_t *indices, T *dx,           \
                                  int64_t NC, int64_t HW, int64_t OHW)                   \
{                                                                                        \
    int64_t plane;                                                                       \
    const int64_t parallel = NC * OHW > 131072;                                          \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (plane = 0; plane < NC; ++plane) {                                               \
        const T *g = dy + plane * OHW;                                                   \
        const int64_t *idx = indices + plane * HW;                                       \
        T *out = dx + plane * HW;                                                        \
        for (int64_t k = 0; k < HW; ++k) out[k] = g[idx[k]];                             \
    }                                                                                    \
    npfcn_release_core(held);                                                            \
}

NPFCN_UNPOOL(float, f32)
NPFCN_UNPOOL(double, f64)
