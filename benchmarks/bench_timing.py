"""Shared timing helpers for the npfcn benchmarks.

Why this file exists: a benchmark against another library is only fair when
each runs in a process of its own (no thread pools fighting over the cores),
under the same thread counts, interleaved in time (ours, theirs, ours, ...) so
that a neighbour's burst of load hits both sides alike.  Everything here serves that:

* ``pin_threads(n)``      fixes the thread count of OpenBLAS (NumPy's matmul),
                          of npfcn's OpenMP kernels and of PyTorch, and reports them;
* ``Worker`` / ``serve`` / ``compare_processes``
                          one worker process per library, timed in turns;
* ``compare(cases)``      times callables of ONE process alternately after a
                          warm-up and returns the median, min and max of each;
* ``sgemm_peak()``        the machine's float32 matrix-product rate, the roof
                          the convolutions' GFLOP/s are read against;
* ``peak_rss_mb(argv)``   runs a command in a fresh process and returns the
                          peak resident memory it reached;
* ``machine()``           describes the machine for the results;
* ``markdown_table`` / ``save_results`` write what a person reads
                          (Markdown) and what a program reads (JSON) under
                          ``benchmarks/results/``.
"""
import ctypes
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# Thread pools must be sized before the libraries start them; the environment
# only counts if it is set before NumPy / torch are imported, so a benchmark
# script imports this module first.  pin_threads() also resizes them at run time.
DEFAULT_THREADS = 2
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(DEFAULT_THREADS))
# An idle OpenBLAS thread otherwise spins for ~0.1 s after every matmul and
# takes a core away from whatever runs next (npfcn's OpenMP kernels, PyTorch's
# threads): measured, a 0.2 ms im2col took 5-7 ms right after a matmul.  npfcn
# sets the same default when it is imported before NumPy (see npfcn/__init__.py).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402  (after the environment above)


def _openblas():
    """The OpenBLAS library NumPy loaded, and the prefix of its symbols (or None)."""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return None, None
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps))):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                if hasattr(lib, f"{prefix}set_num_threads{suffix}"):
                    return lib, (prefix, suffix)
    return None, None


def pin_threads(n=DEFAULT_THREADS):
    """Use ``n`` threads in OpenBLAS, npfcn's C kernel and torch (if imported).

    Returns ``{"openblas": .., "npfcn": .., "torch": ..}`` as each library reports it.
    """
    report = {}
    lib, names = _openblas()
    if lib is not None:
        prefix, suffix = names
        getattr(lib, f"{prefix}set_num_threads{suffix}")(int(n))
        report["openblas"] = int(getattr(lib, f"{prefix}get_num_threads{suffix}")())
    from npfcn import sysinfo
    from npfcn.kernels import backend
    if backend.c_available():
        kernel = backend.lib()
        if hasattr(kernel, "npfcn_set_num_threads"):   # OpenMP builds of the kernel
            kernel.npfcn_set_num_threads(int(n))
    report["npfcn"] = backend.num_threads()
    sysinfo.pin_blas_workers()          # as npfcn's own set_threads does
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(int(n))
        report["torch"] = torch.get_num_threads()
    return report


