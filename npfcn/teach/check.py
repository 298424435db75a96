"""``npfcn check FILE``: grade a student's own forward and backward functions.

The file is imported, the functions it defines are recognised by name (CS231n's
assignment 2 or npfcn's own, see ``conventions.py``) and each is graded against
npfcn's reference path (``grading.py``).  What is printed: for each function that
fails, its smallest failing case; then a table with one line per function.

From Python (a notebook)::

    import npfcn
    report = npfcn.check("my_layers.py")       # or a module object
    report.passed                              # True when every function passes

Exit codes of the command: 0 every recognised function passes, 1 otherwise (or
nothing recognised), 2 the file cannot be imported.
"""
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field

from . import conventions

DEFAULT_EXAMPLES = 25


class ImportFailure(Exception):
    """The student's file cannot be imported; the message says why in one line."""


@dataclass
class Report:
    """What ``check`` found: one ``grading.Result`` per recognised function."""
    source: str
    results: list = field(default_factory=list)
    examples: int = DEFAULT_EXAMPLES

    @property
    def passed(self):
        return bool(self.results) and all(r.verdict == "pass" for r in self.results)

    @property
    def exit_code(self):
        return 0 if self.passed else 1

    def text(self):
        lines = [f"npfcn check {self.source}: {len(self.results)} functions recognised by "
                 "name", ""] if self.results else []
        for r in self.results:
            if r.verdict != "pass":
                lines.append(f"{r.verdict.upper()}  {r.line}")
                lines.extend(f"    {d}" for d in r.details)
                lines.append("")
        if not self.results:
            known = ", ".join(sorted(conventions.BY_NAME))
            return (f"{self.source}: no function recognised. npfcn check grades functions "
                    f"named: {known}.")
        width = max(len(r.name) for r in self.results) + 2
        lines.append(f"{'function':<{width}}{'convention':<22}{'verdict':<17}cases")
        for r in self.results:
            cases = (f"{r.examples} passed" if r.verdict == "pass" else
                     f"failed at {r.examples}" if r.examples else "-")
            lines.append(f"{r.name:<{width}}{r.convention:<22}{r.verdict:<17}{cases}")
        lines.extend(f"note: {r.line}" for r in self.results if r.verdict == "pass" and r.line)
        good = sum(r.verdict == "pass" for r in self.results)
        lines.append(f"{good} of {len(self.results)} functions pass "
                     f"(up to {self.examples} cases each, float64, against npfcn's reference)")
        return "\n".join(lines)

    def __str__(self):
        return self.text()

    def _repr_pretty_(self, printer, cycle):      # IPython / Jupyter shows the table
        printer.text(self.text())


def load(path):
    """Import the student's file as a fresh module (its folder on sys.path meanwhile)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ImportFailure(f"{path}: no such file")
    name = "npfcn_check_" + "".join(c if c.isalnum() else "_"
                                    for c in os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportFailure(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ImportFailure(f"{path}: syntax error at line {exc.lineno}: {exc.msg}") from None
    except BaseException as exc:          # the file's own code ran and failed (or exited)
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _line_in(exc, path)
        raise ImportFailure(f"{path}: importing it raised {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}{line}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _line_in(exc, path):
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.abspath(f.filename) == path]
    return f" (line {frames[-1].lineno})" if frames else ""


def recognised(module):
    """The entries whose names the module defines, forward passes before backward ones."""
    entries = [conventions.BY_NAME[name] for name in conventions.BY_NAME
               if callable(getattr(module, name, None))]
    order = {"forward": 0, "loss": 0, "backward": 1}
    return sorted(entries, key=lambda e: order[e.role])


def check(path_or_module, examples=None, verbose=True, out=None):
    """Grade every recognised function of a file or module; returns a ``Report``.

    examples: cases per function (default 25).  verbose: print the report to
    ``out`` (default stdout) as well.  Raises ``ImportFailure`` for a file that
    cannot be imported.
    """
    try:
        import hypothesis  # noqa: F401  (it draws the cases; a test-time dependency of npfcn)
    except ImportError:
        raise ImportError("npfcn check needs hypothesis (pip install hypothesis)") from None
    from .grading import Student, grade

    examples = DEFAULT_EXAMPLES if examples is None else int(examples)
    if examples < 1:
        raise ValueError(f"examples must be at least 1, got {examples}")
    if isinstance(path_or_module, types.ModuleType):
        module, source = path_or_module, getattr(path_or_module, "__name__", "module")
    else:
        module, source = load(path_or_module), os.fspath(path_or_module)
    student = Student(module)
    report = Report(source, examples=examples)
    by_name = {}
    for entry in recognised(module):
        result = grade(student, entry, examples, by_name.get(entry.forward))
        by_name[entry.name] = result
    report.results = [by_name[e.name] for e in sorted(recognised(module),
                                                      key=lambda e: _table_order(e.name))]
    if verbose:
        print(report.text(), file=out or sys.stdout)
    return report


def _table_order(name):
    names = list(conventions.BY_NAME)
    return names.index(name)


def run_cli(args):
    """The ``npfcn check`` handler: prints the report, returns the exit code."""
    try:
        report = check(args.file, examples=args.examples, verbose=True)
    except ImportFailure as exc:
        print(f"npfcn check: cannot import {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:               # hypothesis is not installed
        print(f"npfcn check: {exc}", file=sys.stderr)
        return 2
    return report.exit_code
