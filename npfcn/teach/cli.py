"""The command-line pieces of ``npfcn explain`` and ``npfcn check`` (registered by npfcn.cli)."""


def add_parsers(subparsers):
    """Add the ``explain`` and ``check`` subcommands to the ``npfcn`` parser."""
    from .explain import TOPICS

    p = subparsers.add_parser(
        "explain", help="one idea of the course computed on small numbers, with pictures",
        description="Print an exact account of one idea on small numbers (every number "
                    "computed by npfcn's reference path) and write its pictures as PNG.")
    p.add_argument("topic", choices=list(TOPICS), help="what to explain")
    p.add_argument("-o", "--output", default=".", metavar="DIR",
                   help="folder for the pictures (default: the current folder)")
    p.add_argument("--size", type=int, default=500, metavar="H",
                   help="fcn8s: the input's height and width (default 500)")
    p.add_argument("--preset", metavar="NAME",
                   help="transposed-conv: 'course-2x2' (default: the course's 2x2 input, "
                        "3x3 kernel, stride 2) or 'course-3x3' (3x3 input, 5x5 kernel, stride 2)")
    p.add_argument("--input-size", type=int, metavar="H",
                   help="transposed-conv, im2col: the input's side")
    p.add_argument("--kernel-size", type=int, metavar="K",
                   help="transposed-conv, im2col: the kernel's side")
    p.add_argument("--stride", type=int, metavar="S", help="transposed-conv, im2col: the stride")
    p.set_defaults(handler=_run_explain)

    p = subparsers.add_parser(
        "check", help="grade your own layer functions (CS231n or npfcn names) against npfcn",
        description="Import FILE, recognise the functions it defines by name (CS231n "
                    "assignment 2: conv_forward_naive, max_pool_forward_naive, relu_forward, "
                    "softmax_loss, ...; npfcn: conv2d_forward, conv_transpose2d_forward, "
                    "max_pool2d_forward, max_unpool2d_forward, ...) and compare each with "
                    "npfcn's reference on cases drawn by hypothesis; a failure is shrunk to "
                    "the smallest case. Exit 0: all pass, 1: some fail, 2: FILE cannot be "
                    "imported.")
    p.add_argument("file", help="your Python file")
    p.add_argument("--examples", type=int, default=None, metavar="N",
                   help="cases per function (default 25)")
    p.set_defaults(handler=_run_check)


def _run_explain(args):
    from .explain import explain

    explain(args.topic, args.output, size=args.size, preset=args.preset,
            input_size=args.input_size, kernel_size=args.kernel_size, stride=args.stride)
    return 0


def _run_check(args):
    from .check import run_cli

    return run_cli(args)
