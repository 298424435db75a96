"""Reusable scratch arrays for the convolution kernels (one set per thread).

A freshly allocated buffer of a hundred megabytes costs milliseconds in page
faults every time it is touched for the first time; layers called every step
would pay that each call.  ``workspace.get`` hands out views of buffers that
are kept from call to call, one set per thread (so two threads never share
scratch).  Nothing obtained here is ever returned to a caller: the next call
overwrites it.
"""
import math
import threading

import numpy as np


class Workspace(threading.local):
    """Named scratch arrays, grown on demand and reused (one set per thread)."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, shape, dtype):
        """A C-contiguous array of ``shape`` and ``dtype`` (contents undefined)."""
        size = int(math.prod(shape))   # (np.prod costs more than many a small kernel call)
        buf = self.buffers.get((name, np.dtype(dtype)))
        if buf is None or buf.size < size:
            buf = self.buffers[(name, np.dtype(dtype))] = np.empty(size, dtype=dtype)
        return buf[:size].reshape(shape)


workspace = Workspace()
