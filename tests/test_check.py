"""``npfcn check``: correct solutions in several styles pass, planted bugs are caught and the
function named, unfinished/raising/wrong-shape functions get one line, exit codes 0/1/2.

The fixtures are student files in tests/check_solutions/: three correct solutions
(CS231n-style loops, vectorised with strided windows, npfcn's names by im2col), one
correct solution that would fail on ties or at the ReLU kink if the grader drew them,
and files that each import a correct solution and replace one function with a bug.
The grader runs derandomised (the same cases every run), at its default 25 cases.
"""
import functools
import io
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

import npfcn  # noqa: E402
from npfcn.cli import main  # noqa: E402
from npfcn.teach.check import ImportFailure, check  # noqa: E402

SOLUTIONS = Path(__file__).resolve().parent / "check_solutions"
CS231N = ["conv_forward_naive", "conv_backward_naive", "max_pool_forward_naive",
          "max_pool_backward_naive", "relu_forward", "relu_backward", "softmax_loss"]
NPFCN = ["conv2d_forward", "conv2d_backward", "conv_transpose2d_forward",
         "conv_transpose2d_backward", "max_pool2d_forward", "max_pool2d_backward",
         "max_unpool2d_forward", "max_unpool2d_backward", "relu_forward", "relu_backward",
         "softmax_cross_entropy_forward", "softmax_cross_entropy_backward"]


@functools.lru_cache(maxsize=None)
def grade(name, examples=None):
    """The report on one fixture (kept: several tests read the same one)."""
    return check(SOLUTIONS / f"{name}.py", examples=examples, verbose=False)


def verdicts(report):
    return {r.name: r.verdict for r in report.results}


@pytest.mark.parametrize("name, functions", [
    ("cs231n_loops", CS231N),
    ("cs231n_vectorised", CS231N),
    ("cs231n_ties_and_kinks", CS231N),
    ("npfcn_im2col", NPFCN),
])
def test_correct_solutions_pass(name, functions):
    report = grade(name)
    assert sorted(verdicts(report)) == sorted(functions)
    assert set(verdicts(report).values()) == {"pass"}, report.text()
    assert report.passed and report.exit_code == 0


def test_parameters_a_signature_lacks_are_named():
    """npfcn_im2col's max_pool2d_forward takes no dilation/ceil_mode: the report says so."""
    text = grade("npfcn_im2col").text()
    assert "note: max_pool2d_forward: checked at the default dilation, ceil_mode only" in text
    assert "note: conv2d_forward" not in text


# (fixture, the function with the bug, what the one line must say)
BUGS = [
    ("bug_conv_stride", "conv_forward_naive", "out differs"),
    ("bug_conv_padding", "conv_backward_naive", "dx differs"),
    ("bug_conv_db_batch", "conv_backward_naive", "db differs"),
    ("bug_conv_dw_axes", "conv_backward_naive", "dw differs"),
    ("bug_softmax_normalisation", "softmax_loss", "dx differs"),
    ("bug_pool_window", "max_pool_backward_naive", "dx differs"),
    ("bug_relu_mask", "relu_backward", "dx differs"),
    ("bug_npfcn_transpose_padding", "conv_transpose2d_forward", "out differs"),
    ("bug_npfcn_pool_indices", "max_pool2d_forward", "indices differ"),
]


@pytest.mark.parametrize("name, function, says", BUGS)
def test_planted_bugs_are_caught_and_named(name, function, says):
    report = grade(name)
    result = next(r for r in report.results if r.name == function)
    assert result.verdict == "FAIL"
    assert result.line.startswith(f"{function}: {says}")
    # The smallest case is printed: parameters, the call, expected against got, the index.
    details = "\n".join(result.details)
    assert "case:" in details and "call:" in details and "expected" in details
    assert " at index " in result.line
    assert report.exit_code == 1
    assert function in report.text()


def test_only_the_buggy_function_fails():
    outcome = verdicts(grade("bug_conv_db_batch"))
    assert outcome.pop("conv_backward_naive") == "FAIL"
    assert set(outcome.values()) == {"pass"}


