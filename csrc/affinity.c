/* Keeping each OpenMP thread on a core of its own while a kernel runs.
 *
 * Why: npfcn loads OpenMP with OMP_WAIT_POLICY=passive (npfcn/kernels/backend.py): a
 * thread that has finished its share of a parallel loop sleeps at once instead of
 * spinning, so that it leaves its core to the matrix products that follow.  The
 * price is in how Linux places a thread it wakes.  When the calling thread finishes
 * first and sleeps, the helper that finishes last wakes it and then sleeps itself,
 * and Linux moves the woken thread onto the waker's core (a hand-over: that core is
 * about to be free).  From then on the two threads take turns on one core while the
 * other idles; as they are never runnable at the same time for long, the load
 * balancer sees nothing to even out.  Every parallel loop then runs at one core's
 * speed, for seconds at a time - most often after the process has slept, as a
 * benchmark between its runs does (a 4 x 64 -> 64 3x3 convolution at 32x32, forward +
 * backward, 5.7 ms in a loop, 11 ms in every call after a 0.2 s pause; see
 * docs/kernels.md, "One core for two threads").
 *
 * The remedy: when a parallel loop's team has exactly as many threads as the caller
 * may use cores, helper k is pinned to the k-th of those cores (once; they are
 * OpenMP's own threads and stay pinned), and the calling thread to the first core
 * for the length of the loop only (npfcn_hold_core ... npfcn_release_core).  Then no
 * wake-up can move a thread onto another's core.  The caller gets back its own mask
 * right after the loop, so nothing outside npfcn's kernels sees the pin: Python
 * threads and child processes inherit the mask of the thread that starts them.
 * With fewer threads than cores (MPI ranks of one thread, another program using the
 * rest) nothing is pinned: the scheduler then has the room to place them itself.
 *
 * NPFCN_PIN_THREADS=0 in the environment turns it off (to measure the difference).
 * Linux only; elsewhere, and without OpenMP, the functions do nothing.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include "npfcn_kernels.h"

#if defined(__linux__) && defined(_OPENMP)
#include <sched.h>
#include <omp.h>

/* Per calling thread (each has its own OpenMP helpers): its mask while pinned, and
 * the mask and team size its helpers were pinned for. */
static __thread cpu_set_t caller_mask;
static __thread cpu_set_t helpers_mask;
static __thread int helpers_team;

/* The k-th core of set (k from 0), or -1. */
static int kth_core(const cpu_set_t *set, int k)
{
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; ++cpu)
        if (CPU_ISSET(cpu, set) && seen++ == k)
            return cpu;
    return -1;
}

static int pin_to(int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return cpu >= 0 && sched_setaffinity(0, sizeof one, &one) == 0;
}

static int pinning_enabled(void)
{
    static int enabled = -1;                /* read the environment once */
    if (enabled < 0) {
        const char *value = getenv("NPFCN_PIN_THREADS");
        enabled = !(value && value[0] == '0');
    }
    return enabled;
}

int64_t npfcn_hold_core(int64_t parallel)
{
    const int team = omp_get_max_threads();
    if (!parallel || team <= 1 || omp_in_parallel() || !pinning_enabled()
            || sched_getaffinity(0, sizeof caller_mask, &caller_mask) != 0
            || CPU_COUNT(&caller_mask) != team)
        return 0;
    if (team != helpers_team || !CPU_EQUAL(&helpers_mask, &caller_mask)) {
        /* Before the caller is pinned: a thread OpenMP creates here inherits its mask. */
        const cpu_set_t mask = caller_mask;
        #pragma omp parallel num_threads(team)
        {
            const int k = omp_get_thread_num();
            if (k > 0)
                pin_to(kth_core(&mask, k));
        }
        helpers_mask = mask;
        helpers_team = team;
    }
    return pin_to(kth_core(&caller_mask, 0));
}

void npfcn_release_core(int64_t held)
{
    if (held)
        sched_setaffinity(0, sizeof caller_mask, &caller_mask);
}

int64_t npfcn_pins_threads(void)
{
    cpu_set_t mask;
    const int team = omp_get_max_threads();
    return pinning_enabled() && team > 1 && sched_getaffinity(0, sizeof mask, &mask) == 0
           && CPU_COUNT(&mask) == team;
}
#else
int64_t npfcn_hold_core(int64_t parallel) { (void)parallel; return 0; }
void npfcn_release_core(int64_t held) { (void)held; }
int64_t npfcn_pins_threads(void) { return 0; }
#endif
