"""Data-parallel training steps: each batch split across processes, one per core.

Why processes: a training step of the narrow FCN on a small CPU is a long chain of
short kernels, NumPy calls and Python between them.  One process with two threads
leaves the second core idle through every serial part; two processes, each on its
own share of the batch, can keep both cores busy.  Threads inside one process could
not run the Python parts side by side (the GIL).  Measured on a 2-core machine
whose cores slow each other down a lot, it hardly pays (1.02-1.1x the images per
second at batch 2 in normal spells of the machine, more in slow ones; README
"Replicas"), so one replica is the default; the module also shows, in a few lines, how data-parallel training adds up
gradients exactly.

One step, for a batch of N images and R replicas (the main process is replica 0):

    main                                      helper r (its own copy of the model)
    copy the weights into shared memory
    send its shard of x, y         ---->      copy the weights from shared memory
    forward + backward on shard 0             forward + backward on shard r
                                   <----      gradients into shared memory, loss back
    grads += helper r's gradients, r = 1, 2, ... (always this order)

The optimizer, the data stream and the checkpoints stay in the main process; the
helpers keep no state between steps but their copy of the model.  Every shard
divides its loss by the WHOLE batch's weight total (``losses.weight_total``) and
its Lovász term by the whole batch's image count, so the shards' losses and
gradients add up to the batch's mean loss and its gradient:
the same numbers as one process computes, up to the order of the float additions.
Results are deterministic for a given number of replicas.

Dropout: each step the main process draws a seed from the model's dropout
Generator for every helper; so masks are reproducible and resume exactly.
"""
import contextlib
import mmap
import os
import socket
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection

import numpy as np

from ._checks import check_target
from .losses import SegmentationLoss, weight_total


class ReplicaError(RuntimeError):
    """A helper process failed or exited; the message says how."""


def shard_bounds(batch, replicas):
    """[(start, stop), ...] for each replica: sizes differ by at most one, the main
    replica's first.  A batch smaller than ``replicas`` leaves some shards empty."""
    base, extra = divmod(batch, replicas)
    bounds, start = [], 0
    for index in range(replicas):
        stop = start + base + (1 if index < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_step(model, loss_fn, x, y, denominator=None, num_images=None):
    """Forward, loss and backward of one shard (or a whole batch): adds d loss / d weights
    into ``model.grads`` and returns the loss.  ``denominator``, ``num_images``: the whole
    batch's, see SegmentationLoss."""
    scores = model.forward(x)
    loss = loss_fn.forward(scores, y, denominator=denominator, num_images=num_images)
    model.backward(loss_fn.backward())
    return loss


def _layout(arrays):
    """Byte offsets of ``arrays`` (name -> array) packed one after another, each aligned
    to 64 bytes; returns ({name: (offset, shape, dtype)}, total bytes)."""
    offsets, total = {}, 0
    for name, array in arrays.items():
        total = (total + 63) // 64 * 64
        offsets[name] = (total, array.shape, array.dtype.str)
        total += array.nbytes
    return offsets, max(total, 1)


class SharedMemory:
    """``size`` bytes of memory that a child process can map too: an anonymous memory
    file (Linux ``memfd``; a deleted temporary file elsewhere), mapped here; its file
    descriptor is handed to the child, which maps the same pages (``attach``).

    Not ``multiprocessing.shared_memory``: its named segments are tracked by a
    resource tracker that, in Python 3.11, unlinks them when a child that merely
    attached exits.  A file descriptor is closed with the processes that hold it.
    """

    def __init__(self, size, fd=None):
        self.size = int(size)
        if fd is None:
            if hasattr(os, "memfd_create"):
                fd = os.memfd_create("npfcn-replica")     # close-on-exec unless passed on
            else:
                fd, path = tempfile.mkstemp(prefix="npfcn-replica-")
                os.unlink(path)
            os.ftruncate(fd, self.size)
        self.fd = fd
        self.buffer = mmap.mmap(fd, self.size)

    @classmethod
    def attach(cls, fd, size):
        return cls(size, fd=fd)

    def close(self):
        try:
            self.buffer.close()
        except BufferError:
            pass            # NumPy views still point into it: the mapping goes with them
        os.close(self.fd)


def _start_helper(weights_memory, grads_memory):
    """A new Python process running ``_helper_main``; returns (Popen, Connection).

    A fresh interpreter (not a fork: OpenMP and BLAS threads do not survive fork; not
    multiprocessing's spawn: it re-runs the caller's ``__main__``, so a script without
    an ``if __name__ == "__main__"`` guard starts its training again inside the helper,
    which then dies at start-up - seen with a benchmark script).  Its own session, so a
    Ctrl-C at the terminal reaches only the main process, which finishes the step, saves
    and stops the helpers.
    """
    ours, theirs = socket.socketpair()
    fds = (theirs.fileno(), weights_memory.fd, grads_memory.fd)
    command = [sys.executable, "-c", "from npfcn.replicas import _helper_main; _helper_main()",
               *map(str, fds), str(weights_memory.size), str(grads_memory.size)]
    # The helper imports this very npfcn, wherever the caller found it (an installed
    # package, a source tree on sys.path): its folder goes first on PYTHONPATH.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        process = subprocess.Popen(command, pass_fds=fds, start_new_session=True,
                                   stdin=subprocess.DEVNULL, env=env)
    finally:
        theirs.close()
    return process, Connection(ours.detach())


