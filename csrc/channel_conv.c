/* Direct stride-1 convolution with its vectors along the output channels, for
 * layers of 64 output channels on CPUs with AVX-512 (SegNet-Basic's 7x7 layers).
 *
 *   y[n, o, oy, ox] = b[o] + sum_{c, i, j} w[o, c, i, j] * xp[n, c, oy + i, ox + j]
 *
 * where xp is the input already zero-padded by the caller (npfcn/kernels/channel.py),
 * so that no output needs an edge case.
 *
 * Why a second direct loop: direct.c vectorises along a row of outputs, 48 of them
 * per block, and a row of 60 or 30 (SegNet-Basic at 45x60, 23x30) fills its blocks
 * badly; every tap also needs three unaligned vector loads of the staged input.  Here
 * a block is 6 neighbouring output pixels x all 64 channels: 24 accumulators of 16
 * channels each.  Per tap (c, i, j) the 64 weights are 4 aligned vector loads, each
 * of the 6 input values is broadcast once and feeds 4 multiply-adds: 10 loads per 24
 * multiply-adds, and no output is computed in vain once the row's width is a multiple
 * of 6 (SegNet-Basic's rows are 480, 240, 120, 60 and 30 wide).  oneDNN's direct
 * convolutions (PyTorch's on this CPU) block the same way, by channels.
 *
 * Used for float32 layers of 64 outputs with 7x7 kernels, and with 3x3 ones from at
 * least 32 inputs (npfcn/kernels/channel.py says where and why).
 *
 * Layouts:
 *   xp   (N, C, HP, WP): HP = OH + KH - 1; WP >= round_up(OW, 6) + KW - 1, zeros
 *        past the image (the last block of a row reads up to 5 columns past OW).
 *   wt   (C*KH*KW, 64): the 64 output channels' weights of tap (c, i, j) side by side.
 *   y    (N, 64, OH, OW).
 *
 * Threads split the (n, output row) pairs; each y row is written by one thread, and
 * every sum runs in the same order whatever the thread count.  Per block the
 * weights (C*KH*KW*256 bytes: 800 KiB at 64 input channels and 7x7) stream through
 * from the L2 cache in order, which the hardware prefetcher follows; the 24 sums stay
 * in registers for the whole reduction.
 */
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include "npfcn_kernels.h"
#ifdef _OPENMP
#include <omp.h>
#define CC_TEAM_SIZE() omp_get_num_threads()
#else
#define CC_TEAM_SIZE() 1
#endif

#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#define CHANNEL_CONV_PIXELS 6       /* output pixels per block */
#define CHANNEL_CONV_OUT 64         /* output channels: 4 vectors of 16 floats */

#define CHANNEL_DW_PIXELS 2048     /* weight gradient: output pixels per band (about) */

/* The floats of one thread's dy band (channel_conv_weight_grad_f32). */
int64_t channel_conv_dw_band_floats(int64_t OW)
{
    return (OW > CHANNEL_DW_PIXELS ? OW : CHANNEL_DW_PIXELS) * 64;
}

/* The weights in the layout the loops read, (taps, 64): row (c, i, j) holds the 64
 * output channels' weights of that tap.  From w (64, C, KH, KW) for the forward pass:
 *     wt[(c*KH*KW + t)*64 + o] = w[(o*C + c)*KH*KW + t]                   (t = i*KW + j)
 * and, with flipped set, from a layer's w (O, 64, KH, KW) for its input gradient - the
 * convolution of dy (O channels) with the weights turned by 180 degrees, whose 64
 * outputs are the layer's 64 inputs:
 *     wt[(o*KH*KW + t)*64 + c] = w[(o*64 + c)*KH*KW + (KH*KW - 1 - t)]
 * Written out here, tap by tap, because NumPy's copy of the transposed view read w
 * with a stride of a whole filter and took 0.25 ms of SegNet-Basic's 17 ms layer. */
