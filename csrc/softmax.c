/* Softmax cross-entropy per pixel, float32: the loss and its gradient in one pass each.
 *
 * The math is npfcn/reference/softmax.py's.  For scores s (N, C, P) - P pixels per
 * image - and labels t (N, P), at every pixel
 *
 *   m = max_k s[k],   e[k] = exp(s[k] - m),   S = sum_k e[k],   q[k] = e[k] / S
 *   loss += w[t] * (log S - (s[t] - m))       (the pixel's -w[t] log q[t])
 *
 * with w[t] = 0 for the ignore label, and dloss/ds[k] = (q[k] - [k == t]) * w[t] * factor.
 *
 * Why in C: NumPy makes a pass over the scores, or a temporary as large as them, for
 * every step of that formula (the maximum, the shift, exp, the sum, the division, the
 * gather); at 21 classes x 224 x 224 the loss took 3.3 ms forward where one pass over
 * the 4 MB of scores takes a fraction of that.  Here 16 neighbouring pixels are one
 * vector, the classes are walked twice per chunk of pixels while it is in the cache,
 * and the forward pass keeps e and S: the division q = e / S waits for the backward
 * pass, which reads and writes every value anyway.
 *
 * exp is computed here, not by libm: glibc's expf is one value per call, and a vector
 * version is only declared under -ffast-math (which this build never uses).  The
 * shifted scores x = s - m are <= 0, and
 *
 *   exp(x) = 2^n * exp(r),   n = round(x / ln 2),   r = x - n ln 2 in [-ln2/2, ln2/2]
 *
 * with ln 2 split in two (a short high part, so that n * hi is exact, and the rest) so
 * that r keeps its low bits, exp(r) by its Taylor series to r^7/7! (the first term left
 * out, r^8/8!, is below 5.2e-9 relative for |r| <= 0.347: under float32's 6e-8), and 2^n
 * built from its exponent bits.  x is clamped at -87, where exp is 1.6e-38, because 2^n
 * has no normal float below n = -126: those classes' probabilities come out about 1e-38
 * instead of smaller, which no sum of them can see next to the true class's.
 */
#include <math.h>
#include <string.h>
#include "npfcn_kernels.h"
#include "npfcn_cpu.h"          /* NPFCN_CLONES, NPFCN_INLINE */

/* Fused multiply-adds in the polynomial (the build's -std=c99 turns contraction off):
 * half the instructions, one rounding per step instead of two. */
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif


#define LANES 16                                    /* pixels per vector */
#define CHUNK 16                                    /* vectors per task */
#define LANES_IN(v) (pixels - (v) * LANES < LANES ? pixels - (v) * LANES : LANES)
typedef float vfloat __attribute__((vector_size(4 * LANES)));
typedef int32_t vint __attribute__((vector_size(4 * LANES)));

/* count (<= LANES) consecutive floats as a vector, zeros after them; and back */
NPFCN_INLINE vfloat load_lanes(const float *p, int64_t count)
{
    vfloat v = {0};
    if (count == LANES)
        memcpy(&v, p, sizeof v);        /* one vector load (a constant size) */
    else
        memcpy(&v, p, (size_t)count * sizeof(float));
    return v;
}

NPFCN_INLINE void store_lanes(float *p, vfloat v, int64_t count)
{
    if (count == LANES)
        memcpy(p, &v, sizeof v);
    else
        memcpy(p, &v, (size_t)count * sizeof(float));
}

/* where mask (all bits set or none, per lane): a, else b */
NPFCN_INLINE vfloat select(vint mask, vfloat a, vfloat b)
{
    return (vfloat)((mask & (vint)a) | (~mask & (vint)b));
}

/* exp(x) for x <= 0, as described above */
NPFCN_INLINE vfloat exp_nonpositive(vfloat x)
{
    const vfloat lowest = x - x - 87.0f;
    x = select(x < lowest, lowest, x);
    /* n = round(x / ln 2): for y <= 0, truncating y - 0.5 towards zero rounds y */
    const vint n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, vint);
    const vfloat nf = __builtin_convertvector(n, vfloat);
    const vfloat r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
    vfloat p = r * (1.0f / 5040) + (1.0f / 720);
    p = p * r + (1.0f / 120);
    p = p * r + (1.0f / 24);
    p = p * r + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * (vfloat)((n + 127) << 23);          /* 2^n from its exponent bits */
}

