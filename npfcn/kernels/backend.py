"""Which kernel implementation is active: the compiled C kernel or pure NumPy.

The C extension ``npfcn._kernels`` is built by ``pip install`` from ``csrc/``
(``csrc/build_kernels.py``; its declarations are ``csrc/npfcn_kernels.h``).
``NPFCN_BACKEND`` selects the implementation when npfcn is imported:

* unset or ``auto`` - C when the extension loads, NumPy otherwise;
* ``c``             - C, and an ImportError if it is not built;
* ``numpy``         - exactly the functions of ``npfcn.reference`` (the textbook path).

``use(name)`` switches at run time (tests use it to compare both paths).
"""
import os

# The OpenMP runtime reads OMP_WAIT_POLICY once, when the kernel loads it.  npfcn's
# kernels are short bursts between BLAS calls; by default an idle OpenMP thread
# then spins and takes the core the next matrix product needs.  "passive" (sleep
# at once) is set only while the extension loads, so a user's own setting wins
# and other libraries loaded later (PyTorch's own OpenMP) keep their defaults.
_user_wait_policy = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
try:  # the compiled extension; absent in a source tree that was never built
    from .. import _kernels as _compiled
except ImportError as exc:  # pragma: no cover - depends on the build
    _compiled = None
    _import_error = exc
else:
    _import_error = None
finally:
    if _user_wait_policy is None:
        del os.environ["OMP_WAIT_POLICY"]

_NAMES = ("c", "numpy")
_active = None


def c_available():
    """True when the compiled C kernel could be imported."""
    return _compiled is not None


def use(name):
    """Select the backend: ``"c"``, ``"numpy"`` or ``"auto"``; returns the active name."""
    global _active
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "c" if c_available() else "numpy"
    if name not in _NAMES:
        raise ValueError(f"unknown backend {name!r}: expected one of 'c', 'numpy', 'auto'")
    if name == "c" and not c_available():
        raise ImportError(
            "NPFCN_BACKEND=c but the C kernel npfcn._kernels is not built "
            f"({_import_error}); reinstall with `pip install -e .`"
        )
    _active = name
    return name


def active():
    """Name of the backend in use: ``"c"`` or ``"numpy"``."""
    return _active


def lib():
    """The compiled functions (cffi ``lib``; only when the C kernel is built).

    Hand them arrays only through ``npfcn.kernels.boundary`` (it checks them and
    makes the pointers).
    """
    return _compiled.lib


def ffi():
    """The cffi ``FFI`` object of the compiled kernel (pointers, NULL)."""
    return _compiled.ffi


def num_threads():
    """Threads the C kernel uses (1 without OpenMP or on the NumPy path)."""
    if _active == "c":
        return int(_compiled.lib.npfcn_num_threads())
    return 1


class using:
    """Context manager that switches backend temporarily: ``with using("numpy"): ...``."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = _active
        return use(self.name)

    def __exit__(self, *exc):
        use(self.previous)
        return False


use(os.environ.get("NPFCN_BACKEND", "auto"))
