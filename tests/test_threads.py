"""npfcn.kernels.threads: independent bands of a layer on several threads.

The results must not depend on how the bands were spread: the parallel
Winograd path is compared with the same computation on one thread.
"""
import threading

import numpy as np
import pytest

from npfcn import functional as F, sysinfo
from npfcn.kernels import backend, threads, winograd

pytestmark = pytest.mark.skipif(not backend.c_available(), reason="C kernel not built")


@pytest.fixture
def two_threads():
    before = backend.num_threads(), sysinfo.blas_threads()
    sysinfo.set_threads(2)
    inside = sysinfo.blas_threads()     # what a section inside the test must restore
    yield
    assert sysinfo.blas_threads() == inside         # a section restores what it found
    sysinfo.set_threads(before[0])
    if before[1] is not None:
        sysinfo.set_threads(before[1])


def test_results_come_back_in_task_order_from_worker_threads(two_threads):
    names = []

    def work(block):
        names.append(threading.current_thread().name)
        return block * block

    with backend.using("c"):
        assert threads.run(list(range(10)), work) == [b * b for b in range(10)]
    assert all(name.startswith("npfcn-worker") for name in names)


def test_workers_run_blas_on_one_thread_and_the_setting_is_restored(two_threads):
    seen = []
    with backend.using("c"):
        threads.run([0, 1, 2, 3], lambda block: seen.append(
            (sysinfo.blas_threads(), backend.num_threads())))
        assert backend.num_threads() == 2
    if sysinfo.blas_threads() is not None:
        assert sysinfo.blas_threads() == 2
        assert {s[0] for s in seen} == {1}
    assert {s[1] for s in seen} == {1}       # OpenMP: the workers' own setting


def test_an_error_in_a_task_reaches_the_caller_and_nothing_is_left_running(two_threads):
    started = []

    def work(block):
        started.append(block)
        if block == 1:
            raise ValueError("block 1 failed")
        return block

    with backend.using("c"), pytest.raises(ValueError, match="block 1 failed"):
        threads.run(list(range(40)), work)
    count = len(started)
    with backend.using("c"):
        assert threads.run([5, 6], lambda b: b) == [5, 6]   # the pool still works
    assert len(started) == count                          # no stray task ran later


def test_one_thread_runs_in_the_caller():
    before = backend.num_threads()
    sysinfo.set_threads(1)
    try:
        with backend.using("c"):
            names = threads.run([0, 1, 2], lambda b: threading.current_thread().name)
    finally:
        sysinfo.set_threads(before)
    assert set(names) == {threading.current_thread().name}


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_parallel_winograd_equals_the_one_thread_result(two_threads, dtype, tol):
    """2 x 80 channels on 64x64: 512 tiles of 4x4 (enough x channels for Winograd over
    the direct loop), split into bands on two threads."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 80, 64, 64)).astype(dtype)
    w = rng.standard_normal((80, 80, 3, 3)).astype(dtype)
    dy = rng.standard_normal((2, 80, 64, 64)).astype(dtype)
    with backend.using("c"):
        plan = winograd.tile_row_bands(2, 80, 80, 16, 16, x.itemsize, winograd.F4)
        assert len(plan) >= 4                       # the parallel path is taken
        y2, cache = F.conv2d_forward(x, w, None, 1, 1)
        assert cache[0] == "winograd4"
        dx2, dw2, _ = F.conv2d_backward(dy, cache)
        sysinfo.set_threads(1)
        y1, cache = F.conv2d_forward(x, w, None, 1, 1)
        dx1, dw1, _ = F.conv2d_backward(dy, cache)
        sysinfo.set_threads(2)
    for a, b in ((y2, y1), (dx2, dx1), (dw2, dw1)):
        assert np.abs(a - b).max() <= tol * np.abs(b).max()
