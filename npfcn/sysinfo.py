"""What ``npfcn info`` reports: version, kernel backend, BLAS library and thread counts.

No new dependencies: the BLAS name comes from ``numpy.show_config(mode="dicts")``
and the BLAS thread count from the loaded OpenBLAS library itself (through
ctypes), when it can be found.
"""
import ctypes
import os
import platform

import numpy as np

from . import __version__, backend

# OpenBLAS exports its thread query under a prefix that depends on the build
# (numpy's wheels ship "scipy_openblas" with 64-bit integer symbols).
_THREAD_SYMBOLS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads_64_",
                   "openblas_get_num_threads64_", "openblas_get_num_threads")
_SET_THREAD_SYMBOLS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_64_",
                       "openblas_set_num_threads64_", "openblas_set_num_threads")


def blas_info():
    """{"name": ..., "version": ...} of the BLAS numpy was built with ("unknown" if not said)."""
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return {"name": str(blas.get("name", "unknown")), "version": str(blas.get("version", "unknown"))}
    except Exception:  # older numpy: no mode="dicts"; the info line is informative only
        return {"name": "unknown", "version": "unknown"}


def _blas_function(symbols):
    """The first of ``symbols`` exported by a loaded BLAS library, or None."""
    for library in _loaded_libraries():
        if "blas" not in os.path.basename(library).lower():
            continue
        try:
            handle = ctypes.CDLL(library)
        except OSError:
            continue
        for symbol in symbols:
            function = getattr(handle, symbol, None)
            if function is not None:
                return function
    return None


def blas_threads():
    """Threads the loaded OpenBLAS uses, or None when that cannot be asked."""
    function = _blas_function(_THREAD_SYMBOLS)
    if function is None:
        return None
    function.restype = ctypes.c_int
    return int(function())


def set_threads(count):
    """Use ``count`` threads in BLAS and in the C kernel (OpenMP) from now on.

    Setting the environment (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS) only works
    before numpy is imported; this works at any time.  Fewer threads than cores
    help when other programs share the CPU: busy-waiting threads that cannot
    get a core slow everything down.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"thread count must be a positive integer, got {count!r}")
    function = _blas_function(_SET_THREAD_SYMBOLS)
    if function is not None:
        function.argtypes = [ctypes.c_int]
        function(count)
    if backend.active() == "c":
        backend.kernels()[1].npfcn_set_num_threads(count)


def _loaded_libraries():
    """Shared libraries mapped into this process (Linux /proc; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isabs(p))


def _vector_width():
    from . import direct

    width = direct.vector_bytes()
    return "(no C kernel)" if width is None else f"{width} bytes"


def info():
    """A dict of everything ``npfcn info`` prints."""
    blas = blas_info()
    return {
        "npfcn": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "kernel backend": backend.active(),
        "C kernel built": backend.c_available(),
        "kernel threads": backend.num_threads(),
        "direct conv vectors": _vector_width(),
        "BLAS": f"{blas['name']} {blas['version']}",
        "BLAS threads": blas_threads(),
        "CPU cores": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
    }
