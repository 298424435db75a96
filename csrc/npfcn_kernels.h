/* npfcn C kernels: declarations - the only place they are written.
 *
 * csrc/build_kernels.py hands this file, expanded by the C preprocessor, to cffi
 * as its cdef: the Python side calls exactly these prototypes.
 *
 * Every array is C-contiguous and has been checked by Python
 * (npfcn/kernels/boundary.py) before it gets here: dtype, shape and size all agree
 * with the dimensions passed in.  Sizes and indices are int64_t so that large
 * images cannot overflow a 32-bit int.
 *
 * im2col layout (per image, Caffe style):
 *   x    : (N, C, H, W)
 *   cols : (N, C*KH*KW, OH*OW)   row (c*KH + i)*KW + j, column oy*OW + ox holds
 *          x[n, c, oy*SH - PH + i*DH, ox*SW - PW + j*DW]   (0 outside the image)
 * OH and OW are passed in (not derived) so that callers may ask for any grid;
 * every image access is bounds-checked against H and W.
 * col2im is the adjoint: it ADDS each column entry back into x.
 * The *_strided variants take the column layout explicitly: row r of image n
 * starts at cols + n*image_stride + r*row_stride (see im2col.c); the plain
 * functions are the per-image layout above.
 */
#ifndef NPFCN_KERNELS_H
#define NPFCN_KERNELS_H
#include <stdint.h>

#define NPFCN_DECLARE(T, SUFFIX)                                                       \
void im2col_##SUFFIX(const T *x, T *cols, int64_t N, int64_t C, int64_t H, int64_t W, \
                     int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,       \
                     int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW);      \
void col2im_##SUFFIX(const T *cols, T *x, int64_t N, int64_t C, int64_t H, int64_t W, \
                     int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,       \
                     int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW);      \
void im2col_strided_##SUFFIX(const T *x, T *cols, int64_t N, int64_t C, int64_t H,    \
                     int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW,        \
                     int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,       \
                     int64_t OW, int64_t image_stride, int64_t row_stride);            \
void col2im_strided_##SUFFIX(const T *cols, T *x, int64_t N, int64_t C, int64_t H,    \
                     int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW,        \
                     int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t OH,       \
                     int64_t OW, int64_t image_stride, int64_t row_stride);            \
void maxpool_forward_##SUFFIX(const T *x, T *y, int64_t *indices, int64_t NC,          \
                     int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t SH,         \
                     int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW,       \
                     int64_t OH, int64_t OW);                                          \
void maxpool_backward_##SUFFIX(const T *dy, const int64_t *indices, T *dx, int64_t NC, \
                     int64_t HW, int64_t OHW);

NPFCN_DECLARE(float, f32)
NPFCN_DECLARE(double, f64)

/* Number of threads the kernels use (1 when built without OpenMP), and a way
 * to change it at run time (ignored without OpenMP). */
int npfcn_num_threads(void);
void npfcn_set_num_threads(int64_t n);
/* The calling thread's number inside a parallel region (0 outside one): it
 * picks the thread's slice of a scratch buffer of npfcn_num_threads() slices. */
int npfcn_thread_id(void);
/* Around every parallel loop (csrc/affinity.c says why): with parallel nonzero and a
 * team of as many threads as the caller may use cores, pin the team's helpers to one
 * core each (once) and the caller to the first core until npfcn_release_core(held).
 * npfcn_pins_threads: whether a parallel loop called now would do so (npfcn info). */
int64_t npfcn_hold_core(int64_t parallel);
void npfcn_release_core(int64_t held);
int64_t npfcn_pins_threads(void);

/* Winograd transforms, F(2x2, 3x3) with PREFIX winograd (winograd.c) and F(4x4, 3x3)
 * with PREFIX winograd4 (winograd4.c); scratch: npfcn_num_threads() *
 * PREFIX_scratch(TW) elements.  Layouts are described in those files. */
#define NPFCN_DECLARE_WINOGRAD(PREFIX, T, SUFFIX)                                       \
void PREFIX##_input_##SUFFIX(const T *x, T *V, int64_t N, int64_t C, int64_t H,        \
                             int64_t W, int64_t PH, int64_t PW, int64_t t0, int64_t t1, \
                             int64_t TW, T *scratch);                                    \
void PREFIX##_input_adj_##SUFFIX(const T *dV, T *dx, int64_t N, int64_t C, int64_t H,  \
                                 int64_t W, int64_t PH, int64_t PW, int64_t t0,          \
                                 int64_t t1, int64_t TW, T *scratch);                    \