def test_a_failure_is_shrunk_to_a_small_case():
    """Ignoring the stride shows with stride 2 and two outputs: hypothesis gets there."""
    result = grade("bug_conv_stride").results[0]
    details = "\n".join(result.details)
    assert "stride 2" in details and "N 1, C 1, F 1" in details
    assert "x = " in details            # small inputs are printed in full


def test_gradients_are_also_checked_by_central_differences():
    result = next(r for r in grade("bug_conv_padding").results if r.verdict == "FAIL")
    assert any("central difference" in d for d in result.details)


def test_a_bug_in_npfcn_does_not_fail_the_student(monkeypatch):
    """If npfcn's gradient disagreed with its own central differences, the student's
    function is reported as not checked, never as failing."""
    from npfcn.teach.ops import OPS

    relu = OPS["relu"]
    right = relu.backward
    monkeypatch.setattr(relu, "backward", lambda case, cache, dout: {
        "x": 2 * right(case, cache, dout)["x"]})
    report = check(SOLUTIONS / "cs231n_loops.py", examples=3, verbose=False)
    result = next(r for r in report.results if r.name == "relu_backward")
    assert result.verdict == "not checked" and "npfcn bug" in result.line


def test_skeleton_gets_one_line_per_function():
    report = grade("skeleton")
    outcome = verdicts(report)
    assert outcome == {"conv_forward_naive": "not implemented",
                       "conv_backward_naive": "not checked",
                       "max_pool_forward_naive": "not implemented",
                       "relu_forward": "not implemented",
                       "softmax_loss": "not implemented"}
    for r in report.results:
        assert r.line.startswith(r.name)
    assert report.exit_code == 1


def test_raising_function_is_named_with_the_students_line():
    report = grade("bug_raises")
    result = next(r for r in report.results if r.name == "max_pool_forward_naive")
    assert result.verdict == "raises"
    assert result.line.startswith("max_pool_forward_naive raised IndexError")
    assert "at line 17" in result.line
    assert verdicts(report)["max_pool_backward_naive"] == "not checked"


def test_wrong_shape_is_one_line():
    result = grade("bug_shape").results[0]
    assert result.verdict == "wrong shape"
    assert result.line.startswith("conv_forward_naive returns out of shape")


def test_examples_flag_sets_the_number_of_cases():
    report = grade("cs231n_loops", examples=3)
    assert {r.examples for r in report.results} == {3}
    assert "3 passed" in report.text()


def test_python_api_takes_a_module_and_prints_to_a_stream():
    import npfcn.functional as F

    out = io.StringIO()
    report = npfcn.check(F, examples=5, verbose=False)
    assert report.passed, report.text()
    check(F, examples=2, out=out)
    assert "functions pass" in out.getvalue()


BROKEN_SYNTAX = "def conv_forward_naive(x, w, b, conv_param)\n    return None, None\n"


def test_cli_exit_codes_and_no_traceback(capsys, tmp_path):
    assert main(["check", str(SOLUTIONS / "cs231n_loops.py"), "--examples", "5"]) == 0
    assert main(["check", str(SOLUTIONS / "bug_relu_mask.py"), "--examples", "5"]) == 1
    out = capsys.readouterr().out
    assert "relu_backward: dx differs" in out and "Traceback" not in out
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN_SYNTAX)
    assert main(["check", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "syntax error at line 1" in err and "Traceback" not in err
    assert main(["check", str(SOLUTIONS / "raises_on_import.py")]) == 2
    err = capsys.readouterr().err
    assert "importing it raised FileNotFoundError" in err and "line 4" in err
    assert main(["check", str(SOLUTIONS / "no_such_file.py")]) == 2


def test_without_hypothesis_one_line(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "hypothesis", None)      # as if not installed
    assert main(["check", str(SOLUTIONS / "cs231n_loops.py")]) == 2
    err = capsys.readouterr().err
    assert "needs hypothesis (pip install hypothesis)" in err and "Traceback" not in err


def test_a_file_without_known_functions_is_not_a_pass(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("def hello():\n    return 1\n")
    report = check(path, verbose=False)
    assert not report.passed and report.exit_code == 1
    assert "no function recognised" in report.text()


def test_import_failure_from_the_api(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text(BROKEN_SYNTAX)
    with pytest.raises(ImportFailure, match="syntax error"):
        check(broken, verbose=False)
