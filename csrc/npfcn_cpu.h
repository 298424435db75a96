/* Building a function for several instruction sets (csrc/direct.c, winograd4.c,
 * softmax.c).
 *
 * NPFCN_CLONES: where GCC can (x86-64 Linux), the function is compiled for AVX-512
 * (x86-64-v4), AVX2 (x86-64-v3) and baseline x86-64, and the best the CPU has is picked
 * when the library loads (target_clones) - wheels must run on any x86-64, and
 * -march=native is only a build switch (NPFCN_NATIVE).
 *
 * NPFCN_INLINE: helpers of such a function are forced inline, so that each clone
 * compiles them for its own instruction set (called out of line they are the baseline
 * SSE2 version).
 */
#ifndef NPFCN_CPU_H
#define NPFCN_CPU_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define NPFCN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NPFCN_CLONES
#endif

#if defined(__GNUC__)
#define NPFCN_INLINE static inline __attribute__((always_inline))
#else
#define NPFCN_INLINE static inline
#endif

#endif
