"""The training loop: ``Trainer`` runs epochs of steps, validates after each, saves.

    from npfcn.train import TrainConfig, train
    result = train(TrainConfig(epochs=2, width=0.0625))   # writes runs/<name>/

One step: the schedule's learning rate, forward + loss + backward on the batch (split
across MPI processes when there are several, see ``distributed``), gradient clipping,
the optimizer's update.  One
epoch: the steps over the shuffled training set, then validation, checkpoints
(``last.npz`` always, ``best.npz`` when the mean IoU improved), metrics.json and the
pictures (see ``runs``).
"""
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from ..losses import prior_correction
from ..progress import ProgressBar, format_duration
from .checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint
from .config import IGNORE_INDEX, TrainConfig
from .distributed import DataParallel, evaluate_split, join_world, rank_stream, stop_all_on_error
from .optimization import build_optimizer, build_schedule, clip_gradients
from .runs import BEST, LAST, jsonable, new_run_dir, point_latest, resolve_checkpoint, \
    write_metrics, write_pictures
from .launch import data_checked_by_launcher
from .setup import build_model, build_transform, class_weights, initialise, open_checked_datasets
from .state import data_rng, progress_meta, restore_progress, rng_state, set_rng_state, \
    start_progress
from .stopping import StopRequest, TrainingDiverged, TrainingInterrupted, diverged_message, \
    first_non_finite


@dataclass
class RunResult:
    run_dir: str
    history: list
    best_mean_iou: float
    best_epoch: int
    status: str          # "complete" or "interrupted"
    seconds: float


