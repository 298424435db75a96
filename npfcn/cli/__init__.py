"""The ``npfcn`` command line: train, eval, predict, info, import-vgg16, gradcheck, bench,
explain, check.  Each subcommand's flags and code live in one module: ``training.py``
(train), ``inference.py`` (eval, predict), ``tools.py`` (info, import-vgg16, gradcheck,
bench), ``npfcn/teach/cli.py`` (explain, check); this one parses and reports errors.

``main(argv)`` returns the exit code: 0 on success, 1 on bad input (one line
``npfcn: error: <message>`` on stderr, no traceback), 2 on a usage error
(argparse), 130 after Ctrl-C.
"""
import argparse
import sys

from .. import __version__
from .inference import add_eval_parser, add_predict_parser
from .tools import add_bench_parser, add_gradcheck_parser, add_import_parser, add_info_parser
from .training import add_train_parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="npfcn", description="Fully convolutional networks for semantic segmentation in NumPy.")
    parser.add_argument("--version", action="version", version=f"npfcn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in (add_train_parser, add_eval_parser, add_predict_parser, add_info_parser,
                add_import_parser, add_gradcheck_parser, add_bench_parser):
        add(subparsers)
    from ..teach.cli import add_parsers as add_teach_parsers   # explain, check
    add_teach_parsers(subparsers)
    return parser


def _message(exc):
    """One line for an exception; OSErrors as '<file>: <reason>'."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing entry {text}"
    return " ".join(text.split())


def main(argv=None):
    """Run the ``npfcn`` command line; returns the exit code."""
    from ..checkpoint import CheckpointError
    from ..train import TrainingDiverged, TrainingInterrupted

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        # argparse's REMAINDER does not take a leading option ("bench --full" was an
        # "unrecognized arguments" error), so bench's arguments bypass this parser.
        args = parser.parse_args(["bench"])
        args.bench_args = argv[1:]
    else:
        args = parser.parse_args(argv)      # usage errors: argparse prints them and exits 2
        args.argv = argv                    # train --procs starts the same command N times
    try:
        return args.handler(args)
    except TrainingInterrupted as exc:
        print(f"npfcn: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nnpfcn: aborted", file=sys.stderr)
        return 130
    except (CheckpointError, TrainingDiverged, ValueError, TypeError, OSError,
            KeyError) as exc:
        print(f"npfcn: error: {_message(exc)}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        # numpy says which allocation failed ("Unable to allocate 161. MiB for an array ...").
        detail = f" ({_message(exc)})" if str(exc) else ""
        print(f"npfcn: error: out of memory{detail}; use fewer or smaller images, a smaller "
              "--batch-size or --max-memory, or fewer --threads", file=sys.stderr)
        return 1
