#!/usr/bin/env bash
# Run npfcn's kernel tests against a copy of the C kernel built with
# AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   bash tools/sanitize.sh                      # the kernel tests (see DEFAULT_TESTS)
#   bash tools/sanitize.sh tests/test_layers.py # any test files, given relative to the repo
#   NPFCN_FUZZ_EXAMPLES=500 bash tools/sanitize.sh   # more fuzz examples per test
#
# docs/sanitizers.md describes the build flags and what the fuzz tests cover.
#
# Why a copy: the package in this tree (npfcn/_kernels*.so) is in use by other
# processes and must stay the optimised build.  The copy lives in a temporary
# folder (NPFCN_SANITIZE_DIR to choose it) with its own sanitized extension,
# and PYTHONPATH puts it first, so `import npfcn` loads the copy; the script
# checks that before running anything.
#
# How the run fails on a report: the extension is compiled with
# -fno-sanitize-recover=undefined and ASan stops at the first error
# (halt_on_error), so the Python process aborts and pytest exits non-zero.
# Leak detection is off because the interpreter itself never frees some
# memory by design; PYTHONMALLOC=malloc sends every allocation through the
# sanitizer's malloc so that it sees all of them.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# The tests that drive the C kernel (those that exist are run): between them they call
# every function of every csrc/*.c file (im2col, maxpool, unpool, relu, direct,
# winograd, winograd4, subpixel, channel_conv, batchnorm, softmax; affinity.c is a
# no-op without OpenMP, so its tests skip there).
DEFAULT_TESTS=(tests/test_fuzz_kernels.py tests/test_size_limits.py tests/test_im2col.py
               tests/test_adjoint_and_pooling.py tests/test_gradients.py tests/test_bad_input_core.py
               tests/test_winograd.py tests/test_subpixel.py tests/test_direct.py
               tests/test_fused_relu.py tests/test_pool_kernels.py tests/test_fast_paths.py
               tests/test_channel_conv.py tests/test_batchnorm.py tests/test_softmax_kernel.py
               tests/test_affinity.py)

WORK="${NPFCN_SANITIZE_DIR:-}"
if [ -z "$WORK" ]; then
    WORK="$(mktemp -d /tmp/npfcn-sanitize.XXXXXX)"
    REMOVE_ON_SUCCESS=1      # a folder of our own: removed after a clean run, kept to debug a failure
fi
echo "sanitize: building a sanitized copy of npfcn in $WORK"
mkdir -p "$WORK"
for item in csrc npfcn tests setup.py pyproject.toml README.md; do
    rm -rf "${WORK:?}/$item"
    cp -r "$ROOT/$item" "$WORK/$item"
done
# Never carry the optimised extension (or stale bytecode) into the copy.
find "$WORK/npfcn" \( -name '_kernels*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +

(cd "$WORK" && NPFCN_SANITIZE=1 python setup.py -q build_ext --inplace > build.log 2>&1) || {
    cat "$WORK/build.log"; echo "sanitize: build failed" >&2; exit 1; }

ASAN_RT="$(gcc -print-file-name=libasan.so)"
UBSAN_RT="$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$ASAN_RT $UBSAN_RT"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONMALLOC=malloc
export PYTHONPATH="$WORK"
export NPFCN_BACKEND=c
export NPFCN_FUZZ_LOG="$WORK/fuzz_examples.log"
: > "$NPFCN_FUZZ_LOG"

cd "$WORK"
# Prove that the copy (not the tree's optimised build) is what gets imported,
# and that its extension really carries the sanitizer.
python - "$WORK" <<'PY'
import sys
import npfcn
from npfcn.kernels import backend
work = sys.argv[1]
so = backend._compiled.__file__
assert npfcn.__file__.startswith(work), f"imported {npfcn.__file__}, not the copy in {work}"
assert so.startswith(work), f"loaded the kernel {so}, not the copy's"
assert backend.active() == "c", f"backend is {backend.active()!r}, expected 'c'"
binary = open(so, "rb").read()
assert b"__asan_" in binary and b"__ubsan_handle_" in binary, f"{so} lacks ASan/UBSan"
print(f"sanitize: npfcn from {npfcn.__file__}, backend {backend.active()}, kernel {so}")
PY

if [ "$#" -gt 0 ]; then tests=("$@"); else tests=(); for t in "${DEFAULT_TESTS[@]}"; do [ -e "$t" ] && tests+=("$t"); done; fi
echo "sanitize: running ${tests[*]}"
status=0
python -m pytest -q -p no:cacheprovider "${tests[@]}" || status=$?
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED (exit $status); the sanitized copy is kept in $WORK" >&2
    exit "$status"
fi
if [ -s "$NPFCN_FUZZ_LOG" ]; then
    sort "$NPFCN_FUZZ_LOG" | awk '{n[$1]+=$2; t+=$2} END {for (k in n) printf "sanitize:   %-75s %6d examples\n", k, n[k]; printf "sanitize: %d fuzz examples ran under ASan+UBSan with no report\n", t}' 
fi
if [ "${REMOVE_ON_SUCCESS:-0}" = 1 ]; then
    cd / && rm -rf "$WORK"
fi
