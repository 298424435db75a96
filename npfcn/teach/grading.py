"""Grading one student function: hypothesis draws cases, each is compared with npfcn.

A forward pass is compared output by output with npfcn's reference.  A backward
pass gets its cache from the student's own forward pass and is compared with
npfcn's gradients; at a few entries per gradient (and at the first differing one)
npfcn's gradient is itself checked against a float64 central difference of npfcn's
forward pass, so a student is never failed by a bug of npfcn's.  The first problem
found ends the case with a ``Problem``; hypothesis then shrinks the case to the
smallest one that still fails, and that one is reported.
"""
import contextlib
import io
import os
import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import conventions
from .ops import OPS, Case

# float64 against float64: a correct answer differs from npfcn's by rounding only - sums
# of at most a few hundred O(1) terms, ~1e-14 relative - while the bugs students make
# change entries by O(0.1).  1e-6 sits between the two with orders of magnitude to spare.
RTOL, ATOL = 1e-6, 1e-8
# Central differences of npfcn's own forward pass: exact up to rounding (~1e-16 / EPS =
# 1e-10) for the piecewise-linear layers, whose inputs stay >= 0.05 from any kink or tie
# (see ops), and O(EPS^2) for the softmax; they must agree with npfcn's gradient to 1e-5.
EPS = 1e-6
ORACLE_TOL = 1e-5
NUMERIC_ENTRIES = 2         # entries per gradient checked by central differences per case

PASS, FAIL, ERROR, TODO, SHAPE, SKIPPED = ("pass", "FAIL", "raises", "not implemented",
                                           "wrong shape", "not checked")


class OracleDisagrees(Exception):
    """npfcn's gradient and its central difference differ: npfcn's bug, not the student's."""


class Problem(Exception):
    """What went wrong on one case: a verdict, one line, and the details of a mismatch."""

    def __init__(self, verdict, line, details=()):
        super().__init__(line)
        self.verdict, self.line, self.details = verdict, line, list(details)


@dataclass
class Result:
    """The verdict on one function; ``examples``: the cases it passed, or the number of
    the case on which it first failed."""
    name: str
    convention: str
    verdict: str
    examples: int = 0
    line: str = ""
    details: list = field(default_factory=list)


class Student:
    """Calls into the student's module: stdout kept quiet, exceptions turned into Problems
    that name the function and the line of the student's file that raised."""

    def __init__(self, module):
        self.module = module
        self.path = os.path.abspath(getattr(module, "__file__", "") or "")

    def function(self, name):
        fn = getattr(self.module, name, None)
        return fn if callable(fn) else None

    def call(self, name, fn, args, kwargs, text):
        try:
            # Quiet: a student's debugging prints and NumPy's warnings would bury the report.
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(*_copies(args), **kwargs)
        except NotImplementedError:
            raise Problem(TODO, f"{name} raises NotImplementedError") from None
        except (Exception, SystemExit) as exc:     # the student's bug, reported in one line
            raise Problem(ERROR, f"{name} raised {type(exc).__name__}: "
                                 f"{_one_line(exc)}{self._where(exc)}",
                          [f"call: {text}"]) from None

    def _where(self, exc):
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if os.path.abspath(f.filename) == self.path]
        if not frames:
            return ""
        frame = frames[-1]
        return f" at line {frame.lineno}: {frame.line.strip()}" if frame.line else \
            f" at line {frame.lineno}"


def _copies(args):
    """Fresh copies of every array argument: a student may change them in place."""
    return tuple(a.copy() if isinstance(a, np.ndarray) else
                 (dict(a) if isinstance(a, dict) else a) for a in args)


def _one_line(exc):
    return " ".join(str(exc).split())[:200] or "(no message)"


def unpack(entry, result, text):
    """The student's return value as {name: value} after ``entry.returns``; None, a wrong
    count or a None entry (the skeleton as handed out) is a Problem."""
    names = entry.returns
    if result is None:
        raise Problem(TODO, f"{entry.name} returns None (not implemented yet?)")
    if len(names) > 1 and entry.name == "max_pool2d_forward" and isinstance(result, tuple) \
            and len(result) == 2:
        names = ("out", "cache")        # (y, cache) without the indices is accepted too
    if len(names) > 1:
        if not isinstance(result, (tuple, list)) or len(result) != len(names):
            got = f"a tuple of {len(result)}" if isinstance(result, (tuple, list)) \
                else type(result).__name__
            raise Problem(SHAPE, f"{entry.name} must return ({', '.join(names)}), got {got}",
                          [f"call: {text}"])
        values = dict(zip(names, result))
    else:
        values = {names[0]: result}
    for name, value in values.items():
        if value is None and name not in ("cache", "b"):
            raise Problem(TODO, f"{entry.name} returns None for {name} (not implemented yet?)")
    return values


