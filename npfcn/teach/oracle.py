"""Where ``explain`` and ``check`` take their numbers from: npfcn's reference path.

``npfcn.reference`` is the textbook (pure NumPy, forward beside backward) with the same
function names and contracts as ``npfcn.functional``.  ``source(name)`` tells a reader
which file to open.
"""
import inspect
import os

from .. import reference


def function(name):
    """The reference function ``name`` (e.g. ``"conv2d_forward"``)."""
    if not hasattr(reference, name):
        raise AttributeError(f"npfcn.reference has no function {name!r}")
    return getattr(reference, name)


def source(name):
    """``'npfcn/reference/conv.py: conv2d_forward'`` - where to read the function."""
    try:
        path = inspect.getsourcefile(function(name)) or ""
    except TypeError:
        path = ""
    parts = os.path.normpath(path).split(os.sep)
    short = "/".join(parts[parts.index("npfcn"):]) if "npfcn" in parts else os.path.basename(path)
    return f"{short}: {name}"
