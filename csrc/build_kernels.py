"""cffi build script (API mode) for npfcn's C kernels.

setup.py names this file in ``cffi_modules``, so ``pip install .`` and
``pip install -e .`` compile ``csrc/*.c`` into the extension ``npfcn._kernels``.

Build switches (environment variables read here, at build time):

``NPFCN_OPENMP``   ``1`` (default) uses OpenMP when the compiler supports it,
                   ``0`` builds single-threaded kernels.  If the compiler has no
                   OpenMP the build falls back to single-threaded silently.
``NPFCN_NATIVE``   ``1`` adds ``-march=native`` (off by default: wheels must run
                   on other CPUs).
``NPFCN_SANITIZE`` ``1`` builds with AddressSanitizer and UndefinedBehavior-
                   Sanitizer (see docs/sanitizers.md).  Implies no OpenMP, so
                   that reports are not confused by the thread runtime.

No ``-ffast-math``: it would change floating-point semantics for the whole
Python process (it flushes denormals at load time).
"""
import os
import shutil
import subprocess
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

HEADER = os.path.join(HERE, "npfcn_kernels.h")


def _compiler():
    """The C compiler command Python was built with (e.g. ``gcc -pthread``), or ``cc``."""
    return (sysconfig.get_config_var("CC") or "cc").split()


def cdef_from_header(path=HEADER):
    """The cffi declarations: the header run through the C preprocessor.

    npfcn_kernels.h is the one place the C prototypes are written.  It declares
    each family once for float and once for double through a macro, which cffi's
    ``cdef`` cannot expand, so the compiler's preprocessor expands it (``-E -P``:
    no line markers, comments gone).  The ``#include`` lines are left out first:
    cffi knows ``int64_t`` itself, and the system headers' contents would not parse.
    """
    with open(path, encoding="utf-8") as f:
        text = "".join(line for line in f if not line.lstrip().startswith("#include"))
    result = subprocess.run([*_compiler(), "-E", "-P", "-x", "c", "-"], input=text,
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"the C preprocessor failed on {path}:\n{result.stderr}")
    return result.stdout


SOURCES = ["im2col.c", "maxpool.c", "winograd.c", "winograd4.c", "unpool.c", "subpixel.c", "direct.c", "channel_conv.c", "batchnorm.c", "relu.c", "softmax.c", "affinity.c"]


def _flag(name, default):
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _compiler_accepts(flags):
    """True when the C compiler builds and links a tiny program with ``flags``."""
    cc = _compiler()[0]
    if shutil.which(cc) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            result = subprocess.run([cc, *flags, src, "-o", os.path.join(tmp, "probe")],
                                    capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def _build_flags():
    compile_args = ["-std=c99", "-O3"]
    link_args = []
    if _flag("NPFCN_SANITIZE", "0"):
        # -fno-sanitize-recover: the first UB report aborts the process (ASan
        # always does), so a test run under the sanitizers cannot pass with a
        # report in its log.  -fno-wrapv undoes Python's -fwrapv (in its
        # CFLAGS), which would make signed overflow defined and hide it from UBSan.
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
               "-fno-omit-frame-pointer", "-g"]
        return ["-std=c99", "-O1", "-fno-wrapv", *san], san
    if _flag("NPFCN_NATIVE", "0"):
        compile_args.append("-march=native")
    if _flag("NPFCN_OPENMP", "1") and _compiler_accepts(["-fopenmp"]):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return compile_args, link_args


ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header())
_compile_args, _link_args = _build_flags()
ffibuilder.set_source(
    "npfcn._kernels",
    '#include "npfcn_kernels.h"',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_compile_args,
    extra_link_args=_link_args,
)

if __name__ == "__main__":
    # Build in place for development: python csrc/build_kernels.py
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build"), verbose=True)