void PREFIX##_output_##SUFFIX(const T *M, T *y, int64_t N, int64_t O, int64_t OH,      \
                              int64_t OW, int64_t t0, int64_t t1, int64_t TW, T *scratch); \
void PREFIX##_output_adj_##SUFFIX(const T *dy, T *dM, int64_t N, int64_t O, int64_t OH,\
                                  int64_t OW, int64_t t0, int64_t t1, int64_t TW,        \
                                  T *scratch);                                           \
void PREFIX##_weight_##SUFFIX(const T *w, T *U, int64_t O, int64_t C);                 \
void PREFIX##_weight_adj_##SUFFIX(const T *dU, T *dw, int64_t O, int64_t C);

NPFCN_DECLARE_WINOGRAD(winograd, float, f32)
NPFCN_DECLARE_WINOGRAD(winograd, double, f64)
NPFCN_DECLARE_WINOGRAD(winograd4, float, f32)
NPFCN_DECLARE_WINOGRAD(winograd4, double, f64)
int64_t winograd_scratch(int64_t TW);
int64_t winograd4_scratch(int64_t TW);

/* Sub-pixel phases <-> image for transposed convolutions (subpixel.c):
 * phases (SH*SW*O, N, GH, GW), image (N, O, OH, OW). */
#define NPFCN_DECLARE_SUBPIXEL(T, SUFFIX)                                               \
void phases_to_image_##SUFFIX(const T *phases, T *image, int64_t N, int64_t O,         \
                              int64_t SH, int64_t SW, int64_t GH, int64_t GW,           \
                              int64_t OH, int64_t OW, int64_t PH, int64_t PW);          \
void image_to_phases_##SUFFIX(const T *image, T *phases, int64_t N, int64_t O,         \
                              int64_t SH, int64_t SW, int64_t GH, int64_t GW,           \
                              int64_t OH, int64_t OW, int64_t PH, int64_t PW);

NPFCN_DECLARE_SUBPIXEL(float, f32)
NPFCN_DECLARE_SUBPIXEL(double, f64)

/* Max unpooling (unpool.c): x, indices: (NC, HW) -> y: (NC, OHW), and the gather
 * back.  Indices lie in [0, OHW), checked by Python. */
#define NPFCN_DECLARE_UNPOOL(T, SUFFIX)                                                 \
void max_unpool_forward_##SUFFIX(const T *x, const int64_t *indices, T *y, int64_t NC, \
                                 int64_t HW, int64_t OHW);                               \
void max_unpool_backward_##SUFFIX(const T *dy, const int64_t *indices, T *dx,          \
                                  int64_t NC, int64_t HW, int64_t OHW);

NPFCN_DECLARE_UNPOOL(float, f32)
NPFCN_DECLARE_UNPOOL(double, f64)

/* Direct stride-1 convolution for few channels (direct.c; layouts there).
 * wb: (ceil(O/4), C*KH*KW, 4); scratch: see direct.c. */
#define NPFCN_DECLARE_DIRECT(T, SUFFIX)                                                 \
void direct_conv_forward_##SUFFIX(const T *x, const T *x_mask, const T *wb,           \
        const T *bias, T *y, int64_t relu, int64_t N, int64_t C,                         \
        int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t PH, int64_t PW, \
        int64_t OH, int64_t OW, int64_t oy0, int64_t oy1, int64_t ox0, int64_t ox1,     \
        T *scratch, int64_t width, int64_t flat);                                        \
void direct_conv_weight_grad_##SUFFIX(const T *x, const T *dy, const T *dy_mask, T *dw,\
        T *db, int64_t N,                                                                       \
        int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t PH, \
        int64_t PW, int64_t OH, int64_t OW, int64_t oy0, int64_t oy1, int64_t ox0,      \
        int64_t ox1, T *scratch);                                                        \
int64_t direct_conv_scratch_##SUFFIX(int64_t weight_grad, int64_t C, int64_t O,        \
        int64_t KH, int64_t KW, int64_t RX);

NPFCN_DECLARE_DIRECT(float, f32)
NPFCN_DECLARE_DIRECT(double, f64)
/* The widest vector the direct forward pass may use, in bytes (64: AVX-512, 32: the
 * rest): request 0 reports it, 32 or 64 chooses it where the CPU can run it.  Each call
 * passes the width it wants (width), at most this one. */
int64_t direct_conv_vector_bytes(int64_t request);

