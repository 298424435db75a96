"""csrc/affinity.c: during a parallel loop each OpenMP thread has a core of its own,
and nothing outside the kernels sees the pin.

Why it exists (two threads that end up taking turns on one core) is in the C file and
docs/kernels.md; what is tested here is its contract: which threads are pinned, when,
and that the calling thread's own mask - which Python threads and child processes
inherit - is back as it was after every call.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from npfcn import sysinfo
from npfcn.kernels import backend

pytestmark = [
    pytest.mark.skipif(not backend.c_available(), reason="C kernel not built"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pinning is Linux only"),
]

PARALLEL_RELU = 1 << 20     # elements: above relu.c's threshold for going parallel


def usable_cores():
    return sorted(os.sched_getaffinity(0))


@pytest.fixture
def thread_per_core():
    """As many kernel threads as this process may use cores (where pinning applies)."""
    cores = usable_cores()
    if len(cores) < 2:
        pytest.skip("needs at least two usable cores")
    if backend.lib().npfcn_num_threads() < 1:
        pytest.skip("built without OpenMP")
    before = backend.num_threads()
    sysinfo.set_threads(len(cores))
    if not backend.lib().npfcn_pins_threads():
        sysinfo.set_threads(before)
        pytest.skip("built without OpenMP or pinning turned off (NPFCN_PIN_THREADS=0)")
    yield cores
    sysinfo.set_threads(before)


def parallel_relu():
    x = np.random.default_rng(0).standard_normal(PARALLEL_RELU).astype(np.float32)
    y = np.empty_like(x)
    backend.lib().relu_forward_f32(backend.ffi().cast("float *", x.ctypes.data),
                                   backend.ffi().cast("float *", y.ctypes.data), x.size)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def thread_masks():
    """{thread id: the cores it may run on} for every thread of this process."""
    masks = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            masks[int(tid)] = os.sched_getaffinity(int(tid))
        except OSError:                 # the thread ended meanwhile
            pass
    return masks


def test_the_caller_gets_its_mask_back_after_a_parallel_loop(thread_per_core):
    before = os.sched_getaffinity(0)
    parallel_relu()
    assert os.sched_getaffinity(0) == before


def test_a_thread_started_after_a_kernel_call_may_use_every_core(thread_per_core):
    parallel_relu()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
    worker.start()
    worker.join()
    assert seen == [set(thread_per_core)]


def test_each_helper_thread_is_pinned_to_a_core_of_its_own(thread_per_core):
    parallel_relu()
    me = threading.get_native_id()
    pinned = {tid: mask for tid, mask in thread_masks().items() if tid != me and len(mask) == 1}
    # helpers 1 .. n-1 take the 2nd .. n-th usable core; the caller takes the first
    # (only during a loop), so no helper shares its core.  (OpenBLAS's workers, pinned
    # by set_threads, sit on the same cores: see the last test.)
    assert all(mask in [{core} for core in thread_per_core[1:]] for mask in pinned.values())
    assert all(list(pinned.values()).count({core}) >= 1 for core in thread_per_core[1:])


def test_one_thread_pins_nothing(thread_per_core):
    sysinfo.set_threads(1)
    assert backend.lib().npfcn_pins_threads() == 0
    before = os.sched_getaffinity(0)
    parallel_relu()
    assert os.sched_getaffinity(0) == before


def test_npfcn_pin_threads_0_turns_it_off(thread_per_core):
    script = (
        "import os, numpy as np\n"
        "from npfcn import sysinfo\n"
        "from npfcn.kernels import backend\n"
        f"sysinfo.set_threads({len(thread_per_core)})\n"
        "x = np.ones(1 << 20, np.float32); y = np.empty_like(x)\n"
        "f = backend.ffi().cast\n"
        "backend.lib().relu_forward_f32(f('float *', x.ctypes.data), f('float *', y.ctypes.data), x.size)\n"
        "single = [t for t in os.listdir('/proc/self/task') if len(os.sched_getaffinity(int(t))) == 1]\n"
        "print(backend.lib().npfcn_pins_threads(), len(single))\n")
    for value in ("0", "1"):
        env = dict(os.environ, NPFCN_PIN_THREADS=value)
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        pins, singles = (int(v) for v in out.stdout.split())
        if value == "0":
            assert (pins, singles) == (0, 0), out.stderr
        else:       # the OpenMP helpers, and OpenBLAS's workers where it can pin them
            assert pins == 1 and singles >= len(thread_per_core) - 1, out.stderr


def test_openblas_workers_are_pinned_one_per_core_after_the_first(thread_per_core, monkeypatch):
    """sysinfo.pin_blas_workers (called by set_threads): OpenBLAS's workers take the 2nd,
    3rd, ... usable core; the caller keeps its mask; one thread or NPFCN_PIN_THREADS=0
    pins nothing."""
    if sysinfo.blas_threads() != len(thread_per_core):
        pytest.skip("this BLAS does not report or take the thread count")
    before = os.sched_getaffinity(0)
    pinned = sysinfo.pin_blas_workers()
    if pinned == 0:
        pytest.skip("this BLAS has no openblas_setaffinity")
    assert pinned == len(thread_per_core) - 1
    assert os.sched_getaffinity(0) == before
    singles = [mask for tid, mask in thread_masks().items() if len(mask) == 1]
    for core in thread_per_core[1:]:        # the OpenMP helper and the BLAS worker
        assert singles.count({core}) >= 1
    monkeypatch.setenv("NPFCN_PIN_THREADS", "0")
    assert sysinfo.pin_blas_workers() == 0
    monkeypatch.delenv("NPFCN_PIN_THREADS")
    sysinfo.set_threads(1)
    assert sysinfo.pin_blas_workers() == 0
