/* ReLU forward and backward: one pass each, over both cores.
 *
 * NumPy needs np.maximum for the forward pass and np.where(y > 0, dy, 0) for
 * the backward pass; the latter builds a boolean mask first and, with a scalar
 * operand, runs a slow broadcasting loop (15 ms for 850,000 floats here, where
 * one pass over the data takes 1-2 ms).  Semantics are NumPy's / PyTorch's:
 *
 *   forward   y = x where x > 0 or x is NaN, else 0     (NaN propagates)
 *   backward  dx = dy where y > 0, else 0                (even a NaN or inf dy)
 */
#include "npfcn_kernels.h"

#define NPFCN_RELU(T, SUFFIX)                                                             \
void relu_forward_##SUFFIX(const T *x, T *y, int64_t n)                                   \
{                                                                                         \
    int64_t i;                                                                            \
    const int64_t parallel = n > 262144;                                                  \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */                \
    _Pragma("omp parallel for schedule(static) if(parallel)")                             \
    for (i = 0; i < n; ++i) {                                                             \
        const T v = x[i];                                                                 \
        y[i] = (v > 0 || v != v) ? v : (T)0;                                              \
    }                                                                                     \
    npfcn_release_core(held);                                                             \
}                                                                                         \
void relu_backward_##SUFFIX(const T *y, const T *dy, T *dx, int64_t n)                    \
{                                                                                         \
    int64_t i;                                                                            \
    const int64_t parallel = n > 262144;                                                  \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */                \
    _Pragma("omp parallel for schedule(static) if(parallel)")                             \
    for (i = 0; i < n; ++i) {                                                             \
        /* both loads unconditional: GCC then selects with vector blends; a load   \
         * under the condition stayed a branch (mispredicted on half the pixels) */    \
        const T g = dy[i];                                                                \
        dx[i] = y[i] > 0 ? g : (T)0;                                                      \
    }                                                                                     \
    npfcn_release_core(held);                                                             \
}

NPFCN_RELU(float, f32)
NPFCN_RELU(double, f64)