class Trainer:
    """One training run.  ``Trainer(config).run()`` or ``Trainer.resume(path).run()``."""

    def __init__(self, config, stream=None, run_dir=None):
        self.config = config.validate()
        self.world = join_world()
        self.stream = rank_stream(self.world, stream)
        self.train_set, self.val_set = open_checked_datasets(
            config, self.stream, read_all=not data_checked_by_launcher())
        self.class_names = list(self.train_set.class_names)
        self.num_classes = len(self.class_names)
        self.transform = build_transform(config)
        self.model = initialise(build_model(config, self.num_classes), config, self.train_set)
        self.model.input_gradient = False      # training never needs the image's gradient
        self.optimizer = build_optimizer(config, self.model)
        self.data_rng = data_rng(config.seed)
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.schedule = build_schedule(config, config.epochs * self.steps_per_epoch)
        self.class_weights = class_weights(self.train_set, self.num_classes, config.class_weighting)
        self.parallel = None    # a DataParallel while run() trains
        self.val_batch_size = config.batch_size if config.data == "synthetic" else 1
        start_progress(self, rng_state(self.data_rng), rng_state(self.model.rng))
        self.run_dir = run_dir
        self.on_step = None     # optional callable(trainer) after every completed step (tests)

    @property
    def score_offset(self):
        """(K,) offsets the predictions add to the scores: undo the tilt of the class
        weights of the current step (``npfcn.losses.prior_correction``); None if unweighted."""
        return prior_correction(self.class_weights_at(self.global_step))

    def class_weights_at(self, step):
        """The loss's class weights at global step ``step`` (None: unweighted)."""
        weights = self.class_weights
        if weights is None or not self.config.anneal_class_weights:
            return weights
        total = self.config.epochs * self.steps_per_epoch
        return weights ** (1.0 - min(step / max(total, 1), 1.0))

    @classmethod
    def resume(cls, path, epochs=None, stream=None):
        """A Trainer that continues the run saved in ``path`` (a checkpoint or run folder)."""
        path = resolve_checkpoint(path, prefer=LAST)
        checkpoint = load_checkpoint(path)
        saved = (checkpoint.meta.get("config") or {}).get("train")
        if not isinstance(saved, dict) or "rng" not in checkpoint.meta:
            raise CheckpointError(f"{path} is not a training checkpoint (no training state); "
                                  "only checkpoints written by `npfcn train` can be resumed")
        # Runs saved before LARS and the Lovász term existed trained without them:
        # resume them so.
        config = TrainConfig.from_dict({"lars": 0.0, "lovasz": 0.0, **saved})
        if epochs is not None:
            config.epochs = epochs
        # The real folder, not the path it was reached by: resuming through OUTPUT/latest
        # would otherwise write into "latest" and point the link at itself.
        trainer = cls(config, stream=stream, run_dir=os.path.dirname(os.path.realpath(path)))
        load_into(checkpoint, trainer.model, trainer.optimizer)
        restore_progress(trainer, checkpoint.meta)
        return trainer

    def meta(self, status):
        """The checkpoint's metadata: the settings, classes, score offsets and progress."""
        offset = self.score_offset
        return {"config": {"model": dict(self.model.config), "train": self.config.to_dict()},
                "class_names": self.class_names, "preprocessing": self.config.preprocessing,
                "colormap": _colours_of(self.train_set),
                "score_offset": None if offset is None else offset.tolist(),
                **progress_meta(self), "status": status}

    def save(self, name, status):
        """Write the model, optimizer and progress to ``run_dir/name`` atomically."""
        path = os.path.join(self.run_dir, name)
        if self.world.is_root:
            save_checkpoint(path, self.model, self.optimizer, self.meta(status))
        return path

    def _check_finite_weights(self, epoch, step):
        name = first_non_finite(self.model)
        if name is not None:
            raise TrainingDiverged(self._diverged_message(
                f"weight {name} became NaN or infinite", epoch, step))

    def _diverged_message(self, what, epoch, step):
        return diverged_message(what, self.run_dir, epoch, step, self.global_step + 1)

    def run(self):
        """Train the remaining epochs; returns a RunResult (see ``train`` for the errors)."""
        config, world = self.config, self.world
        if world.is_root:
            if self.run_dir is None:
                self.run_dir = new_run_dir(config.output, config.name, config.model)
            point_latest(os.path.dirname(os.path.abspath(self.run_dir)), self.run_dir)
        self.run_dir = world.broadcast_object(self.run_dir)
        self._announce()
        started = time.perf_counter()
        status = "complete"
        self.parallel = DataParallel(self.model, world, seed=config.seed, ignore_index=IGNORE_INDEX,
                                     lovasz=config.lovasz)
        self.parallel.synchronise()
        with StopRequest(self.stream) as stop:
            while self.epoch < config.epochs:
                if not self._train_epoch(stop):
                    status = "interrupted"
                    break
                self._end_epoch()
                if world.any(stop.requested):
                    status = "interrupted" if self.epoch < config.epochs else "complete"
                    break
        seconds = time.perf_counter() - started
        self._write_metrics(status)
        if status == "interrupted":
            last = os.path.join(self.run_dir, LAST)
            raise TrainingInterrupted(
                f"interrupted at epoch {self.epoch + 1}, step {self.step_in_epoch}: state saved in "
                f"{last}; continue with `npfcn train --resume {self.run_dir}`", last)
        self._say(f"done in {format_duration(seconds)}: best validation mean IoU "
                  f"{self.best_mean_iou:.4f} (epoch {self.best_epoch}); "
                  f"checkpoints {os.path.join(self.run_dir, BEST)} and {LAST}; pictures "
                  f"{os.path.join(self.run_dir, 'samples.png')} and curves.png")
        return RunResult(self.run_dir, self.history, self.best_mean_iou, self.best_epoch,
                         status, seconds)

    def _say(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()

    def _announce(self):
        self._say(describe_run(self))
        if self.world.size > 1:
            self._say(f"{self.world.size} processes (MPI ranks) share every batch")
        self._say(f"writing {self.run_dir}/ (checkpoints, metrics.json, curves.png, samples.png)")

    def _train_epoch(self, stop):
        """Train the rest of the current epoch; False if stopped by Ctrl-C (state saved)."""
        config, model = self.config, self.model
        epoch_number = self.epoch + 1
        # Replay the epoch's data stream from its start, skipping the batches already
        # trained on: this draws the same order and augmentations as an uninterrupted run.
        set_rng_state(self.data_rng, self.epoch_start_rng)
        from ..data import iterate_batches

        batches = iterate_batches(self.train_set, config.batch_size, rng=self.data_rng,
                                  transform=self.transform, preprocessing=config.preprocessing)
        bar = ProgressBar(self.steps_per_epoch, f"epoch {epoch_number}/{config.epochs}",
                          stream=self.stream, initial=self.step_in_epoch)
        model.train()
        updating = False
        try:
            for index, (x, y) in enumerate(batches):
                if index < self.step_in_epoch:
                    continue
                step = index + 1
                self.optimizer.lr = self.schedule(self.global_step)
                loss, stopping = self.parallel.forward_backward(
                    x, y, self.class_weights_at(self.global_step), self.global_step, stop.requested)
                if not math.isfinite(loss):
                    bar.clear()
                    raise TrainingDiverged(self._diverged_message(
                        f"the loss became {loss}", epoch_number, step))
                if config.clip_grad_norm:
                    clip_gradients(model, config.clip_grad_norm)
                updating = True
                self.optimizer.step()
                updating = False
                self.step_in_epoch, self.global_step = step, self.global_step + 1
                self.dropout_state = rng_state(model.rng)
                self.running["loss_sum"] += loss
                self.running["batches"] += 1
                self.running["images"] += len(x)
                bar.update(step, len(x), loss=self.running["loss_sum"] / self.running["batches"])
                if self.on_step is not None:
                    self.on_step(self)
                # Several ranks stop together after the step whose Allreduce told them all.
                if stopping or (stop.requested and self.world.size == 1):
                    bar.clear()
                    self._check_finite_weights(epoch_number, step)
                    self.save(LAST, "interrupted")
                    return False
        except KeyboardInterrupt:
            # Only reached without the signal handler (not the main thread) or on a
            # second Ctrl-C.  Before the optimizer step the weights are those of the last
            # completed step, which the counters describe; during it they may be
            # half-updated.  Other ranks may be waiting in a step: they are stopped.
            bar.clear()
            if updating:
                raise
            self._check_finite_weights(epoch_number, self.step_in_epoch)
            self.save(LAST, "interrupted")
            if self.world.size > 1:
                raise
            return False
        self._bar = bar
        return True

    def _end_epoch(self):
        """Validate, record the metrics, write the checkpoints and pictures."""
        epoch_number = self.epoch + 1
        self._check_finite_weights(epoch_number, self.step_in_epoch)
        seconds = time.perf_counter() - self._bar.start
        self.parallel.synchronise()
        self._bar.status(f"validating on {len(self.val_set)} images...")
        evaluation = self.validate()
        record = {"epoch": epoch_number, "lr": float(self.optimizer.lr),
                  "train_loss": self.running["loss_sum"] / max(self.running["batches"], 1),
                  "val_loss": evaluation.loss, **evaluation.metrics,
                  "train_seconds": seconds,
                  "images_per_second": self.running["images"] / max(seconds, 1e-9)}
        self.history.append(jsonable(record))
        improved = evaluation.metrics["mean_iou"] > self.best_mean_iou
        if improved:
            self.best_mean_iou, self.best_epoch = float(evaluation.metrics["mean_iou"]), epoch_number
        # Advance the counters to "epoch done" before saving, so last.npz resumes at the next epoch.
        self.epoch, self.step_in_epoch = epoch_number, 0
        self.epoch_start_rng = rng_state(self.data_rng)
        self.running = {"loss_sum": 0.0, "batches": 0, "images": 0}
        self.save(LAST, "epoch")
        if improved:
            self.save(BEST, "epoch")
        if self.world.is_root:
            write_pictures(self.run_dir, self.model, self.val_set, self.history,
                           self.config.num_samples, self.config.preprocessing, self.score_offset)
        self._write_metrics("running")
        self._bar.close(
            f"epoch {epoch_number}/{self.config.epochs}  loss {record['train_loss']:.4f}  "
            f"val loss {record['val_loss']:.4f}  pixel acc {record['pixel_accuracy']:.4f}  "
            f"mean IoU {record['mean_iou']:.4f}{' (best)' if improved else ''}  "
            f"{record['images_per_second']:.1f} img/s  {format_duration(seconds)}")

    def validate(self):
        """Score the model on the validation set: an ``npfcn.evaluate.Evaluation``."""
        return evaluate_split(self.world, self.model, self.val_set, batch_size=self.val_batch_size,
                              preprocessing=self.config.preprocessing,
                              class_names=self.class_names, score_offset=self.score_offset)

    def _write_metrics(self, status):
        if not self.world.is_root:
            return
        best = {"epoch": self.best_epoch, "mean_iou": self.best_mean_iou}
        write_metrics(self.run_dir, {
            "status": status,
            "config": {"model": dict(self.model.config), "train": self.config.to_dict()},
            "class_names": self.class_names, "epochs": self.history,
            "final": self.history[-1] if self.history else None,
            "best": best if self.history else None})


def describe_run(trainer):
    """One line: the model, data, length, optimizer, loss and batch of the run."""
    c = trainer.config
    model = trainer.model
    learned = sum(model.params[n].size for n in model.trainable)
    sizes = f"{len(trainer.train_set)} train / {len(trainer.val_set)} val"
    data = (f"synthetic shapes ({sizes}, {c.image_size}x{c.image_size})" if c.data == "synthetic"
            else f"{c.data} ({sizes})")
    resumed = (f", resuming at epoch {trainer.epoch + 1} step {trainer.step_in_epoch}"
               if trainer.epoch or trainer.step_in_epoch else "")
    lars = f" (LARS {c.lars:g})" if c.lars and c.optimizer == "sgd" else ""
    loss = f"cross-entropy + {c.lovasz:g} x Lovász loss" if c.lovasz else "cross-entropy loss"
    return (f"training {c.model} (width {c.width:g}, {learned:,} learned parameters, "
            f"{trainer.num_classes} classes) on {data} for {c.epochs} epochs, "
            f"{c.optimizer} lr {c.lr:g}{lars}, {loss}, batch {c.batch_size}, seed {c.seed}{resumed}")


def train(config=None, resume=None, epochs=None, stream=None):
    """Run (or, with ``resume``, continue) a training run; returns a RunResult.

    A resumed run may be given more ``epochs``, and may run on another number of
    processes (which changes only the float rounding from there on).  Raises
    TrainingDiverged on a NaN/inf loss and TrainingInterrupted after Ctrl-C (in both
    cases the last good state is on disk).  Started by ``mpiexec``, every rank calls
    this; an error on one rank stops them all (``distributed.stop_all_on_error``).
    """
    world = join_world()
    with stop_all_on_error(world, expected=(TrainingInterrupted, TrainingDiverged)):
        if resume is not None:
            trainer = Trainer.resume(resume, epochs=epochs, stream=stream)
        else:
            trainer = Trainer(config or TrainConfig(), stream=stream)
        return trainer.run()


def _colours_of(dataset):
    """The dataset's own class colours as lists (CamVid's), or None for the VOC palette:
    kept in the checkpoint so that ``npfcn predict`` draws the classes as trained."""
    colours = getattr(dataset, "colormap", None)
    return None if colours is None else np.asarray(colours).astype(int).tolist()
