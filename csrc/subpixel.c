/* Sub-pixel phases <-> image: the data movement of a transposed convolution
 * computed phase by phase (npfcn/kernels/subpixel.py has the whole method).
 *
 * Why this exists: with a kernel that is a multiple of the stride (FCN's
 * upsampling: kernel 2s, stride s), every output pixel (oy, ox) belongs to
 * exactly one "phase" (ry, rx) = ((oy + PH) mod SH, (ox + PW) mod SW) and one
 * grid cell (qy, qx) = ((oy + PH) div SH, (ox + PW) div SW).  Each phase is an
 * ordinary small convolution on the input grid, so a matrix product computes
 * all of them at once without a col2im scatter; what is left is moving the
 * results to their interleaved places (phases_to_image) and, backward, the
 * adjoint gather (image_to_phases).
 *
 * Layouts.  phases: (SH*SW*O, N, GH, GW), row (ry*SW + rx)*O + o;
 *           image:  (N, O, OH, OW).
 * phases_to_image writes every image element once: an element whose grid
 * cell lies beyond GH x GW (output padding) gets 0.  image_to_phases writes
 * every phase element once: one whose pixel lies outside the image (the
 * cropped border) gets 0.
 * Threads: split by image plane (n, o), or by phase row and image, so no two
 * threads write the same element.
 */
#include <string.h>
#include "npfcn_kernels.h"

#define NPFCN_PHASES_TO_IMAGE(T, SUFFIX)                                                 \
void phases_to_image_##SUFFIX(const T *phases, T *image, int64_t N, int64_t O,          \
                              int64_t SH, int64_t SW, int64_t GH, int64_t GW,            \
                              int64_t OH, int64_t OW, int64_t PH, int64_t PW)            \
{                                                                                        \
    const int64_t planes = N * O, grid = GH * GW, phase_rows = N * grid;                 \
    int64_t plane;                                                                       \
    const int64_t parallel = planes * OH * OW > 131072;                                 \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (plane = 0; plane < planes; ++plane) {                                           \
        const int64_t n = plane / O, o = plane % O;                                      \
        for (int64_t oy = 0; oy < OH; ++oy) {                                            \
            T *out = image + (plane * OH + oy) * OW;                                     \
            const int64_t qy = (oy + PH) / SH, ry = (oy + PH) % SH;                      \
            if (qy >= GH) {                                                              \
                memset(out, 0, (size_t)OW * sizeof(T));                                 \
                continue;                                                                \
            }                                                                            \
            /* the SW phase rows this image row interleaves */                           \
            const T *src = phases + ((ry * SW) * O + o) * phase_rows + n * grid + qy * GW; \
            const int64_t phase_step = O * phase_rows;                                   \
            int64_t qx = PW / SW, rx = PW % SW;                                          \
            for (int64_t ox = 0; ox < OW; ++ox) {                                        \
                out[ox] = qx < GW ? src[rx * phase_step + qx] : (T)0;                    \
                if (++rx == SW) { rx = 0; ++qx; }                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

#define NPFCN_IMAGE_TO_PHASES(T, SUFFIX)                                                 \
void image_to_phases_##SUFFIX(const T *image, T *phases, int64_t N, int64_t O,          \
                              int64_t SH, int64_t SW, int64_t GH, int64_t GW,            \
                              int64_t OH, int64_t OW, int64_t PH, int64_t PW)            \
{                                                                                        \
    const int64_t rows = SH * SW * O * N, grid = GH * GW;                                \
    int64_t row;                                                                         \
    const int64_t parallel = rows * grid > 131072;                                      \
    const int64_t held = npfcn_hold_core(parallel);  /* csrc/affinity.c */              \
    _Pragma("omp parallel for schedule(static) if(parallel)")                           \
    for (row = 0; row < rows; ++row) {                                                   \
        const int64_t n = row % N, phase_o = row / N;                                    \
        const int64_t o = phase_o % O, phase = phase_o / O;                              \
        const int64_t ry = phase / SW, rx = phase % SW;                                  \
        const T *src = image + (n * O + o) * OH * OW;                                    \
        T *dst = phases + row * grid;                                                    \
        /* grid columns whose pixel ox = qx*SW + rx - PW lies in [0, OW) */              \
        const int64_t off = rx - PW;                                                     \
        int64_t lo = off >= 0 ? 0 : (-off + SW - 1) / SW;                                \
        int64_t hi = OW - off <= 0 ? 0 : (OW - off + SW - 1) / SW;                       \
        if (hi > GW) hi = GW;                                                            \
        if (lo > hi) lo = hi;                                                            \
        for (int64_t qy = 0; qy < GH; ++qy) {                                            \
            T *out = dst + qy * GW;                                                      \
            const int64_t oy = qy * SH + ry - PH;                                        \
            if (oy < 0 || oy >= OH) {                                                    \
                memset(out, 0, (size_t)GW * sizeof(T));                                  \
                continue;                                                                \
            }                                                                            \
            const T *line = src + oy * OW;                                               \
            for (int64_t qx = 0; qx < lo; ++qx) out[qx] = 0;                             \
            for (int64_t qx = lo; qx < hi; ++qx) out[qx] = line[qx * SW + off];          \
            for (int64_t qx = hi; qx < GW; ++qx) out[qx] = 0;                            \
        }                                                                                \
    }                                                                                    \
    npfcn_release_core(held);                                                           \
}

NPFCN_PHASES_TO_IMAGE(float, f32)
NPFCN_PHASES_TO_IMAGE(double, f64)
NPFCN_IMAGE_TO_PHASES(float, f32)
NPFCN_IMAGE_TO_PHASES(double, f64)
