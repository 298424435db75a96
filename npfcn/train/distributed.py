"""Data-parallel training on MPI (mpi4py): every process ("rank") takes its slice of
every batch, and one ``Allreduce`` adds up their gradients.

One step, for a global batch of N images on R ranks (every rank runs the same loop,
reads the same batch from the same data stream and keeps its own slice)::

    rank r:  x[start_r:stop_r]  -> forward, loss, backward  -> gradients g_r (one flat buffer)
    all:     Allreduce(g, SUM)    g = g_0 + g_1 + ... + g_(R-1), the same on every rank
    all:     clip, optimizer step (the same update on every rank: the weights stay equal)

Every slice divides its loss by the WHOLE batch's weight total (``losses.weight_total``)
and its Lovász term by the whole batch's image count, so the slices' losses and
gradients add up to the batch's mean loss and its gradient: the numbers one process
computes, up to the order of the float additions.  The buffer holds every trainable
gradient (the model's ``grads`` are views into it, so backward writes there directly),
then the slice's loss and a "stop" flag (a Ctrl-C seen by any rank), so a step costs
exactly one in-place, uppercase ``Allreduce``: a copy-free collective on the array's
memory, not the lowercase ``allreduce`` that pickles Python objects.  The ranks meet
first in a barrier they wait for asleep (``World.wait_for_all``): MPI waits by spinning,
and a spinning rank takes a core from the ranks still computing.

Validation is split the same way (each rank scores a contiguous part of the validation
set; the confusion matrices and loss sums are added up); rank 0 alone writes the
checkpoints, metrics and pictures.  At the start and after every epoch rank 0's
weights are broadcast, so ranks on machines whose arithmetic rounds differently (or
batch-norm statistics, which each rank gathers from its own slice) never drift apart.

Dropout: rank 0 draws its masks from ``model.rng`` as a single process does (its state
is what checkpoints store); rank r > 0 draws from a Generator seeded by
``[seed, 2, global step, r]``, so masks are reproducible and resume exactly.
Without MPI (``mpiexec`` did not start this process) everything here is a single
process that does exactly what training without this module did.
"""
import contextlib
import os
import sys
import time

import numpy as np

from .._checks import check_target
from ..losses import SegmentationLoss, weight_total

# Set by the MPI launchers in every process they start: Open MPI, PMIx (Open MPI 5),
# MPICH / Intel MPI (Hydra's PMI).
_RANK_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK")


class World:
    """This process's place among the training processes: ``rank`` of ``size``;
    ``comm`` is the MPI communicator (None for a single process)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()

    @property
    def is_root(self):
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    def local_size(self):
        """The ranks on this machine (they share its cores)."""
        if self.comm is None:
            return 1
        from mpi4py import MPI

        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return local.Get_size()
        finally:
            local.Free()

    def broadcast_object(self, value):
        """Rank 0's ``value`` (a small Python object: a folder name) on every rank."""
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def broadcast_arrays(self, arrays):
        """Overwrite every array of ``arrays`` (name -> contiguous ndarray) with rank 0's."""
        if self.comm is None:
            return
        for name in sorted(arrays):
            self.comm.Bcast(arrays[name], root=0)

    def any(self, flag):
        """True on every rank when ``flag`` is true on any (an Allreduce of one number)."""
        if self.comm is None:
            return bool(flag)
        return bool(self.sum_in_place(np.array([int(bool(flag))], dtype=np.int64))[0])

    def wait_for_all(self, poll_seconds=0.0002):
        """Return once every rank has reached this call, sleeping in between looks.

        MPI's blocking calls wait by spinning on a core.  A rank that finished its slice
        first would burn the core its partner (or another program) could compute on;
        sleeping here, the wait costs a fraction of a millisecond per step instead.
        """
        if self.comm is None:
            return
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(poll_seconds)

    def sum_in_place(self, array):
        """Replace ``array`` by its sum over all ranks (one in-place Allreduce)."""
        if self.comm is not None:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
        return array


