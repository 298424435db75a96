"""Teaching and grading: ``npfcn explain TOPIC`` and ``npfcn check FILE``.

* ``explain.py`` and ``topics/``: each idea of the course computed on small numbers by
  npfcn's reference path (``npfcn/reference/``), printed and drawn as PNG.
* ``check.py``, ``grading.py``, ``conventions.py``, ``ops.py``: grade a student's own
  forward/backward functions against the reference, with hypothesis drawing the cases.
"""


def check(path_or_module, examples=None, verbose=True, out=None):
    """Grade a student's file or module; see ``npfcn.teach.check.check``."""
    from .check import check as _check

    return _check(path_or_module, examples=examples, verbose=verbose, out=out)
