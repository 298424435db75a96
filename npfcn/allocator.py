"""Keep the memory NumPy frees inside the process, for the next array of its size (glibc).

glibc's malloc hands out every block above its mmap threshold (a few MB at most) as
fresh pages from the kernel and returns them when the block is freed; it also gives
back the top of its heap once more than the trim threshold lies free there.  A
training step allocates and frees the same large arrays every step - each layer's
output, its gradient, the loss's probabilities - so each step pays a page fault and a
zeroed 4 KiB page for every 4 KiB of them again.  Measured on Zen 4 (docs/kernels.md):
the cross-entropy of 21 classes at 224x224 took 6.8 ms, 2.1-2.4 ms with freed memory
kept; a SegNet-Basic training step (batch 4, 180x240) 2.07-2.10 s, 1.81 s (PyTorch's
the same way: 2.06-2.11 s, 1.79-1.86 s with the same setting in its process).

The price: the process's resident memory stays at its peak instead of shrinking
between steps.  So ``npfcn train`` turns this on for its own process (and its MPI
ranks); importing npfcn never does, and the benchmarks leave both libraries on the
allocator's defaults.
"""
import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # glibc's mallopt parameters
KEEP_BYTES = 1 << 30    # blocks up to 1 GiB come from the heap; up to 1 GiB stays free in it


def keep_freed_memory():
    """Ask glibc to serve blocks up to KEEP_BYTES from its heap and to keep freed memory.
    Returns True when it took effect, False elsewhere (another C library, or no glibc)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) \
        and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