def compare(entry, what, expected, got, case, text, numeric=None):
    """Raise a Problem unless ``got`` equals ``expected`` within RTOL/ATOL."""
    op = OPS[entry.op]
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise Problem(SHAPE, f"{entry.name}: {what} is not an array of numbers "
                             f"({type(got).__name__})", [f"call: {text}"]) from None
    expected_in, expected = expected, np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape and not (expected.ndim == 0 and got.size == 1):
        raise Problem(SHAPE, f"{entry.name} returns {what} of shape {got.shape}, expected "
                             f"{expected.shape} ({op.describe(case.params)})",
                      [f"call: {text}"])
    got = got.reshape(expected.shape)
    integer = np.issubdtype(np.asarray(expected_in).dtype, np.integer)
    error = np.abs(got - expected) / (ATOL + RTOL * np.abs(expected))
    error = np.where(np.isnan(error), np.inf, error)
    if not np.any(error > 1):
        return
    index = np.unravel_index(int(np.argmax(error)), error.shape) if error.ndim else ()
    where = f" at index {tuple(int(i) for i in index)}" if index else ""
    details = [f"case: {op.describe(case.params)}", f"call: {text}"]
    details += _show_inputs(case)
    verb = "differ" if what.endswith("s") else "differs"
    details.append(f"{what} {verb}{where}: expected {_num(expected[index])}, "
                   f"got {_num(got[index])}")
    if numeric is not None:
        value = numeric(index)
        if abs(value - expected[index]) > ORACLE_TOL * (1 + abs(value)):
            raise OracleDisagrees(f"npfcn's own {what} disagrees with its central difference "
                                  f"at {index} ({expected[index]} vs {value}): please report "
                                  "this npfcn bug")
        details.append(f"  float64 central difference of npfcn's forward pass there: "
                       f"{_num(value)}")
    bad = int(np.count_nonzero(error > 1))
    if error.size > 1:
        details.append(f"  {bad} of {error.size} entries of {what} differ")
    if expected.size <= 36:
        shown = (lambda a: a.astype(np.int64)) if integer else (lambda a: a)
        details.append(f"  expected {what}: {_array(shown(expected))}")
        details.append(f"  {'got ' + what + ':':<{len(what) + 10}} {_array(shown(got))}")
    raise Problem(FAIL, f"{entry.name}: {what} {verb}{where}", details)


def _num(value):
    return f"{float(value):.6g}"


def _array(a):
    return " ".join(np.array2string(np.asarray(a), precision=4, suppress_small=True,
                                    max_line_width=200).split())


def _show_inputs(case):
    """The inputs when they are small enough to read."""
    if sum(np.size(a) for a in case.inputs.values()) > 60:
        return []
    return [f"  {name} = {_array(a)}" for name, a in case.inputs.items()]


def central_difference(op, case, name, dout):
    """index -> float64 central difference of npfcn's forward pass w.r.t. input ``name``."""
    def at(index):
        plus = {k: v.copy() for k, v in case.inputs.items()}
        minus = {k: v.copy() for k, v in case.inputs.items()}
        plus[name][index] += EPS
        minus[name][index] -= EPS
        return (op.objective(case, plus, dout) - op.objective(case, minus, dout)) / (2 * EPS)
    return at


def check_oracle(op, case, name, gradient, dout, rng):
    """npfcn's gradient against its own central differences at a few entries; a
    disagreement is npfcn's bug, not the student's."""
    numeric = central_difference(op, case, name, dout)
    for flat in rng.choice(gradient.size, size=min(NUMERIC_ENTRIES, gradient.size), replace=False):
        index = np.unravel_index(int(flat), gradient.shape)
        value = numeric(index)
        if abs(value - gradient[index]) > ORACLE_TOL * (1 + abs(value)):
            raise OracleDisagrees(f"npfcn's own gradient d{name} disagrees with its central "
                                  f"difference at {index} ({gradient[index]} vs {value}): "
                                  "please report this npfcn bug")


def forward_case(student, entry, fn, keywords, case):
    op = OPS[entry.op]
    args, kwargs, text = conventions.forward_call(entry, fn, case, keywords)
    values = unpack(entry, student.call(entry.name, fn, args, kwargs, text), text)
    expected, cache = op.forward(case)
    if entry.role == "loss":             # (loss, dx): the gradient comes with the loss
        compare(entry, "loss", expected["loss"], values["loss"], case, text)
        gradient = op.backward(case, cache, 1.0)["x"]
        rng = np.random.default_rng(case.seed)
        check_oracle(op, case, "x", gradient, 1.0, rng)
        compare(entry, "dx", gradient, values["x"], case, text,
                central_difference(op, case, "x", 1.0))
        return
    for name, value in expected.items():
        if name in values:               # CS231n's max pooling returns no indices
            compare(entry, name, value, values[name], case, text)