def launched_by_mpi():
    """True when an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(name in os.environ for name in _RANK_VARIABLES)


_WORLD = None


def join_world():
    """The World of this process (created once): MPI's when an MPI launcher started it,
    else a single process.  Each rank then uses its share of this machine's threads."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not launched_by_mpi():
        _WORLD = World()
        return _WORLD
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("this process was started by an MPI launcher but mpi4py is not "
                           "installed: pip install 'npfcn[mpi]'") from None
    _WORLD = World(MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None)
    if _WORLD.size > 1:
        from ..sysinfo import set_threads
        from .launch import current_threads

        set_threads(max(1, current_threads() // _WORLD.local_size()))
        _own_session()
    return _WORLD


def _own_session():
    """Put this rank in a session of its own, as a separately started program is.

    Linux shares a busy CPU between sessions first ("autogroups") and only then between
    the processes of a session: ranks left in their launcher's session would share one
    program's CPU time, however many there are.  A rank is its process group's leader,
    which may not start a session, so it first joins its parent's group."""
    if not hasattr(os, "setsid"):
        return
    try:
        os.setpgid(0, os.getpgid(os.getppid()))
        os.setsid()
    except OSError:
        pass            # not allowed here: the ranks share their launcher's session


def shard_bounds(batch, ranks):
    """[(start, stop), ...] for each rank: sizes differ by at most one, rank 0's first.
    A batch smaller than ``ranks`` leaves some slices empty."""
    base, extra = divmod(batch, ranks)
    bounds, start = [], 0
    for index in range(ranks):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_step(model, loss_fn, x, y, denominator=None, num_images=None):
    """Forward, loss and backward of one slice (or a whole batch): adds d loss / d weights
    into ``model.grads`` and returns the loss.  ``denominator``, ``num_images``: the whole
    batch's, see SegmentationLoss."""
    scores = model.forward(x)
    loss = loss_fn.forward(scores, y, denominator=denominator, num_images=num_images)
    model.backward(loss_fn.backward())
    return loss


class FlatGradients:
    """Every trainable gradient of ``model`` in one contiguous buffer, plus ``extra``
    numbers after them.  ``model.grads[name]`` become views into the buffer where the
    model lets them be replaced; ``gather``/``scatter`` copy any that could not."""

    ALIGN = 16      # elements: each gradient starts on a 64-byte boundary (float32), as
                    # freshly allocated arrays do, so the kernels see the same alignment

    def __init__(self, model, extra=0):
        shapes = {name: model.grads[name].shape for name in model.trainable}
        starts, offset = {}, 0
        for name, shape in shapes.items():
            starts[name] = offset
            offset = -(-(offset + int(np.prod(shape, dtype=np.int64))) // self.ALIGN) * self.ALIGN
        self.buffer = np.zeros(offset + extra + self.ALIGN, dtype=model.dtype)
        shift = (-self.buffer.ctypes.data % 64) // self.buffer.itemsize
        self.buffer = self.buffer[shift:shift + offset + extra]
        self.views = {}
        for name, shape in shapes.items():
            size = int(np.prod(shape, dtype=np.int64))
            self.views[name] = self.buffer[starts[name]:starts[name] + size].reshape(shape)
            try:
                model.grads[name] = self.views[name]
            except (TypeError, ValueError, KeyError):
                pass            # a model whose grads cannot be replaced: copied each step
        self.extra = self.buffer[offset:]

    def gather(self, model):
        for name, view in self.views.items():
            grad = model.grads[name]
            if grad is not view:
                view[...] = grad

    def scatter(self, model):
        for name, view in self.views.items():
            grad = model.grads[name]
            if grad is not view:
                grad[...] = view


class DataParallel:
    """A batch's loss and gradients computed across the ranks of ``world``.

        parallel = DataParallel(model, world, seed=config.seed, lovasz=config.lovasz)
        loss, stop = parallel.forward_backward(x, y, class_weight, step, stop_requested)

    x: (N, 3, H, W) the WHOLE batch (every rank has it), y: (N, H, W) labels.  Leaves
    d loss / d weights of the whole batch in ``model.grads`` on every rank; returns the
    batch's mean loss and whether any rank asked to stop.  ``wait_seconds`` and
    ``allreduce_seconds`` add up the time spent waiting for the other ranks and in the
    collective (``benchmarks/bench_scale.py``).
    """

    def __init__(self, model, world, seed=0, ignore_index=255, lovasz=0.0):
        self.model, self.world, self.seed = model, world, int(seed)
        self.ignore_index = ignore_index
        self.loss_fn = SegmentationLoss(ignore_index=ignore_index, lovasz=lovasz)
        self.flat = FlatGradients(model, extra=2) if world.size > 1 else None
        self.wait_seconds = 0.0           # waiting for slower ranks (wait_for_all)
        self.allreduce_seconds = 0.0      # in the Allreduce itself

    def forward_backward(self, x, y, class_weight=None, step=0, stop_requested=False):
        model = self.model
        self.loss_fn.weight = class_weight
        model.zero_grad()
        if self.flat is None:
            return shard_step(model, self.loss_fn, x, y), bool(stop_requested)
        # Every rank checks the whole batch, so bad input fails the same way everywhere.
        x = model.check_input(x)
        check_target(y, (len(x), model.num_classes) + tuple(np.shape(x)[2:]), model.num_classes,
                     self.ignore_index)
        denominator = weight_total(y, class_weight, self.ignore_index)
        rank = self.world.rank
        if rank:
            state = np.random.default_rng([self.seed, 2, int(step), rank]).bit_generator.state
            model.rng.bit_generator.state = state
        start, stop = shard_bounds(len(x), self.world.size)[rank]
        loss = 0.0
        if stop > start:
            loss = shard_step(model, self.loss_fn, x[start:stop], y[start:stop], denominator, len(x))
        flat = self.flat
        flat.gather(model)
        flat.extra[0], flat.extra[1] = loss, float(bool(stop_requested))
        started = time.perf_counter()
        self.world.wait_for_all()
        arrived = time.perf_counter()
        self.world.sum_in_place(flat.buffer)
        self.wait_seconds += arrived - started
        self.allreduce_seconds += time.perf_counter() - arrived
        flat.scatter(model)
        return float(flat.extra[0]), bool(flat.extra[1] > 0)

    def synchronise(self):
        """Give every rank rank 0's weights (all parameters, batch-norm statistics too)."""
        self.world.broadcast_arrays(dict(self.model.params))


class Subset:
    """Items ``indices`` of ``dataset``, in that order (a rank's part of the validation set)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)
        self.class_names = getattr(dataset, "class_names", None)
        names = getattr(dataset, "names", None)
        self.names = None if names is None else [names[i] for i in self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]


def evaluate_split(world, model, dataset, **options):
    """``npfcn.evaluate.evaluate`` with the dataset split across the ranks: each scores a
    contiguous part, the confusion matrices and the loss sums are added up.  Returns the
    same Evaluation on every rank."""
    from ..evaluate import Evaluation, evaluate
    from ..metrics import summarize

    if world.size == 1:
        return evaluate(model, dataset, **options)
    start, stop = shard_bounds(len(dataset), world.size)[world.rank]
    part = evaluate(model, Subset(dataset, range(start, stop)), **options)
    pixels = float(part.hist.sum())      # the pixels counted: those not ignored
    hist = world.sum_in_place(np.array(part.hist, dtype=np.int64))
    totals = world.sum_in_place(np.array([part.loss * pixels, pixels], dtype=np.float64))
    names = options.get("class_names") or getattr(dataset, "class_names", None)
    return Evaluation(hist=hist, loss=float(totals[0] / max(totals[1], 1.0)),
                      metrics=summarize(hist, names))


@contextlib.contextmanager
def stop_all_on_error(world, expected=()):
    """Inside: an exception on one rank stops every rank (``Abort``) instead of leaving
    the others waiting in a collective forever; the failing rank first prints its
    one-line error.  ``expected`` exceptions are raised by every rank at the same point
    (a NaN loss, a Ctrl-C seen by all): they pass through."""
    try:
        yield
    except expected:
        raise
    except BaseException as exc:
        if world.size == 1:
            raise
        text = " ".join((str(exc) or type(exc).__name__).split())
        sys.stderr.write(f"npfcn: error: process {world.rank} of {world.size}: {text}\n")
        sys.stderr.flush()
        world.comm.Abort(1)


class _Terminal:
    """A stream that says it is a terminal: rank 0's stderr when the launcher's is one
    (MPI passes it on through a pipe), so the progress bar draws in place."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return True


def rank_stream(world, stream=None):
    """Where a rank reports progress: ``stream`` (default stderr) on rank 0, nothing
    elsewhere (every rank runs the same loop; one report is enough)."""
    if not world.is_root:
        return open(os.devnull, "w", encoding="utf-8")
    stream = sys.stderr if stream is None else stream
    if world.size > 1 and os.environ.get("NPFCN_STDERR_IS_TERMINAL") == "1":
        return _Terminal(stream)
    return stream
