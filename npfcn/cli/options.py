"""Options and helpers that several ``npfcn`` subcommands share."""
import os

DEFAULT_RUNS = "runs"
DEFAULT_CHECKPOINT = os.path.join(DEFAULT_RUNS, "latest")

def add_threads_flag(parser):
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for BLAS and the C kernel (default: all cores; use 1 when "
                             "other programs keep the CPU busy)")


def apply_threads(args):
    if getattr(args, "threads", None) is not None:
        from ..sysinfo import set_threads

        set_threads(args.threads)