def backward_case(student, entry, fn, forward_entry, forward_fn, keywords, case):
    op = OPS[entry.op]
    args, kwargs, text = conventions.forward_call(forward_entry, forward_fn, case, keywords)
    try:
        cache = unpack(forward_entry, student.call(forward_entry.name, forward_fn, args,
                                                   kwargs, text), text)["cache"]
    except Problem as problem:
        raise Problem(SKIPPED, f"{entry.name} needs the cache of {forward_entry.name}, which "
                               f"fails here: {problem.line}", problem.details) from None
    expected_out, reference_cache = op.forward(case)
    rng = np.random.default_rng(case.seed + 1)
    # The upstream gradient: random for a layer, 1 for a loss (the start of backpropagation).
    dout = 1.0 if "loss" in expected_out else np.round(
        rng.standard_normal(expected_out["out"].shape), 1)
    expected = op.backward(case, reference_cache, dout)
    back_text = f"{entry.name}(dout, cache)  with cache from {text}"
    result = student.call(entry.name, fn, (dout, cache), {}, back_text)
    names = tuple(n for n in entry.returns if n in expected or n == "b")
    got = unpack(conventions.Entry(entry.name, entry.convention, entry.op, entry.role, names),
                 result, back_text)
    shown = Case(case.params, dict(case.inputs, dout=dout), case.seed) \
        if isinstance(dout, np.ndarray) else case
    for name in names:
        if expected.get(name) is None:
            continue
        check_oracle(op, case, name, expected[name], dout, rng)
        compare(entry, f"d{name}", expected[name], got[name], shown, back_text,
                central_difference(op, case, name, dout))


def grade(student, entry, examples, forward_result=None):
    """One Result for the student's function ``entry.name``, after up to ``examples`` cases."""
    from hypothesis import HealthCheck, Verbosity, given, settings
    from hypothesis.errors import Flaky, HypothesisException

    fn = student.function(entry.name)
    forward_entry = conventions.BY_NAME.get(entry.forward) if entry.forward else None
    forward_fn = student.function(entry.forward) if entry.forward else None
    if entry.role == "backward":
        if forward_fn is None:
            return Result(entry.name, entry.convention, SKIPPED,
                          line=f"{entry.name} needs {entry.forward} from the same file for "
                               "its cache")
        if forward_result is not None and forward_result.verdict in (ERROR, TODO):
            return Result(entry.name, entry.convention, SKIPPED,
                          line=f"{entry.name} needs a working {entry.forward} for its cache")
    signature_of = forward_entry or entry
    keywords = conventions.features(signature_of, forward_fn or fn)
    strategy = OPS[entry.op].strategy(keywords)
    count, first_failure = [0], [None]

    def body(case):
        if entry.role == "backward":
            backward_case(student, entry, fn, forward_entry, forward_fn, keywords, case)
        else:
            forward_case(student, entry, fn, keywords, case)

    try:                 # the skeleton as handed out: say so after one (the smallest) case
        body(_smallest(strategy))
    except Problem as problem:
        if problem.verdict == TODO:
            return Result(entry.name, entry.convention, TODO, 1, problem.line, problem.details)
    except Exception:    # anything else is graded below, where hypothesis shrinks it
        pass

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              verbosity=Verbosity.quiet, report_multiple_bugs=False, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case):
        count[0] += 1
        try:
            body(case)
        except Problem:
            first_failure[0] = first_failure[0] or count[0]
            raise

    try:
        run()
    except Problem as problem:
        return Result(entry.name, entry.convention, problem.verdict, first_failure[0],
                      problem.line, problem.details)
    except Flaky:
        return Result(entry.name, entry.convention, FAIL, count[0],
                      f"{entry.name} gives different results for the same input "
                      "(does it keep state between calls?)")
    except OracleDisagrees as exc:
        return Result(entry.name, entry.convention, SKIPPED, count[0],
                      f"{entry.name} not checked: {_one_line(exc)}")
    except HypothesisException as exc:
        return Result(entry.name, entry.convention, SKIPPED, count[0],
                      f"{entry.name} not checked: no cases could be drawn ({_one_line(exc)})")
    missing = [k for k in signature_of.keywords if k not in keywords]
    note = (f"{entry.name}: checked at the default {', '.join(missing)} only (the signature "
            f"of {signature_of.name} does not take {'it' if len(missing) == 1 else 'them'})"
            if missing else "")
    return Result(entry.name, entry.convention, PASS, min(count[0], examples), note)


def _smallest(strategy):
    """The first case hypothesis draws: the simplest one (every choice at its minimum)."""
    from hypothesis import HealthCheck, Phase, given, settings

    seen = []

    @settings(max_examples=1, phases=[Phase.generate], database=None, derandomize=True,
              deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def first(case):
        seen.append(case)

    first()
    return seen[0]


__all__ = ["Case", "Problem", "Result", "Student", "grade"]