/* Direct stride-1 convolution to 64 output channels, vectors along the channels
 * (channel_conv.c; layouts there; AVX-512 only: returns -1 and does nothing elsewhere).
 * xp: the padded input (N, C, HP, WP); wt: (C*KH*KW, 64); y: (N, 64, OH, OW). */
int64_t channel_conv_supported(void);
int64_t channel_conv_forward_f32(const float *xp, const float *wt, const float *bias,
        float *y, int64_t relu, int64_t N, int64_t C, int64_t HP, int64_t WP, int64_t KH,
        int64_t KW, int64_t OH, int64_t OW);
/* The weight gradient, ADDED into dw (64, C, KH, KW) and db (64,) or NULL; dy: (N, 64,
 * OH, OW), dy_mask: a fused ReLU's output or NULL; partial: npfcn_num_threads() x
 * (C*KH*KW*64 + 64) doubles; dy_band: npfcn_num_threads() x
 * channel_conv_dw_band_floats(OW) floats (scratch). */
int64_t channel_conv_dw_band_floats(int64_t OW);
/* wt (taps*C or O*taps, 64) from w: the forward layout, or with flipped the input
 * gradient's (channel_conv.c), taps = KH*KW; and the zero-framed input xp (N, C, HP,
 * WP) from x (N, C, H, W) placed at (PH, PW), read as 0 where x_mask <= 0 (NULL: none).
 * Both on any CPU. */
void channel_conv_weights_f32(const float *w, float *wt, int64_t C, int64_t taps,
                              int64_t flipped);
void channel_conv_pad_f32(const float *x, const float *x_mask, float *xp, int64_t N,
                          int64_t C, int64_t H, int64_t W, int64_t HP, int64_t WP,
                          int64_t PH, int64_t PW);
int64_t channel_conv_weight_grad_f32(const float *xp, const float *dy, const float *dy_mask,
        float *dw, float *db, int64_t N, int64_t C, int64_t HP, int64_t WP, int64_t KH,
        int64_t KW, int64_t OH, int64_t OW, double *partial, float *dy_band);

/* Softmax cross-entropy per pixel, float32 (softmax.c; the math in
 * npfcn/reference/softmax.py).  s, e: (N, C, P); target, pixel_sum, pixel_weight: (N,
 * P), every label in [0, C) or ignore_index; weight: (C,) or NULL; sums: the weighted
 * loss and the weight total, in double.  The forward pass writes e = exp(s - max) and
 * its per-pixel sums; the backward pass turns e into the gradient in place. */
void softmax_xent_forward_f32(const float *s, const int64_t *target, const float *weight,
                              int64_t ignore_index, int64_t N, int64_t C, int64_t P,
                              float *e, float *pixel_sum, float *pixel_weight, double *sums);
void softmax_xent_backward_f32(float *e, const int64_t *target, const float *pixel_sum,
                               const float *pixel_weight, int64_t ignore_index, float factor,
                               int64_t N, int64_t C, int64_t P);

/* Batch normalisation's passes over the data (batchnorm.c; the math in
 * npfcn/kernels/batchnorm.py).  Arrays (N, C, HW); per-channel arrays (C,). */
#define NPFCN_DECLARE_BATCHNORM(T, SUFFIX)                                              \
void batch_norm_stats_##SUFFIX(const T *x, int64_t N, int64_t C, int64_t HW,           \
                               double *mean, double *var);                              \
void batch_norm_apply_##SUFFIX(const T *x, T *y, const T *scale, const T *shift,       \
                               const T *gamma, const T *beta, int64_t N, int64_t C,     \
                               int64_t HW);                                             \
void batch_norm_grad_sums_##SUFFIX(const T *dy, const T *x, const T *scale,            \
                                   const T *shift, int64_t N, int64_t C, int64_t HW,    \
                                   double *sum_dy, double *sum_dy_xhat);                \
void batch_norm_grad_input_##SUFFIX(const T *dy, const T *x, T *dx, const T *scale,    \
                                    const T *shift, const T *a, const T *b,             \
                                    const T *out_scale, int64_t N, int64_t C, int64_t HW);

NPFCN_DECLARE_BATCHNORM(float, f32)
NPFCN_DECLARE_BATCHNORM(double, f64)

/* ReLU (relu.c): n elements, contiguous. */
#define NPFCN_DECLARE_RELU(T, SUFFIX)                                                   \
void relu_forward_##SUFFIX(const T *x, T *y, int64_t n);                               \
void relu_backward_##SUFFIX(const T *y, const T *dy, T *dx, int64_t n);

NPFCN_DECLARE_RELU(float, f32)
NPFCN_DECLARE_RELU(double, f64)
#endif
