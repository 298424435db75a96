/* Batch normalisation over (N, H, W) per channel: the passes over the data.
 *
 * The math (and the small per-channel arithmetic between the passes) is in
 * npfcn/reference/batchnorm.py and npfcn/kernels/batchnorm.py.  NumPy makes a
 * temporary array for nearly every operator of it (x - mean, its square, xhat *
 * gamma, + beta, dy * xhat, ...): about ten passes over a SegNet-Basic activation in
 * the forward pass and eight in the backward, one core each.  Here:
 *
 *   batch_norm_stats    per channel c: sum x and sum (x - mean)^2 in double    (2 reads)
 *   batch_norm_apply    y = xhat * gamma[c] + beta[c]                  (1 read, 1 write)
 *   batch_norm_grad_sums  per channel: sum dy and sum dy * xhat in double    (2 reads)
 *   batch_norm_grad_input dx = (dy - xhat * a[c] - b[c]) * out_scale[c]  (2 reads, 1 write)
 *
 * where xhat = x * scale[c] + shift[c] is recomputed wherever it is needed, not stored:
 * the backward pass keeps x (the layer's input) instead of a normalised copy, and the
 * forward pass writes one array instead of two.
 *
 * The sums keep 8 partial sums in double (lane k % 8), added up at the end: a single
 * running sum would wait for each addition to finish (no -ffast-math to reorder it),
 * and 8 independent ones the compiler puts in vector registers.
 *
 * x, y, xhat, dy, dx: (N, C, HW) contiguous.  Threads split the channels (sums) or
 * the (n, c) planes (element-wise passes); each sum runs in a fixed order, so results
 * do not depend on the thread count.
 */
#include <stddef.h>
#include "npfcn_kernels.h"

#define NPFCN_LANES 8

static double lanes_total(const double lanes[NPFCN_LANES])
{
    double total = 0;
    for (int l = 0; l < NPFCN_LANES; ++l) total += lanes[l];
    return total;
}

#define NPFCN_BATCHNORM(T, SUFFIX)                                                        \
void batch_norm_stats_##SUFFIX(const T *x, int64_t N, int64_t C, int64_t HW,             \
                               double *mean, double *var)                                 \
{                                                                                         \
    const double count = (double)(N * HW);                                               \
    int64_t c;                                                                            \
    const int64_t parallel = N * C * HW > 65536;                                         \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (c = 0; c < C; ++c) {                                                             \
        double lanes[NPFCN_LANES] = {0}, squares[NPFCN_LANES] = {0};                      \
        for (int64_t n = 0; n < N; ++n) {                                                 \
            const T *p = x + (n * C + c) * HW;                                            \
            int64_t k = 0;                                                                \
            for (; k + NPFCN_LANES <= HW; k += NPFCN_LANES)                               \
                for (int l = 0; l < NPFCN_LANES; ++l) lanes[l] += p[k + l];               \
            for (; k < HW; ++k) lanes[k % NPFCN_LANES] += p[k];                           \
        }                                                                                 \
        const double m = count > 0 ? lanes_total(lanes) / count : 0.0;                   \
        for (int64_t n = 0; n < N; ++n) {                                                 \
            const T *p = x + (n * C + c) * HW;                                            \
            int64_t k = 0;                                                                \
            for (; k + NPFCN_LANES <= HW; k += NPFCN_LANES)                               \
                for (int l = 0; l < NPFCN_LANES; ++l) {                                   \
                    const double d = p[k + l] - m;                                        \
                    squares[l] += d * d;                                                  \
                }                                                                         \
            for (; k < HW; ++k) {                                                         \
                const double d = p[k] - m;                                                \
                squares[k % NPFCN_LANES] += d * d;                                        \
            }                                                                             \
        }                                                                                 \
        mean[c] = m;                                                                      \
        var[c] = count > 0 ? lanes_total(squares) / count : 0.0;                                       \
    }                                                                                     \
    npfcn_release_core(held);                                                            \
}                                                                                         \
void batch_norm_apply_##SUFFIX(const T *x, T *y, const T *scale, const T *shift,         \
                               const T *gamma, const T *beta, int64_t N, int64_t C,       \
                               int64_t HW)                                                \
{                                                                                         \
    int64_t plane;                                                                        \
    const int64_t parallel = N * C * HW > 65536;                                         \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (plane = 0; plane < N * C; ++plane) {                                             \
        const int64_t c = plane % C;                                                      \
        const T a = scale[c], b = shift[c];                                               \
        const T g = gamma ? gamma[c] : (T)1, s = beta ? beta[c] : (T)0;                   \
        const T *p = x + plane * HW;                                                      \
        T *q = y + plane * HW;                                                            \
        for (int64_t k = 0; k < HW; ++k) q[k] = (p[k] * a + b) * g + s;                   \
    }                                                                                     \
    npfcn_release_core(held);                                                            \
}                                                                                         \
void batch_norm_grad_sums_##SUFFIX(const T *dy, const T *x, const T *scale,              \
                                   const T *shift, int64_t N, int64_t C, int64_t HW,      \
                                   double *sum_dy, double *sum_dy_xhat)                   \
{                                                                                         \
    int64_t c;                                                                            \
    const int64_t parallel = N * C * HW > 65536;                                         \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (c = 0; c < C; ++c) {                                                             \
        const T a = scale[c], b = shift[c];                                               \
        double s[NPFCN_LANES] = {0}, sx[NPFCN_LANES] = {0};                               \
        for (int64_t n = 0; n < N; ++n) {                                                 \
            const T *g = dy + (n * C + c) * HW, *p = x + (n * C + c) * HW;                \
            int64_t k = 0;                                                                \
            for (; k + NPFCN_LANES <= HW; k += NPFCN_LANES)                               \
                for (int l = 0; l < NPFCN_LANES; ++l) {                                   \
                    s[l] += g[k + l];                                                     \
                    sx[l] += (double)g[k + l] * (p[k + l] * a + b);                       \
                }                                                                         \
            for (; k < HW; ++k) {                                                         \
                s[k % NPFCN_LANES] += g[k];                                               \
                sx[k % NPFCN_LANES] += (double)g[k] * (p[k] * a + b);                     \
            }                                                                             \
        }                                                                                 \
        sum_dy[c] = lanes_total(s);                                                       \
        sum_dy_xhat[c] = lanes_total(sx);                                                 \
    }                                                                                     \
    npfcn_release_core(held);                                                            \
}                                                                                         \
void batch_norm_grad_input_##SUFFIX(const T *dy, const T *x, T *dx, const T *scale,      \
                                    const T *shift, const T *a, const T *b,               \
                                    const T *out_scale, int64_t N, int64_t C, int64_t HW) \
{                                                                                         \
    int64_t plane;                                                                        \
    const int64_t parallel = N * C * HW > 65536;                                         \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */               \
    _Pragma("omp parallel for schedule(static) if(parallel)")                            \
    for (plane = 0; plane < N * C; ++plane) {                                             \
        const int64_t c = plane % C;                                                      \
        const T xa = scale[c], xb = shift[c], ac = a[c], bc = b[c], sc = out_scale[c];    \
        const T *g = dy + plane * HW, *p = x + plane * HW;                                \
        T *d = dx + plane * HW;                                                           \
        for (int64_t k = 0; k < HW; ++k) d[k] = (g[k] - (p[k] * xa + xb) * ac - bc) * sc; \
    }                                                                                     \
    npfcn_release_core(held);                                                            \
}

NPFCN_BATCHNORM(float, f32)
NPFCN_BATCHNORM(double, f64)
