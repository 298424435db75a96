"""Data-parallel training steps: each batch split across processes, one per core.

Why processes: a training step of the narrow FCN on a small CPU is a long chain of
short kernels, NumPy calls and Python between them.  One process with two threads
leaves the second core idle through every serial part (measured: the second thread
adds ~1.4x); two single-threaded processes, each on its own share of the batch,
keep both cores busy.  Threads inside one process could not run the Python parts
side by side (the GIL).

One step, for a batch of N images and R replicas (the main process is replica 0):

    main                                      helper r (its own copy of the model)
    copy the weights into shared memory
    send its shard of x, y         ---->      copy the weights from shared memory
    forward + backward on shard 0             forward + backward on shard r
                                   <----      gradients into shared memory, loss back
    grads += helper r's gradients, r = 1, 2, ... (always this order)

The optimizer, the data stream and the checkpoints stay in the main process; the
helpers keep no state between steps but their copy of the model.  Every shard
divides its loss by the WHOLE batch's weight total (``losses.weight_total``), so
the shards' losses and gradients add up to the batch's mean loss and its gradient:
the same numbers as one process computes, up to the order of the float additions.
Results are deterministic for a given number of replicas.

Dropout: each step the main process draws a seed from the model's dropout
Generator for every helper; so masks are reproducible and resume exactly.
"""
import contextlib
import multiprocessing
import os
import signal
import traceback

import numpy as np

from .losses import CrossEntropyLoss, _check_target, weight_total


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


def _layout(arrays):
    """Byte offsets of ``arrays`` (name -> array) packed one after another, each aligned
    to 64 bytes; returns ({name: (offset, shape, dtype)}, total bytes)."""
    offsets, total = {}, 0
    for name, array in arrays.items():
        total = (total + 63) // 64 * 64
        offsets[name] = (total, array.shape, array.dtype.str)
        total += array.nbytes
    return offsets, max(total, 1)


def _views(buffer, layout):
    """NumPy arrays over ``buffer`` (a shared RawArray) at the offsets of ``layout``."""
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
    """

    def __init__(self, model, build_model, replicas=1, ignore_index=255):
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
        self.model = model
        self.replicas = replicas
        self.all_threads = _current_threads()
        threads = self.threads = max(1, self.all_threads // replicas)
        self.ignore_index = ignore_index
        self.loss_fn = CrossEntropyLoss(ignore_index=ignore_index)
        self._helpers = []
        if replicas == 1:
            return
        context = multiprocessing.get_context("spawn")   # fork after OpenMP started is unsafe
        weight_layout, weight_bytes = _layout(model.params)
        grad_layout, grad_bytes = _layout({name: model.params[name] for name in model.trainable})
        self._weights_buffer = context.RawArray("b", weight_bytes)
        self._weights = _views(self._weights_buffer, weight_layout)
        try:
            for _ in range(replicas - 1):
                grads_buffer = context.RawArray("b", grad_bytes)
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_helper_main, daemon=True, name="npfcn-replica",
                    args=(theirs, build_model, self._weights_buffer, weight_layout,
                          grads_buffer, grad_layout, threads, ignore_index))
                process.start()
                theirs.close()
                self._helpers.append((process, ours, _views(grads_buffer, grad_layout)))
            for _, connection, _ in self._helpers:
                self._receive(connection, "ready")
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
            scores = model.forward(x)
            loss = self.loss_fn.forward(scores, y)
            model.backward(self.loss_fn.backward())
            return loss
        # Check every label here, before any shard goes out: a bad label then fails with
        # the loss's own message, naming the whole batch's shapes, in this process.
        _check_target(y, (len(x), model.num_classes) + tuple(np.shape(x)[2:]), model.num_classes,
                      self.ignore_index)
        weight = None if class_weight is None else np.asarray(class_weight).astype(model.dtype)
        denominator = weight_total(y, weight, self.ignore_index)
        for name, view in self._weights.items():
            view[...] = model.params[name]
        bounds = shard_bounds(len(x), self.replicas)
        busy = []
        for (start, stop), helper in zip(bounds[1:], self._helpers):
            # One seed per helper and step, drawn whether or not the model has dropout,
            # so the main Generator advances the same way in every run.
            seed = int(model.rng.integers(2 ** 63))
            if stop > start:
                self._send(helper[1], ("step", x[start:stop], y[start:stop], weight, denominator, seed))
                busy.append(helper)
        start, stop = bounds[0]
        loss = 0.0
        if stop > start:
            scores = model.forward(x[start:stop])
            loss = self.loss_fn.forward(scores, y[start:stop], denominator=denominator)
            model.backward(self.loss_fn.backward())
        for _, connection, grads in busy:
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
            # The helper's traceback, its last line (the exception) first.
            lines = message[1].strip().splitlines()
            raise ReplicaError(f"a training helper process failed: {lines[-1]}\n{message[1]}")
        if message[0] != expected:
            raise ReplicaError(f"a training helper process answered {message[0]!r}, "
                               f"expected {expected!r}")
        return message[1]

    def close(self):
        """Stop the helper processes (idempotent)."""
        helpers, self._helpers = self._helpers, []
        for process, connection, _ in helpers:
            try:
                connection.send(("stop",))
            except (OSError, ValueError):
                pass
        for process, connection, _ in helpers:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
            connection.close()


def _current_threads():
    """Threads this process's kernels use now: the C kernel's OpenMP count, else BLAS's."""
    from . import backend
    from .sysinfo import blas_threads

    if backend.active() == "c":
        return backend.num_threads()
    return blas_threads() or os.cpu_count() or 1


def _helper_main(connection, build_model, weights_buffer, weight_layout, grads_buffer,
                 grad_layout, threads, ignore_index):
    """A helper process: waits for ("step", x, y, class_weight, denominator, seed)
    messages, runs forward and backward on that shard, answers ("done", loss)."""
    # Ctrl-C reaches every process of the terminal's group; only the main process
    # decides what to do with it (finish the step, save, stop the helpers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from .sysinfo import set_threads

        set_threads(threads)
        model = build_model()
        model.train()
        weights = _views(weights_buffer, weight_layout)
        grads = _views(grads_buffer, grad_layout)
        loss_fn = CrossEntropyLoss(ignore_index=ignore_index)
        connection.send(("ready", None))
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
            _, x, y, class_weight, denominator, seed = message
            for name, view in weights.items():
                model.params[name][...] = view
            model.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
            model.zero_grad()
            loss_fn.weight = class_weight
            scores = model.forward(x)
            loss = loss_fn.forward(scores, y, denominator=denominator)
            model.backward(loss_fn.backward())
            for name, view in grads.items():
                view[...] = model.grads[name]
            connection.send(("done", loss))
        except BaseException:
            connection.send(("error", traceback.format_exc()))
            return