NPFCN_CLONES
void softmax_xent_forward_f32(const float *s, const int64_t *target, const float *weight,
                              int64_t ignore_index, int64_t N, int64_t C, int64_t P,
                              float *e, float *pixel_sum, float *pixel_weight, double *sums)
{
    /* A task is a chunk of CHUNK vectors of pixels, and each pass walks the classes in
     * the outer loop: a class's scores for the chunk are one run of 1 KiB.  (With the
     * classes inner, each vector of pixels read C rows a whole map apart, and the loads
     * waited on memory: 1.1 ms for 21 x 224 x 224, against 0.4 this way.) */
    const int64_t chunk_pixels = CHUNK * LANES, chunks = (P + chunk_pixels - 1) / chunk_pixels;
    const int64_t tasks = N * chunks;
    double loss = 0, total_weight = 0;
    int64_t task;
    const int64_t parallel = N * C * P > 65536;
    const int64_t held = npfcn_hold_core(parallel);         /* csrc/affinity.c */
    #pragma omp parallel for schedule(static) reduction(+:loss, total_weight) if(parallel)
    for (task = 0; task < tasks; ++task) {
        const int64_t n = task / chunks, c0 = (task % chunks) * chunk_pixels;
        const int64_t pixels = P - c0 < chunk_pixels ? P - c0 : chunk_pixels;
        const int64_t vectors = (pixels + LANES - 1) / LANES;
        const float *sn = s + n * C * P + c0;
        float *qn = e + n * C * P + c0;
        vfloat m[CHUNK], sum[CHUNK];
        for (int64_t v = 0; v < vectors; ++v)
            m[v] = load_lanes(sn + v * LANES, LANES_IN(v));
        for (int64_t k = 1; k < C; ++k)                      /* the maxima */
            for (int64_t v = 0; v < vectors; ++v) {
                const vfloat x = load_lanes(sn + k * P + v * LANES, LANES_IN(v));
                m[v] = select(x > m[v], x, m[v]);
            }
        for (int64_t v = 0; v < vectors; ++v)
            sum[v] = m[v] - m[v];
        for (int64_t k = 0; k < C; ++k)                      /* exp and its sums */
            for (int64_t v = 0; v < vectors; ++v) {
                const float *at = sn + k * P + v * LANES;
                const vfloat e = exp_nonpositive(load_lanes(at, LANES_IN(v)) - m[v]);
                store_lanes(qn + k * P + v * LANES, e, LANES_IN(v));
                sum[v] += e;
            }
        for (int64_t v = 0; v < vectors; ++v)
            store_lanes(pixel_sum + n * P + c0 + v * LANES, sum[v], LANES_IN(v));
        for (int64_t i = 0; i < pixels; ++i) {               /* each pixel's loss */
            const int64_t p = c0 + i, t = target[n * P + p];
            const int counted = t != ignore_index;
            const float w = !counted ? 0.0f : weight ? weight[t] : 1.0f;
            pixel_weight[n * P + p] = w;
            if (counted) {
                const float top = m[i / LANES][i % LANES], total = sum[i / LANES][i % LANES];
                loss += (double)w * (log((double)total) - (double)(sn[t * P + i] - top));
                total_weight += w;
            }
        }
    }
    npfcn_release_core(held);
    sums[0] = loss;
    sums[1] = total_weight;
}

/* In place: e (the forward pass's exponentials) becomes the gradient
 * (e / S - onehot(t)) * w[t] * factor, with S the pixel's sum of them. */
NPFCN_CLONES
void softmax_xent_backward_f32(float *e, const int64_t *target, const float *pixel_sum,
                               const float *pixel_weight, int64_t ignore_index, float factor,
                               int64_t N, int64_t C, int64_t P)
{
    const int64_t planes = N * C;
    int64_t plane;
    const int64_t parallel = planes * P > 65536;
    const int64_t held = npfcn_hold_core(parallel);         /* csrc/affinity.c */
    #pragma omp parallel for schedule(static) if(parallel)
    for (plane = 0; plane < planes; ++plane) {
        const int64_t n = plane / C, k = plane % C;
        float *g = e + plane * P;
        const int64_t *t = target + n * P;
        const float *w = pixel_weight + n * P, *sum = pixel_sum + n * P;
        for (int64_t p = 0; p < P; ++p) {
            const float onehot = t[p] == k && t[p] != ignore_index ? 1.0f : 0.0f;
            g[p] = (g[p] / sum[p] - onehot) * (w[p] * factor);
        }
    }
    npfcn_release_core(held);
}
