"""The processes that share every batch (npfcn.replicas; one per thread by default)."""
import os


def replica_count(config, threads):
    """The processes that share each batch: ``config.replicas``, or for 0 (auto) one per
    thread this process may use, but no more than a batch has images (a process without
    an image would only wait).  Auto is 1 where helper processes cannot run (they need
    POSIX: file descriptors passed to a child)."""
    if config.replicas:
        return config.replicas
    if os.name != "posix":
        return 1
    return max(1, min(threads, config.batch_size))


def start_replicas(model, config, num_classes, replicas, ignore_index):
    """A ReplicaGroup computing each batch's loss and gradients across ``replicas``
    processes (just this one when ``replicas`` is 1)."""
    from functools import partial

    from ..replicas import ReplicaGroup
    from .setup import build_model

    return ReplicaGroup(model, partial(build_model, config, num_classes), replicas=replicas,
                        ignore_index=ignore_index, lovasz=config.lovasz)


def current_replicas(config):
    """The number of processes this run's steps use (see ``replica_count``)."""
    from ..replicas import current_threads

    return replica_count(config, current_threads())
