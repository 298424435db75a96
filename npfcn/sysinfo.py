"""What ``npfcn info`` reports: version, kernel backend, CPU, BLAS library, its kernel and thread counts.

No new dependencies: the BLAS name comes from ``numpy.show_config(mode="dicts")``
and the BLAS thread count from the loaded OpenBLAS library itself (through
ctypes), when it can be found.
"""
import ctypes
import os
import platform

import numpy as np

from . import __version__
from .kernels import backend

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
    get a core slow everything down.  With one thread per usable core, OpenBLAS's
    worker threads are pinned one per core (``pin_blas_workers``).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"thread count must be a positive integer, got {count!r}")
    function = _blas_function(_SET_THREAD_SYMBOLS)
    if function is not None:
        function.argtypes = [ctypes.c_int]
        function(count)
    if backend.active() == "c":
        backend.lib().npfcn_set_num_threads(count)
    pin_blas_workers()


_SET_AFFINITY_SYMBOLS = ("openblas_setaffinity", "scipy_openblas_setaffinity64_")


def pin_blas_workers():
    """Pin OpenBLAS's worker threads to one core each - the 2nd, 3rd, ... usable core,
    the first being the calling thread's - when BLAS runs one thread per usable core
    (and ``NPFCN_PIN_THREADS`` is not 0).  Returns how many were pinned.

    Why: npfcn sets OPENBLAS_THREAD_TIMEOUT=4 (npfcn/__init__.py), so OpenBLAS's
    workers sleep right after each product instead of spinning beside npfcn's own
    kernels; woken again, a worker was placed on the caller's core, and a small layer
    made of matrix products ran slowly for several calls after every pause (the
    default width's fc6, 2 x 32 -> 256 7x7 at 11x11, fwd+bwd 1.3 ms in a loop: after
    0.2 s asleep its next four calls took 4.8, 7.4, 5.6, 2.8 ms; pinned 5.1, 2.3, 2.2,
    2.0).  The same reason as csrc/affinity.c's for npfcn's OpenMP threads.
    """
    if _pinning_switched_off() or not hasattr(os, "sched_getaffinity"):
        return 0
    cores = sorted(os.sched_getaffinity(0))
    threads = blas_threads()
    pin = _blas_function(_SET_AFFINITY_SYMBOLS)
    if pin is None or threads is None or threads < 2 or threads != len(cores):
        return 0
    words = (max(cores) // 64) + 1
    pin.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
    pinned = 0
    for worker in range(threads - 1):       # OpenBLAS: 0 .. threads-2 are its workers
        mask = (ctypes.c_uint64 * words)()
        core = cores[worker + 1]
        mask[core // 64] = 1 << (core % 64)
        pinned += pin(worker, ctypes.sizeof(mask), ctypes.addressof(mask)) == 0
    return pinned


def _loaded_libraries():
    """Shared libraries mapped into this process (Linux /proc; empty elsewhere)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isabs(p))


_CORENAME_SYMBOLS = ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename_64_",
                     "openblas_get_corename64_", "openblas_get_corename")
_CONFIG_SYMBOLS = ("scipy_openblas_get_config64_", "scipy_openblas_get_config_64_",
                   "openblas_get_config64_", "openblas_get_config")


def _blas_string(symbols):
    function = _blas_function(symbols)
    if function is None:
        return None
    function.restype = ctypes.c_char_p
    value = function()
    return value.decode(errors="replace").strip() if value else None


def blas_core():
    """The kernel OpenBLAS chose for this CPU ("SkylakeX", "Haswell", "Zen", ...), or None.

    OpenBLAS built with DYNAMIC_ARCH picks its kernels at load time (or from the
    OPENBLAS_CORETYPE environment variable): on the same CPU the SkylakeX and
    Haswell kernels differ about 2x in sgemm, so a figure is only readable with it.
    """
    return _blas_string(_CORENAME_SYMBOLS)


def blas_config():
    """OpenBLAS's build line ("OpenBLAS 0.3.31 USE64BITINT DYNAMIC_ARCH ..."), or None."""
    return _blas_string(_CONFIG_SYMBOLS)


def _amd_core(family, model):
    """AMD's core generation from cpuid family/model (the names say "AMD EPYC" alone on
    some cloud machines)."""
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen"
    if family == 25:
        return "Zen 4" if (0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F
                           or 0xA0 <= model <= 0xAF) else "Zen 3"
    if family == 26:
        return "Zen 5"
    return None


def cpu_info(cpuinfo_path="/proc/cpuinfo"):
    """{"name", "vendor", "family", "model", "vectors"} of the first CPU (Linux; platform
    strings elsewhere).  vectors: the widest SIMD the CPU has ("AVX-512", "AVX2", ...)."""
    fields = {}
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break                       # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    vectors = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags
               else "AVX" if "avx" in flags else "NEON" if {"asimd", "neon"} & flags
               else "SSE2" if "sse2" in flags else None)

    def number(key):
        try:
            return int(fields[key], 0)
        except (KeyError, ValueError):
            return None

    return {"name": fields.get("model name") or platform.processor() or platform.machine(),
            "vendor": fields.get("vendor_id"), "family": number("cpu family"),
            "model": number("model"), "vectors": vectors}


def describe_cpu(cpu=None):
    """One line naming the CPU: its model name, plus family/model (and AMD's core
    generation) when the name is generic like "AMD EPYC", plus the widest vectors."""
    cpu = cpu_info() if cpu is None else cpu
    text = cpu["name"]
    if not any(ch.isdigit() for ch in text) and cpu["family"] is not None:
        core = _amd_core(cpu["family"], cpu["model"]) if cpu["vendor"] == "AuthenticAMD" else None
        text += f" (family {cpu['family']} model {cpu['model']}" + (f", {core})" if core else ")")
    if cpu["vectors"]:
        text += f", {cpu['vectors']}"
    return text


def describe_blas():
    """"OpenBLAS 0.3.31, kernel SkylakeX, 2 threads" (what of it is known)."""
    blas = blas_info()
    parts = [f"{blas['name']} {blas['version']}"]
    core = blas_core()
    if core:
        parts.append(f"kernel {core}")
    threads = blas_threads()
    if threads is not None:
        parts.append(f"{threads} threads")
    return ", ".join(parts)


def _vector_width():
    from .kernels import direct

    width = direct.vector_bytes()
    return "(no C kernel)" if width is None else f"{width} bytes"


def _channel_loop():
    from .kernels import channel

    if not backend.c_available():
        return "(no C kernel)"
    return "on (AVX-512: 64-output 7x7 and 3x3 layers)" if channel.available() \
        else "off (needs AVX-512)"


def _pinning_switched_off():
    """NPFCN_PIN_THREADS=0 (csrc/affinity.c reads the same switch for its threads)."""
    return os.environ.get("NPFCN_PIN_THREADS", "")[:1] == "0"


def _thread_pinning():
    if not backend.c_available():
        return "(no C kernel)"
    if backend.lib().npfcn_pins_threads():
        return ("on (one core per kernel thread during parallel loops, OpenBLAS's workers "
                "after set_threads; NPFCN_PIN_THREADS=0: off)")
    return "off (" + ("NPFCN_PIN_THREADS=0" if _pinning_switched_off()
                     else "not one kernel thread per usable core") + ")"


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
        "channel conv loop": _channel_loop(),
        "thread pinning": _thread_pinning(),
        "BLAS": f"{blas['name']} {blas['version']}",
        "BLAS kernel": blas_core(),
        "BLAS threads": blas_threads(),
        "CPU": describe_cpu(),
        "CPU cores": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
    }
