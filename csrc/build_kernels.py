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
                   Sanitizer (see README, "Sanitizers").  Implies no OpenMP, so
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

# cffi's cdef cannot expand the header's macros, so the declarations are
# spelled out here once per dtype (they must match npfcn_kernels.h).
_SIGNATURES = """
void im2col_{s}(const {t} *x, {t} *cols, int64_t N, int64_t C, int64_t H, int64_t W,
                int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                int64_t DH, int64_t DW, int64_t OH, int64_t OW);
void col2im_{s}(const {t} *cols, {t} *x, int64_t N, int64_t C, int64_t H, int64_t W,
                int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                int64_t DH, int64_t DW, int64_t OH, int64_t OW);
void im2col_strided_{s}(const {t} *x, {t} *cols, int64_t N, int64_t C, int64_t H,
                int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW,
                int64_t image_stride, int64_t row_stride);
void col2im_strided_{s}(const {t} *cols, {t} *x, int64_t N, int64_t C, int64_t H,
                int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW,
                int64_t image_stride, int64_t row_stride);
void maxpool_forward_{s}(const {t} *x, {t} *y, int64_t *indices, int64_t NC, int64_t H,
                int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH,
                int64_t PW, int64_t DH, int64_t DW, int64_t OH, int64_t OW);
void maxpool_backward_{s}(const {t} *dy, const int64_t *indices, {t} *dx, int64_t NC,
                int64_t HW, int64_t OHW);
"""
_WINOGRAD_SIGNATURES = """
void {p}_input_{s}(const {t} *x, {t} *V, int64_t N, int64_t C, int64_t H, int64_t W,
                int64_t PH, int64_t PW, int64_t t0, int64_t t1, int64_t TW, {t} *scratch);
void {p}_input_adj_{s}(const {t} *dV, {t} *dx, int64_t N, int64_t C, int64_t H,
                int64_t W, int64_t PH, int64_t PW, int64_t t0, int64_t t1, int64_t TW,
                {t} *scratch);
void {p}_output_{s}(const {t} *M, {t} *y, int64_t N, int64_t O, int64_t OH, int64_t OW,
                int64_t t0, int64_t t1, int64_t TW, {t} *scratch);
void {p}_output_adj_{s}(const {t} *dy, {t} *dM, int64_t N, int64_t O, int64_t OH,
                int64_t OW, int64_t t0, int64_t t1, int64_t TW, {t} *scratch);
void {p}_weight_{s}(const {t} *w, {t} *U, int64_t O, int64_t C);
void {p}_weight_adj_{s}(const {t} *dU, {t} *dw, int64_t O, int64_t C);
"""
# Max unpooling (unpool.c).
_UNPOOL_SIGNATURES = """
void max_unpool_forward_{s}(const {t} *x, const int64_t *indices, {t} *y, int64_t NC,
                int64_t HW, int64_t OHW);
void max_unpool_backward_{s}(const {t} *dy, const int64_t *indices, {t} *dx, int64_t NC,
                int64_t HW, int64_t OHW);
"""
_SUBPIXEL_SIGNATURES = """
void phases_to_image_{s}(const {t} *phases, {t} *image, int64_t N, int64_t O, int64_t SH,
                int64_t SW, int64_t GH, int64_t GW, int64_t OH, int64_t OW, int64_t PH,
                int64_t PW);
void image_to_phases_{s}(const {t} *image, {t} *phases, int64_t N, int64_t O, int64_t SH,
                int64_t SW, int64_t GH, int64_t GW, int64_t OH, int64_t OW, int64_t PH,
                int64_t PW);
"""
_DIRECT_SIGNATURES = """
void direct_conv_forward_{s}(const {t} *x, const {t} *x_mask, const {t} *wb,
                const {t} *bias, {t} *y, int64_t relu, int64_t N, int64_t C,
                int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW, int64_t PH,
                int64_t PW, int64_t OH, int64_t OW, int64_t oy0, int64_t oy1, int64_t ox0,
                int64_t ox1, {t} *scratch);
void direct_conv_weight_grad_{s}(const {t} *x, const {t} *dy, const {t} *dy_mask, {t} *dw,
                {t} *db, int64_t N,
                int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
                int64_t PH, int64_t PW, int64_t OH, int64_t OW, int64_t oy0, int64_t oy1,
                int64_t ox0, int64_t ox1, {t} *scratch);
int64_t direct_conv_scratch_{s}(int64_t weight_grad, int64_t C, int64_t O, int64_t KH,
                int64_t KW, int64_t RX);
"""
_RELU_SIGNATURES = """
void relu_forward_{s}(const {t} *x, {t} *y, int64_t n);
void relu_backward_{s}(const {t} *y, const {t} *dy, {t} *dx, int64_t n);
"""
CDEF = (
    _SIGNATURES.format(s="f32", t="float")
    + _SIGNATURES.format(s="f64", t="double")
    + "".join(_WINOGRAD_SIGNATURES.format(p=p, s=s, t=t) for p in ("winograd", "winograd4")
              for s, t in (("f32", "float"), ("f64", "double")))
    + "int64_t winograd_scratch(int64_t TW);\nint64_t winograd4_scratch(int64_t TW);\n"
    + _SUBPIXEL_SIGNATURES.format(s="f32", t="float")
    + _SUBPIXEL_SIGNATURES.format(s="f64", t="double")
    + _UNPOOL_SIGNATURES.format(s="f32", t="float")
    + _UNPOOL_SIGNATURES.format(s="f64", t="double")
    + _DIRECT_SIGNATURES.format(s="f32", t="float")
    + _DIRECT_SIGNATURES.format(s="f64", t="double")
    + _RELU_SIGNATURES.format(s="f32", t="float")
    + _RELU_SIGNATURES.format(s="f64", t="double")
    + "int64_t direct_conv_vector_bytes(int64_t request);\n"
    + "int npfcn_num_threads(void);\n"
    + "void npfcn_set_num_threads(int64_t n);\n"
)

SOURCES = ["im2col.c", "maxpool.c", "winograd.c", "winograd4.c", "unpool.c", "subpixel.c", "direct.c", "relu.c"]


def _flag(name, default):
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _compiler_accepts(flags):
    """True when the C compiler builds and links a tiny program with ``flags``."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
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
ffibuilder.cdef(CDEF)
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
