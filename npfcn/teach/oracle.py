"""Where ``explain`` and ``check`` take their numbers from: npfcn's reference path.

``npfcn.reference`` is the textbook (pure NumPy, forward beside backward); the
public ``npfcn.functional`` has the same function names and contracts, so it is
the fallback where a reference function is not there.  ``source(name)`` tells a
reader which file to open.
"""
import importlib
import inspect
import os


def _reference_package():
    try:
        return importlib.import_module("npfcn.reference")
    except ImportError:
        return None


def function(name):
    """The reference function ``name`` (e.g. ``"conv2d_forward"``), else npfcn.functional's."""
    reference = _reference_package()
    if reference is not None and hasattr(reference, name):
        return getattr(reference, name)
    functional = importlib.import_module("npfcn.functional")
    if hasattr(functional, name):
        return getattr(functional, name)
    raise AttributeError(f"npfcn has no reference function {name!r}")


def source(name):
    """``'npfcn/reference/conv.py: conv2d_forward'`` - where to read the function."""
    fn = function(name)
    try:
        path = inspect.getsourcefile(fn) or ""
    except TypeError:
        path = ""
    parts = os.path.normpath(path).split(os.sep)
    short = "/".join(parts[parts.index("npfcn"):]) if "npfcn" in parts else os.path.basename(path)
    return f"{short}: {name}"
