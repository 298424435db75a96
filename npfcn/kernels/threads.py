"""A thread pool that runs the independent bands of a layer side by side, one whole
pipeline per core.

Why: a layer computed band by band (transform, matrix products, transform)
can be parallelised in two ways.  Inside each step - every transform an
OpenMP loop, every product a threaded BLAS call - the threads meet at a barrier
dozens of times per band; each meeting costs a wake-up, and when another
program holds one of the cores it costs a whole scheduler time slice (a 64 -> 64
channel 3x3 convolution at 224x224 ran 30 times slower on two cores shared with
one busy process).  Across bands instead, each thread runs complete
single-threaded pipelines on bands it takes from a shared queue: no barrier until
the layer is done, caches stay with one core, and a thread that loses its core
for a while simply takes fewer bands.

``run(tasks, work)`` returns ``[work(task) for task in tasks]``, computed on
``backend.num_threads()`` threads when there are several (and enough tasks), with
OpenMP and OpenBLAS held to one thread inside the workers (and OpenBLAS's count
restored afterwards).  ``work`` must only write data no other task writes;
scratch comes from ``npfcn.kernels.workspace``, which is per thread.  The GIL is
released inside the C kernels (cffi) and NumPy's matmul, so the threads do run
at once.
"""
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

from . import backend

_pools = {}
_pools_lock = threading.Lock()
_blas_lock = threading.Lock()
_blas = None            # (get, set) of the loaded OpenBLAS thread count, or () if unknown


def _blas_thread_functions():
    global _blas
    if _blas is None:
        from ..sysinfo import _SET_THREAD_SYMBOLS, _THREAD_SYMBOLS, _blas_function

        get, set_ = _blas_function(_THREAD_SYMBOLS), _blas_function(_SET_THREAD_SYMBOLS)
        if get is None or set_ is None:
            _blas = ()
        else:
            get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
            _blas = (get, set_)
    return _blas


def _single_threaded_worker():
    """Pool initializer: this thread's OpenMP loops run on itself alone.

    (OpenMP's thread count is a per-thread setting: the caller's is untouched.)
    """
    if backend.active() == "c":
        backend.lib().npfcn_set_num_threads(1)


def _pool(threads):
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="npfcn-worker",
                initializer=_single_threaded_worker)
        return _pools[threads]


def run(tasks, work, parallel=None):
    """``[work(task) for task in tasks]``, in parallel when several threads are set.

    parallel: None decides by itself (at least two tasks per thread); False runs
    the tasks one after the other on the calling thread (each step may then use
    all threads itself); True spreads them even if there are few.
    """
    threads = backend.num_threads()
    if parallel is None:
        parallel = len(tasks) >= 2 * threads
    if threads <= 1 or len(tasks) <= 1 or not parallel \
            or threading.current_thread().name.startswith("npfcn-worker"):
        return [work(task) for task in tasks]
    blas = _blas_thread_functions()
    with _blas_lock:     # one parallel section at a time owns the BLAS setting
        previous = blas[0]() if blas else None
        if blas:
            blas[1](1)
        futures = [_pool(threads).submit(work, task) for task in tasks]
        try:
            return [future.result() for future in futures]
        finally:
            # On an error (or Ctrl-C) nothing queued may start, and nothing running
            # may still use the workspaces when the caller goes on.
            for future in futures:
                future.cancel()
            for future in futures:
                if not future.cancelled():
                    future.exception()      # waits for it to finish
            if blas:
                blas[1](previous)
