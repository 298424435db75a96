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


def blas_info():
    """{"name": ..., "version": ...} of the BLAS numpy was built with ("unknown" if not said)."""
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return {"name": str(blas.get("name", "unknown")), "version": str(blas.get("version", "unknown"))}
    except Exception:  # older numpy: no mode="dicts"; the info line is informative only
        return {"name": "unknown", "version": "unknown"}


def blas_threads():
    """Threads the loaded OpenBLAS uses, or None when that cannot be asked."""
    for library in _loaded_libraries():
        if "blas" not in os.path.basename(library).lower():
            continue
        try:
            handle = ctypes.CDLL(library)
        except OSError:
            continue
        for symbol in _THREAD_SYMBOLS:
            function = getattr(handle, symbol, None)
            if function is not None:
                function.restype = ctypes.c_int
                return int(function())
    return None


def _loaded_libraries():
    """Shared libraries mapped into this process (Linux /proc; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isabs(p))


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
        "BLAS": f"{blas['name']} {blas['version']}",
        "BLAS threads": blas_threads(),
        "CPU cores": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
    }