class Stats:
    """Median, min and max of a list of times in seconds."""

    def __init__(self, times):
        self.times = sorted(times)
        self.median = statistics.median(self.times)
        self.min, self.max = self.times[0], self.times[-1]

    @property
    def spread(self):
        """(max - min) / median: how noisy the runs were (0.1 = 10 %)."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    def as_dict(self):
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max,
                "spread": self.spread, "runs": len(self.times)}


def compare(cases, repeats=5, warmup=1, min_time=0.0, pause=0.02):
    """Time every callable in ``cases`` (name -> fn()) alternately.

    Each case runs ``warmup`` times first (page faults, caches, thread start),
    then the cases take turns ``repeats`` times: a, b, c, a, b, c, ...  With
    ``min_time`` > 0 one "run" repeats the call until that many seconds have
    passed and reports the time per call (for very fast cases).
    Before each timed run the process sleeps ``pause`` seconds (untimed): an
    OpenMP runtime keeps its idle threads spinning for a few milliseconds after
    a parallel region (PyTorch's does by default), and without the pause they
    would take the cores from whichever case runs next.
    Returns name -> Stats.
    """
    inner = {}
    for name, fn in cases.items():
        for _ in range(warmup):
            fn()
        inner[name] = 1
        if min_time > 0:
            start = time.perf_counter()
            fn()
            once = max(time.perf_counter() - start, 1e-7)
            inner[name] = max(1, int(min_time / once))
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            k = inner[name]
            if pause > 0:
                time.sleep(pause)
            start = time.perf_counter()
            for _ in range(k):
                fn()
            times[name].append((time.perf_counter() - start) / k)
    return {name: Stats(t) for name, t in times.items()}


# --- each library in a process of its own -------------------------------------------------
# Two libraries in one process share the CPU through two thread pools (OpenBLAS's,
# npfcn's OpenMP, PyTorch's own OpenMP and intra-op pools): threads of one spin-wait
# while the other works, and which one loses depends on the order of the calls.  So
# every library gets a worker process; the parent asks them in turn (a, b, a, b, ...)
# to time one case, so both still see the same neighbours' load.  A worker speaks
# JSON lines on the stdout it had at start; everything else it prints goes to stderr.

class Worker:
    """A child process running ``script --worker LIBRARY *args`` (see ``serve``)."""

    def __init__(self, script, library, args=(), env=None):
        import subprocess as sp

        self.library = library
        self.proc = sp.Popen([sys.executable, script, "--worker", library, *args],
                             stdin=sp.PIPE, stdout=sp.PIPE, text=True, bufsize=1, env=env)
        self.hello = self._receive()            # {"threads": ..., "machine": ...}

    def _receive(self):
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"the {self.library} worker exited ({code}); see its stderr above")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{self.library} worker: {answer['error']}")
        return answer

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._receive()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.ask(op="quit")
            except (RuntimeError, BrokenPipeError, ValueError):
                pass
        self.proc.wait()


def serve(make_case, threads, extra_ops=None, clock=time.perf_counter):
    """The worker's loop: answer the parent's requests until "quit".

    make_case(name) -> fn() builds a case (only the current one is kept alive);
    requests: {"op": "warmup", "case": name, "min_time": s} -> {"inner": k} (calls per
    run so that a run lasts ~min_time), {"op": "time", "case": name} -> {"s": time per
    call}, {"op": "imported", "module": m} -> whether m is loaded here; ``extra_ops``
    maps more op names to functions of the request.  ``clock``: time.perf_counter
    (wall time) or time.process_time (this process's CPU time: with one thread, what
    the work costs however busy the machine is; with more it also counts spinning).
    """
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())      # stray prints go to stderr
    sys.stdout = sys.stderr
    out.write(json.dumps({"threads": pin_threads(threads), "machine": machine()}) + "\n")
    current = {"name": None, "fn": None, "inner": 1}
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        try:
            if op == "quit":
                break
            if op in (extra_ops or {}):
                answer = extra_ops[op](request)
            elif op == "imported":                             # is this process alone?
                answer = {"imported": request["module"] in sys.modules}
            elif op == "warmup":
                current.update(name=None, fn=None)
                fn = make_case(request["case"])
                fn()                                           # page faults, thread start
                start = clock()
                fn()
                once = max(clock() - start, 1e-7)
                inner = max(1, int(request.get("min_time", 0.0) / once))
                current.update(name=request["case"], fn=fn, inner=inner)
                answer = {"inner": inner}
            elif op == "time":
                if current["name"] != request["case"]:
                    raise ValueError(f"time {request['case']!r} before its warmup")
                fn, inner = current["fn"], current["inner"]
                start = clock()
                for _ in range(inner):
                    fn()
                answer = {"s": (clock() - start) / inner}
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:                               # report, keep serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
    return 0


def compare_processes(workers, case, repeats=5, min_time=0.02, pause=0.02):
    """Time ``case`` in every worker (library -> Worker), alternating; library -> Stats.

    Each worker warms up first; then they take turns ``repeats`` times, with a pause
    before each run (an OpenMP pool spins a few ms after its last parallel region).
    """
    for worker in workers.values():
        worker.ask(op="warmup", case=case, min_time=min_time)
    times = {library: [] for library in workers}
    for _ in range(repeats):
        for library, worker in workers.items():
            if pause > 0:
                time.sleep(pause)
            times[library].append(worker.ask(op="time", case=case)["s"])
    return {library: Stats(t) for library, t in times.items()}


def sgemm_peak(size=2048, repeats=5, clock=time.perf_counter):
    """GFLOP/s of NumPy's float32 matrix product on size x size matrices: the median of
    ``repeats`` runs and the best one (this process's BLAS, threads as pinned; ``clock``
    as in ``serve``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b, out=c)
    rates = []
    for _ in range(repeats):
        start = clock()
        np.matmul(a, b, out=c)
        rates.append(2.0 * size ** 3 / (clock() - start) / 1e9)
    return {"median_gflops": statistics.median(rates), "best_gflops": max(rates), "size": size}


def peak_rss_mb(argv, env=None):
    """Run ``argv`` in a new process; return (peak RSS in MiB, its stdout).

    The child is measured alone (``RUSAGE_CHILDREN`` after it exits would mix
    every child this process ever had), so it prints its own peak:
    the command's last stdout line must be ``peak_rss_kb=<int>``.
    """
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    lines = result.stdout.strip().splitlines()
    match = re.match(r"peak_rss_kb=(\d+)", lines[-1]) if lines else None
    if match is None:
        raise RuntimeError(f"{' '.join(argv)} did not report peak_rss_kb")
    return int(match.group(1)) / 1024.0, "\n".join(lines[:-1])


def own_peak_rss_kb():
    """Peak resident set of this process so far, in KiB.

    Read from VmHWM in /proc/self/status: ``getrusage``'s ru_maxrss survives
    fork+exec, so a child started by a big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def machine():
    """A short description of the machine and the library versions: the CPU by name
    (with family/model when the name is generic), its widest vectors, the OpenBLAS
    kernel in use and the environment variables that change it."""
    from npfcn import sysinfo

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": sysinfo.describe_cpu(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": sysinfo.describe_blas(),
        "openblas_core": sysinfo.blas_core(),
        "load": " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def describe(info, threads):
    """One line for the top of a table: date, CPU, BLAS kernel, versions, threads, load."""
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "torch") if k in info)
    thr = ", ".join(f"{k} {v}" for k, v in threads.items())
    forced = "".join(f"; {var}={info[var]}" for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                     if var in info)
    return (f"{info['date']} on {info['cpu']} ({info['cores']} cores); BLAS {info['blas']}"
            f"{forced}; {versions}; threads: {thr}; load average {info.get('load')}")


def fmt(value, digits=2):
    """A number for a table cell ('-' for None)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def markdown_table(rows, columns):
    """rows: list of dicts; columns: list of (key, header).  Returns Markdown text."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def save_results(name, payload, markdown, directory=RESULTS_DIR):
    """Write ``<name>.json`` and ``<name>.md``; returns both paths."""
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, f"{name}.json")
    md_path = os.path.join(directory, f"{name}.md")
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    with open(md_path, "w") as f:
        f.write(markdown + "\n")
    return json_path, md_path


def report(name, header, rows, columns, payload):
    """Print ``header`` and the table on stdout, save both as ``<name>.md`` and
    ``payload`` (plus the rows) as ``<name>.json``; say where on stderr."""
    text = header + "\n\n" + markdown_table(rows, columns)
    print(text)
    paths = save_results(name, {**payload, "rows": rows}, text)
    progress(f"wrote {paths[0]} and {paths[1]}")
    return paths


def progress(message):
    """Progress on stderr, so that stdout stays the table."""
    print(message, file=sys.stderr, flush=True)