void channel_conv_weights_f32(const float *w, float *wt, int64_t C, int64_t taps,
                              int64_t flipped)
{
    /* One row of 64 at a time; the weights it reads (a tap of every filter of one input
     * channel, or every tap of one output channel: at most 64 x 49 floats) stay in the
     * L1 cache from one row to the next. */
    for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < taps; ++t) {
            float *row = wt + (c * taps + t) * 64;
            if (flipped) {      /* c: the layer's output channel, k: its input channel */
                const float *src = w + c * 64 * taps + (taps - 1 - t);
                for (int64_t k = 0; k < 64; ++k)
                    row[k] = src[k * taps];
            } else {
                const float *src = w + c * taps + t;
                for (int64_t o = 0; o < 64; ++o)
                    row[o] = src[o * C * taps];
            }
        }
}

/* The zero-framed copy of x the loops read: xp (N, C, HP, WP) holds x (N, C, H, W) at
 * offset (PH, PW) - a negative offset crops - and zeros elsewhere; where x_mask is
 * given, x counts only where x_mask > 0 (the input gradient through a fused ReLU).
 * One pass writes every element of xp once. */
void channel_conv_pad_f32(const float *x, const float *x_mask, float *xp, int64_t N,
                          int64_t C, int64_t H, int64_t W, int64_t HP, int64_t WP,
                          int64_t PH, int64_t PW)
{
    /* input columns [cx0, cx1) land in padded columns [cx0 + PW, cx1 + PW) */
    int64_t cx0 = PW < 0 ? -PW : 0, cx1 = W < WP - PW ? W : WP - PW;
    if (cx1 < cx0) cx1 = cx0;
    const int64_t planes = N * C;
    int64_t plane;
    const int64_t parallel = planes * HP * WP > 262144;
    const int64_t held = npfcn_hold_core(parallel);           /* csrc/affinity.c */
    #pragma omp parallel for schedule(static) if(parallel)
    for (plane = 0; plane < planes; ++plane) {
        for (int64_t py = 0; py < HP; ++py) {
            float *row = xp + (plane * HP + py) * WP;
            const int64_t iy = py - PH;
            if (iy < 0 || iy >= H || cx1 == cx0) {
                memset(row, 0, (size_t)WP * sizeof(float));
                continue;
            }
            const int64_t at = (plane * H + iy) * W;
            memset(row, 0, (size_t)(cx0 + PW) * sizeof(float));
            for (int64_t ix = cx0; ix < cx1; ++ix)
                row[ix + PW] = x_mask && !(x_mask[at + ix] > 0) ? 0.0f : x[at + ix];
            memset(row + cx1 + PW, 0, (size_t)(WP - cx1 - PW) * sizeof(float));
        }
    }
    npfcn_release_core(held);
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CHANNEL_CONV_BUILT 1
#define CHANNEL_CONV_TARGET __attribute__((target("arch=x86-64-v4")))

typedef float cc_vec __attribute__((vector_size(64)));     /* 16 floats */

CHANNEL_CONV_TARGET static inline cc_vec cc_load(const float *p)
{
    cc_vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* One float in all 16 lanes, loaded straight into them (vbroadcastss from memory).
 * "zero + x" said the same to the compiler, but without -ffast-math 0 + x is not x
 * (-0.0 becomes +0.0), so it added in a scalar register, then broadcast: three
 * instructions per broadcast instead of one, and in loops over many pixels GCC kept
 * the scalars across iterations and spilled them. */
CHANNEL_CONV_TARGET static inline cc_vec cc_broadcast(const float *p)
{
    return (cc_vec)_mm512_set1_ps(*p);
}

/* The 4 multiply-adds of pixel P: x value broadcast once, times the 4 weight vectors. */
#define CC_PIXEL(P)                                                                    \
    { const cc_vec b = cc_broadcast(x + j + P);                                        \
      a##P##0 += b * w0; a##P##1 += b * w1; a##P##2 += b * w2; a##P##3 += b * w3; }
#define CC_START(P)                                                                    \
    cc_vec a##P##0 = start0, a##P##1 = start1, a##P##2 = start2, a##P##3 = start3;
#define CC_STORE(P)                                                                    \
    memcpy(out + P * 64, &a##P##0, 64); memcpy(out + P * 64 + 16, &a##P##1, 64);        \
    memcpy(out + P * 64 + 32, &a##P##2, 64); memcpy(out + P * 64 + 48, &a##P##3, 64);

/* out[p * 64 + o] for 6 pixels p: the sums of one block, starting at the bias.  xb: the
 * padded input at (c = 0, row oy, column ox0). */
CHANNEL_CONV_TARGET static void channel_block(const float *restrict xb,
        const float *restrict wt, const float *restrict bias, int64_t C, int64_t KH,
        int64_t KW, int64_t plane, int64_t WP, float out[CHANNEL_CONV_PIXELS * 64])
{
    const cc_vec zero = {0};
    const cc_vec start0 = bias ? cc_load(bias) : zero, start1 = bias ? cc_load(bias + 16) : zero;
    const cc_vec start2 = bias ? cc_load(bias + 32) : zero, start3 = bias ? cc_load(bias + 48) : zero;
    CC_START(0) CC_START(1) CC_START(2) CC_START(3) CC_START(4) CC_START(5)
    const float *w = wt;
    for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < KH; ++i) {
            const float *x = xb + c * plane + i * WP;
            for (int64_t j = 0; j < KW; ++j, w += 64) {
                const cc_vec w0 = cc_load(w), w1 = cc_load(w + 16);
                const cc_vec w2 = cc_load(w + 32), w3 = cc_load(w + 48);
                CC_PIXEL(0) CC_PIXEL(1) CC_PIXEL(2) CC_PIXEL(3) CC_PIXEL(4) CC_PIXEL(5)
            }
        }
    CC_STORE(0) CC_STORE(1) CC_STORE(2) CC_STORE(3) CC_STORE(4) CC_STORE(5)
}

CHANNEL_CONV_TARGET
static void channel_conv_forward_avx512(const float *xp, const float *wt, const float *bias,
        float *y, int64_t relu, int64_t N, int64_t C, int64_t HP, int64_t WP, int64_t KH,
        int64_t KW, int64_t OH, int64_t OW)
{
    const int64_t tasks = N * OH, plane = HP * WP;
    int64_t task;
    const int64_t held = npfcn_hold_core(tasks > 1);        /* csrc/affinity.c */
    #pragma omp parallel for schedule(static) if(tasks > 1)
    for (task = 0; task < tasks; ++task) {
        const int64_t n = task / OH, oy = task % OH;
        const float *xb = xp + (n * C * HP + oy) * WP;
        float *yrow = y + n * CHANNEL_CONV_OUT * OH * OW + oy * OW;
        float sums[CHANNEL_CONV_PIXELS * 64];
        for (int64_t ox0 = 0; ox0 < OW; ox0 += CHANNEL_CONV_PIXELS) {
            channel_block(xb + ox0, wt, bias, C, KH, KW, plane, WP, sums);
            const int64_t count = OW - ox0 < CHANNEL_CONV_PIXELS ? OW - ox0 : CHANNEL_CONV_PIXELS;
            for (int64_t o = 0; o < CHANNEL_CONV_OUT; ++o)     /* pixel-major -> planes */
                for (int64_t p = 0; p < count; ++p) {
                    const float v = sums[p * 64 + o];
                    yrow[o * OH * OW + ox0 + p] = relu && !(v > 0 || v != v) ? 0.0f : v;
                }
        }
    }
    npfcn_release_core(held);
}

/* The weight gradient, vectorised the same way:
 *
 *   dw[o, c, i, j] = sum_{n, oy, ox} dy[n, o, oy, ox] * xp[n, c, oy + i, ox + j]
 *
 * with dy transposed channels-last, a band at a time.  A block is CHANNEL_DW_TAPS = 5
 * taps (i, j) of one input channel c x all 64 output channels, 20 sums in registers:
 * per output pixel, 4 aligned loads of its 64 dy values and one broadcast of the input
 * under each tap feed 20 multiply-adds.  Why 5: a 7x7 kernel's 49 taps fill 10 blocks
 * of 5 (50 places) but 9 of 6 (54); measured 4-10 % faster than 6 taps x 4 vectors
 * (24 sums) on SegNet-Basic's layers, Zen 4.  The pixels are taken a band of
 * rows at a time (about CHANNEL_DW_PIXELS of them: the band's dy, 512 KiB, stays in the
 * L2 cache while every (c, taps) block runs over it, and the fewer the bands the fewer
 * the additions into the partial sums - 9 % of the loop's time at 256 pixels; 2048
 * ran 4 % faster at 4 x 23x30, the same at 45x60); each block's sums are added into the
 * thread's partial sums in double, and at the end the threads' partial sums into dw,
 * each element by one thread. */
#define CHANNEL_DW_TAPS 5
#define CC_DW_TAP(T)                                                                    \
    { const cc_vec b = cc_broadcast(xr + ox + off[T]);                                  \
      a##T##0 += b * g0; a##T##1 += b * g1; a##T##2 += b * g2; a##T##3 += b * g3; }

CHANNEL_CONV_TARGET static void channel_dw_block(const float *restrict dyt,
        const float *restrict xc, const int64_t off[CHANNEL_DW_TAPS], int64_t oy0,
        int64_t rows, int64_t OW, int64_t WP, float out[CHANNEL_DW_TAPS * 64])
{
    const cc_vec zero = {0};
    const cc_vec start0 = zero, start1 = zero, start2 = zero, start3 = zero;
    CC_START(0) CC_START(1) CC_START(2) CC_START(3) CC_START(4)
#if CHANNEL_DW_TAPS == 6
    CC_START(5)
#endif
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = xc + (oy0 + r) * WP;
        const float *g = dyt + r * OW * 64;
        for (int64_t ox = 0; ox < OW; ++ox, g += 64) {
            const cc_vec g0 = cc_load(g), g1 = cc_load(g + 16);
            const cc_vec g2 = cc_load(g + 32), g3 = cc_load(g + 48);
            CC_DW_TAP(0) CC_DW_TAP(1) CC_DW_TAP(2) CC_DW_TAP(3) CC_DW_TAP(4)
#if CHANNEL_DW_TAPS == 6
            CC_DW_TAP(5)
#endif
        }
    }
    CC_STORE(0) CC_STORE(1) CC_STORE(2) CC_STORE(3) CC_STORE(4)
#if CHANNEL_DW_TAPS == 6
    CC_STORE(5)
#endif
}

/* Rows of output pixels per weight-gradient task: about CHANNEL_DW_PIXELS pixels, but
 * at least two tasks per thread where the batch has the rows. */
static int64_t channel_dw_band(int64_t N, int64_t OH, int64_t OW, int64_t threads)
{
    const int64_t spread = (N * OH + 2 * threads - 1) / (2 * threads);
    int64_t band = OW >= CHANNEL_DW_PIXELS ? 1 : CHANNEL_DW_PIXELS / OW;
    if (band > spread) band = spread;
    return band > 0 ? band : 1;
}

CHANNEL_CONV_TARGET
static void channel_conv_weight_grad_avx512(const float *xp, const float *dy,
        const float *dy_mask, float *dw, float *db, int64_t N, int64_t C, int64_t HP,
        int64_t WP, int64_t KH, int64_t KW, int64_t OH, int64_t OW, double *partial,
        float *dy_band)
{
    const int64_t taps = KH * KW, wsize = C * taps * 64, threads = npfcn_num_threads();
    const int64_t band = channel_dw_band(N, OH, OW, threads);
    const int64_t bands = (OH + band - 1) / band, tasks = N * bands;
    const int64_t slice = wsize + 64;               /* dw's partial sums, then db's */
    const int64_t held = npfcn_hold_core(tasks > 1);        /* csrc/affinity.c */
    #pragma omp parallel if(tasks > 1)
    {
        double *sum = partial + (int64_t)npfcn_thread_id() * slice;
        float *g = dy_band + (int64_t)npfcn_thread_id() * channel_conv_dw_band_floats(OW);
        float block[CHANNEL_DW_TAPS * 64];
        memset(sum, 0, (size_t)slice * sizeof(double));
        #pragma omp single      /* slices of threads this team does not have (if any) */
        for (int64_t t = CC_TEAM_SIZE(); t < threads; ++t)
            memset(partial + t * slice, 0, (size_t)slice * sizeof(double));
        int64_t task;
        #pragma omp for schedule(static)
        for (task = 0; task < tasks; ++task) {
            const int64_t n = task / bands, oy0 = (task % bands) * band;
            const int64_t rows = OH - oy0 < band ? OH - oy0 : band, pixels = rows * OW;
            /* this band of dy, channels last (through the ReLU's mask), and its sums */
            for (int64_t o = 0; o < 64; ++o) {
                const int64_t at = ((n * 64 + o) * OH + oy0) * OW;
                double total = 0;
                for (int64_t p = 0; p < pixels; ++p) {
                    const float v = dy_mask && !(dy_mask[at + p] > 0) ? 0.0f : dy[at + p];
                    g[p * 64 + o] = v;
                    total += v;
                }
                sum[wsize + o] += total;
            }
            for (int64_t c = 0; c < C; ++c) {
                const float *xc = xp + (n * C + c) * HP * WP;
                for (int64_t t0 = 0; t0 < taps; t0 += CHANNEL_DW_TAPS) {
                    const int64_t count = taps - t0 < CHANNEL_DW_TAPS ? taps - t0 : CHANNEL_DW_TAPS;
                    int64_t off[CHANNEL_DW_TAPS];
                    for (int64_t t = 0; t < CHANNEL_DW_TAPS; ++t) {  /* past count: tap 0 again */
                        const int64_t tap = t0 + (t < count ? t : 0);
                        off[t] = (tap / KW) * WP + tap % KW;
                    }
                    channel_dw_block(g, xc, off, oy0, rows, OW, WP, block);
                    double *dst = sum + (c * taps + t0) * 64;
                    for (int64_t k = 0; k < count * 64; ++k)
                        dst[k] += block[k];
                }
            }
        }
        /* the threads' partial sums into dw (o, c, i, j) and db, each element by one thread */
        int64_t ct;
        #pragma omp for schedule(static)
        for (ct = 0; ct < C * taps; ++ct)
            for (int64_t o = 0; o < 64; ++o) {
                double total = 0;
                for (int64_t t = 0; t < threads; ++t)
                    total += partial[t * slice + ct * 64 + o];
                dw[o * C * taps + ct] += (float)total;
            }
        #pragma omp single
        for (int64_t o = 0; db && o < 64; ++o) {
            double total = 0;
            for (int64_t t = 0; t < threads; ++t)
                total += partial[t * slice + wsize + o];
            db[o] += (float)total;
        }
    }
    npfcn_release_core(held);
}

int64_t channel_conv_supported(void)
{
    return __builtin_cpu_supports("x86-64-v4") ? 1 : 0;
}
#else
#define CHANNEL_CONV_BUILT 0
int64_t channel_conv_supported(void)
{
    return 0;
}
#endif

/* Both return 0, or -1 where the CPU (or the build) has no AVX-512 and nothing was done.
 * The weight gradient is ADDED into dw (O=64, C, KH, KW) and db (64; NULL: none);
 * partial: npfcn_num_threads() x (C*KH*KW*64 + 64) doubles, dy_band:
 * npfcn_num_threads() x channel_conv_dw_band_floats(OW) floats. */
int64_t channel_conv_weight_grad_f32(const float *xp, const float *dy, const float *dy_mask,
        float *dw, float *db, int64_t N, int64_t C, int64_t HP, int64_t WP, int64_t KH,
        int64_t KW, int64_t OH, int64_t OW, double *partial, float *dy_band)
{
#if CHANNEL_CONV_BUILT
    if (channel_conv_supported()) {
        channel_conv_weight_grad_avx512(xp, dy, dy_mask, dw, db, N, C, HP, WP, KH, KW, OH,
                                        OW, partial, dy_band);
        return 0;
    }
#endif
    (void)xp; (void)dy; (void)dy_mask; (void)dw; (void)db; (void)N; (void)C; (void)HP;
    (void)WP; (void)KH; (void)KW; (void)OH; (void)OW; (void)partial; (void)dy_band;
    return -1;
}

int64_t channel_conv_forward_f32(const float *xp, const float *wt, const float *bias,
        float *y, int64_t relu, int64_t N, int64_t C, int64_t HP, int64_t WP, int64_t KH,
        int64_t KW, int64_t OH, int64_t OW)
{
#if CHANNEL_CONV_BUILT
    if (channel_conv_supported()) {
        channel_conv_forward_avx512(xp, wt, bias, y, relu, N, C, HP, WP, KH, KW, OH, OW);
        return 0;
    }
#endif
    (void)xp; (void)wt; (void)bias; (void)y; (void)relu; (void)N; (void)C; (void)HP;
    (void)WP; (void)KH; (void)KW; (void)OH; (void)OW;
    return -1;
}