def _views(buffer, layout):
    """NumPy arrays over ``buffer`` (shared memory) at the offsets of ``layout``."""
    raw = np.frombuffer(buffer, dtype=np.uint8)
    views = {}
    for name, (offset, shape, dtype) in layout.items():
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        views[name] = raw[offset:offset + size].view(dtype).reshape(shape)
    return views


class ReplicaGroup:
    """Computes a training batch's loss and gradients across ``replicas`` processes.

        group = ReplicaGroup(model, build_model, replicas=2)
        loss = group.forward_backward(x, y, class_weight)  # fills model.grads
        group.close()                                      # or use ``with``

    model: the main process's model (replica 0); its ``grads`` receive the sum.
    build_model: a picklable zero-argument callable that builds an identical,
    freshly initialised model (the helpers' copies; their weights are overwritten
    from the main model before every step).
    The threads this process uses now (``npfcn.sysinfo.set_threads``) are divided
    among the replicas: ``threads`` each, at least 1; the main process switches to
    its share only inside ``training_threads()``, so validation keeps them all.
    ``replicas=1`` starts no process: the step runs in this process as usual.
    ignore_index, lovasz: the training loss's (``npfcn.losses.SegmentationLoss``).
    """

    def __init__(self, model, build_model, replicas=1, ignore_index=255, lovasz=0.0):
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
        self.model = model
        self.replicas = replicas
        self.all_threads = current_threads()
        threads = self.threads = max(1, self.all_threads // replicas)
        self.ignore_index = ignore_index
        self.loss_fn = SegmentationLoss(ignore_index=ignore_index, lovasz=lovasz)
        self._helpers = []
        if replicas == 1:
            return
        if os.name != "posix":
            raise OSError("replicas > 1 need a POSIX system (file descriptors passed to a "
                          "child process)")
        weight_layout, weight_bytes = _layout(model.params)
        grad_layout, grad_bytes = _layout({name: model.params[name] for name in model.trainable})
        self._weights_memory = SharedMemory(weight_bytes)
        self._weights = _views(self._weights_memory.buffer, weight_layout)
        try:
            for _ in range(replicas - 1):
                grads_memory = SharedMemory(grad_bytes)
                process, connection = _start_helper(self._weights_memory, grads_memory)
                self._helpers.append((process, connection, _views(grads_memory.buffer, grad_layout),
                                      grads_memory))
                # sys.path first: unpickling build_model may import the caller's modules.
                self._send(connection, ("path", list(sys.path)))
                self._send(connection, ("init", build_model, weight_layout, grad_layout,
                                        threads, ignore_index, lovasz))
            for helper in self._helpers:
                self._receive(helper[1], "ready")
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @contextlib.contextmanager
    def training_threads(self):
        """Inside: this process uses its share of the threads (all of them with 1 replica)."""
        from .sysinfo import set_threads

        if self.threads == self.all_threads:
            yield
            return
        set_threads(self.threads)
        try:
            yield
        finally:
            set_threads(self.all_threads)

    def forward_backward(self, x, y, class_weight=None):
        """x: (N, 3, H, W), y: (N, H, W) labels -> the batch's mean loss (a float);
        d loss / d weights are left in ``model.grads`` (zeroed first)."""
        model = self.model
        self.loss_fn.weight = class_weight
        model.zero_grad()
        if not self._helpers:
            return shard_step(model, self.loss_fn, x, y)
        # Check the images and every label here, before any shard goes out: bad input
        # then fails with the model's and the loss's own messages, in this process.
        x = model.check_input(x)
        check_target(y, (len(x), model.num_classes) + tuple(np.shape(x)[2:]), model.num_classes,
                      self.ignore_index)
        weight = None if class_weight is None else np.asarray(class_weight).astype(model.dtype)
        denominator = weight_total(y, weight, self.ignore_index)
        for name, view in self._weights.items():
            view[...] = model.params[name]
        if model.num_classes <= 256 and 0 <= self.ignore_index <= 255:
            y = y.astype(np.uint8)      # checked above: the same labels, 1/8 of the bytes to send
        bounds = shard_bounds(len(x), self.replicas)
        busy = []
        for (start, stop), helper in zip(bounds[1:], self._helpers):
            # One seed per helper and step, drawn whether or not the model has dropout,
            # so the main Generator advances the same way in every run.
            seed = int(model.rng.integers(2 ** 63))
            if stop > start:
                self._send(helper[1], ("step", x[start:stop], y[start:stop], weight, denominator,
                                       len(x), seed))
                busy.append(helper)
        start, stop = bounds[0]
        loss = 0.0
        if stop > start:
            loss = shard_step(model, self.loss_fn, x[start:stop], y[start:stop], denominator, len(x))
        for _, connection, grads, _ in busy:
            loss += self._receive(connection, "done")
            for name in model.trainable:
                model.grads[name] += grads[name]
        return loss

    def _send(self, connection, message):
        try:
            connection.send(message)
        except (BrokenPipeError, ConnectionError, OSError):
            raise ReplicaError("a training helper process exited unexpectedly "
                               "(out of memory or killed?)") from None

    def _receive(self, connection, expected):
        try:
            message = connection.recv()
        except (EOFError, OSError):
            raise ReplicaError("a training helper process exited unexpectedly "
                               "(out of memory or killed?)") from None
        if message[0] == "error":
            # One line (the helper's exception) to read; its traceback as a note, which
            # Python prints under the main process's traceback when nobody catches it.
            lines = message[1].strip().splitlines()
            error = ReplicaError(f"a training helper process failed: {lines[-1]}")
            if hasattr(error, "add_note"):
                error.add_note("the helper's traceback:\n" + message[1])
            raise error
        if message[0] != expected:
            raise ReplicaError(f"a training helper process answered {message[0]!r}, "
                               f"expected {expected!r}")
        return message[1]

    def close(self):
        """Stop the helper processes and free the shared memory (idempotent)."""
        helpers, self._helpers = self._helpers, []
        for process, connection, _, _ in helpers:
            try:
                connection.send(("stop",))
            except (OSError, ValueError):
                pass
        for process, connection, _, memory in helpers:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            connection.close()
            memory.close()
        memory, self._weights_memory = getattr(self, "_weights_memory", None), None
        if memory is not None:
            self._weights = {}
            memory.close()


def current_threads():
    """Threads this process's kernels use now: the C kernel's OpenMP count, else BLAS's."""
    from . import backend
    from .sysinfo import blas_threads

    if backend.active() == "c":
        return backend.num_threads()
    return blas_threads() or os.cpu_count() or 1


def _helper_main():
    """A helper process (started by ``_start_helper``; argv: the socket's, the weights'
    and the gradients' file descriptors, then the two memory sizes).

    Receives ("path", sys.path) and ("init", build_model, layouts, threads,
    ignore_index, lovasz), answers ("ready", None); then for every ("step", x, y,
    class_weight, denominator, num_images, seed) runs forward and backward on that shard, writes
    its gradients to the shared memory and answers ("done", loss); ("stop",) or the
    main process going away ends it.  Any exception is sent back as ("error", text).
    """
    socket_fd, weights_fd, grads_fd, weights_size, grads_size = map(int, sys.argv[1:6])
    connection = Connection(socket_fd)
    try:
        _, path = connection.recv()
        sys.path[:] = path
        _, build_model, weight_layout, grad_layout, threads, ignore_index, lovasz = connection.recv()
        from .sysinfo import set_threads

        set_threads(threads)
        model = build_model()
        model.train()
        weights = _views(SharedMemory.attach(weights_fd, weights_size).buffer, weight_layout)
        grads = _views(SharedMemory.attach(grads_fd, grads_size).buffer, grad_layout)
        loss_fn = SegmentationLoss(ignore_index=ignore_index, lovasz=lovasz)
        connection.send(("ready", None))
    except (EOFError, OSError):
        return                  # the main process has gone
    except BaseException:
        connection.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return              # the main process has gone
        if message[0] == "stop":
            return
        try:
            _, x, y, class_weight, denominator, num_images, seed = message
            for name, view in weights.items():
                model.params[name][...] = view
            model.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
            model.zero_grad()
            loss_fn.weight = class_weight
            loss = shard_step(model, loss_fn, x, y, denominator, num_images)
            for name, view in grads.items():
                view[...] = model.grads[name]
            connection.send(("done", loss))
        except BaseException:
            connection.send(("error", traceback.format_exc()))
            return
