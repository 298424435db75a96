"""The training loop: progress bar, validation every epoch, atomic checkpoints, exact resume.

    from npfcn.train import TrainConfig, train
    result = train(TrainConfig(epochs=2, width=0.0625))   # writes runs/<name>/

A run folder ``<output>/<name>/`` holds

    last.npz      the newest state (every epoch, and on Ctrl-C): resume from it
    best.npz      the state with the best validation mean IoU so far
    metrics.json  per-epoch and final metrics (loss, pixel/mean accuracy, mean IoU, fwIoU, per class)
    curves.png    loss and mean IoU per epoch
    samples.png   image / truth / prediction for a few validation images

and ``<output>/latest`` points at the newest run folder (a relative symlink; a
one-line text file naming the folder where symlinks are not available).

Determinism: everything random comes from Generators seeded by ``config.seed``:
the model's initial weights and its dropout masks (``model.rng``) and the
data stream (shuffling and augmentation).  A checkpoint stores both Generators'
states, the optimizer state and the position inside the epoch, so resuming
replays exactly the batches and masks the uninterrupted run would have drawn:
same seed, same weights, bit for bit.
"""
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, load_into, save_checkpoint
from .losses import prior_correction
from .progress import ProgressBar, format_duration
from .replicas import ReplicaError

IGNORE_INDEX = 255
LAST, BEST = "last.npz", "best.npz"
INIT_CHOICES = ("he", "lsuv", "orthogonal-lsuv")
SYMMETRY_CHOICES = ("auto", "all", "mirror", "none")


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite; the last good checkpoint was kept."""


class TrainingInterrupted(Exception):
    """Raised to the caller after Ctrl-C when the state was saved (``.checkpoint``)."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainConfig:
    """Everything that defines a run.  The defaults are the ``npfcn train`` default run:
    a narrow FCN-8s trained from scratch on the synthetic shapes on two cores (see the
    README for the time and mean IoU it reaches)."""

    # model
    model: str = "fcn8s"
    width: float = 0.0625       # 4 channels in conv1 ... 256 in fc6/fc7
    learn_upsampling: bool = True   # bilinear at the start; measured +0.03 mean IoU over frozen
    scale_skips: bool = False
    dropout: float = 0.0        # the reference's 0.5 only slows a from-scratch run down
    # data
    data: str = "synthetic"
    num_train: int = 2000       # 500 seen 30 times over-fitted (train loss 0.14, val 0.23)
    # 500, not 50: the mean IoU of 50 images measures a network to about +-0.01 (the
    # default run's network: 0.847 on the first 50 of these, 0.864 on all 500), too coarse
    # to tell 0.85 from 0.86; 500 cost 4.4 s an epoch on two Zen 4 cores (with the
    # checkpoints and pictures).
    num_val: int = 500
    image_size: int = 128
    data_seed: int = 0
    # Extra SyntheticShapes arguments: 1-3 shapes of 38-64 pixels, none more than a quarter
    # hidden.  The stride-8 output draws a boundary within a few pixels, so the larger a
    # shape, the smaller the share of its pixels that boundary errors cost.  Large images
    # are cheap: FCN's padding of 100 makes every image cost about as much as a
    # (side+200)^2 one, so 128 pixels costs 1.23x what 96 does.
    synthetic_options: dict = field(default_factory=lambda: {
        "min_scale": 0.3, "max_scale": 0.5, "max_shapes": 3, "max_occlusion": 0.25})
    crop_size: int = 0          # 0: no random crop
    # Random symmetries of each training image and its mask: "mirror" (left-right, half
    # the time, as FCN trains on PASCAL VOC), "all" (one of every symmetry of the frame,
    # npfcn.data.RandomSymmetry: for classes that have no "up"), "none"; "auto" is "all"
    # for the synthetic shapes (drawn at every angle) and "mirror" for a dataset folder.
    symmetries: str = "auto"
    preprocessing: str = "unit"
    class_weighting: str = "sqrt"   # "none" or "sqrt" (weights 1/sqrt(class frequency))
    # Fade the class weights to 1 over the run (w ** (1 - step/steps)): they get a network
    # from scratch past "background everywhere" early, but a weighted loss is minimised by
    # scores tilted towards the rare classes, which draws every shape too large at the end.
    anneal_class_weights: bool = False   # measured: mean IoU 0.763 either way (5 epochs)
    # Weight of the Lovász-softmax term added to the cross-entropy (npfcn.lovasz; 0: off):
    # a surrogate of 1 - IoU, so the network spends its few channels on what the mean IoU
    # counts.  Measured (Zen 5, one core each, 12 epochs, all symmetries, mean IoU on 500
    # validation images), seeds 0 / 1 / 2 / 5: 0.876 0.871 0.867 0.849 with weight 3,
    # 0.872 0.873 0.862 0.855 with 6; on the first 50: 0.845 0.832 with 1, 0.829 0.834
    # with 0 (see the README).
    lovasz: float = 3.0
    # "he" (the model's own He normal draw), "lsuv" (that draw rescaled on data, see
    # lsuv_init) or "orthogonal-lsuv" (orthonormal draws rescaled on data: LSUV as its
    # paper defines it, see orthogonal_init).  Measured over 12 epochs, seeds 0-3, one
    # core each (Zen 3): orthogonal-lsuv 0.824 / 0.820 / 0.793 / 0.819, lsuv 0.801 /
    # 0.834 / 0.636 / 0.755 (seed 2 on a plateau at the start).  Seed 5 stalls with
    # either (0.578 at the end with orthogonal-lsuv): rarer, not cured; see the README.
    init: str = "orthogonal-lsuv"
    # optimisation
    # Seeds 0 / 1 / 2 / 5 (one core each, 500 validation images): 0.876 0.884 0.871 0.864
    # after 14 epochs, 0.876 0.871 0.867 0.849 after 12; seeds 3 / 4: 0.863 0.863 after 14.
    # Both cores, the defaults, on a 2-core Zen 4 (AMD EPYC): 8:55 and 0.876 with two
    # replicas, 12:52 and 0.877 in one process; AVX2-only machines take about twice as
    # long as a Zen 5 (see the README).
    epochs: int = 14
    batch_size: int = 2
    optimizer: str = "sgd"      # measured: SGD with momentum learns this from scratch faster than Adam
    lr: float = 0.02
    schedule: str = "poly"      # "poly" (power 0.9) or "constant"
    warmup: float = 0.0         # fraction of the run's steps over which the lr rises linearly
    clip_grad_norm: float = 5.0  # rescale the gradient to at most this global L2 norm (0: off)
    momentum: float = 0.9
    weight_decay: float = 0.0
    # LARS (layer-wise adaptive rate scaling; for SGD, as momentum is; 0: off): every
    # encoder weight tensor's step is scaled to lr * lars of its own norm
    # (npfcn.optim.SGD).  Without it the relative step per layer spans 30x - fc7, a 1x1
    # layer on a 5x5 map, moved by 2e-4 of its norm per step, conv1_2 by 5e-3 - and one
    # draw in six sat on a plateau for most of the run.  Measured (Zen 3, one core, 12
    # epochs, seeds 0-5): 0.825 0.830 0.826 0.792 0.806 0.839 against 0.824 0.820 0.793
    # 0.819 0.827 0.578 without (seed 5 the plateau); 0.05: 0.806 (seed 0), 0.776 (5).
    lars: float = 0.1
    seed: int = 0
    # Processes that share every batch (npfcn.replicas), the threads divided among them;
    # 0 (auto): one per thread, at most one per image of a batch (``replica_count``).  A
    # step of this narrow network is a chain of short kernels with NumPy and Python in
    # between, where a second thread in one process mostly waits (one process with two
    # threads used 1.4 of the 2 cores).  Measured on a 2-core Zen 4, the default run:
    # 47-76 images/s with two processes against 28-46 with one, 8:55 against 12:52 (see
    # the README).  The results depend on the count only through float rounding.
    replicas: int = 0
    # output
    output: str = "runs"
    name: str = ""
    num_samples: int = 4        # validation images in samples.png

    @classmethod
    def from_dict(cls, values):
        values = dict(values)
        if "flip" in values:    # configs saved before 2026-12-02: a left-right flip switch
            values.setdefault("symmetries", "mirror" if values.pop("flip") else "none")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**values)

    def to_dict(self):
        return asdict(self)

    def validate(self):
        from .models import MODEL_NAMES

        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "num_train": self.num_train,
                    "num_val": self.num_val, "image_size": self.image_size}
        for key, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if isinstance(self.replicas, bool) or not isinstance(self.replicas, int) or self.replicas < 0:
            raise ValueError(f"replicas must be an integer >= 0 (0: one per thread), "
                             f"got {self.replicas!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {self.lr!r}")
        if not (isinstance(self.width, (int, float)) and self.width > 0):
            raise ValueError(f"width must be a positive number, got {self.width!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("poly", "constant"):
            raise ValueError(f"schedule must be 'poly' or 'constant', got {self.schedule!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, float)) \
                or not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a fraction of the run in [0, 1), got {self.warmup!r}")
        if self.symmetries not in SYMMETRY_CHOICES:
            raise ValueError(f"symmetries must be one of {', '.join(SYMMETRY_CHOICES)}, "
                             f"got {self.symmetries!r}")
        if self.class_weighting not in ("none", "sqrt"):
            raise ValueError(f"class weighting must be 'none' or 'sqrt', got {self.class_weighting!r}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {', '.join(INIT_CHOICES)}, got {self.init!r}")
        if self.crop_size < 0:
            raise ValueError(f"crop size must be >= 0, got {self.crop_size}")
        for name in ("lars", "clip_grad_norm", "lovasz"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (0: off), got {value!r}")
        return self


# --- building blocks ------------------------------------------------------------------

def build_datasets(config):
    """(train, val) datasets for ``config.data``: "synthetic" or a dataset folder."""
    if config.data == "synthetic":
        from .data import synthetic_splits

        return synthetic_splits(train_size=config.num_train, val_size=config.num_val,
                                image_size=config.image_size, seed=config.data_seed,
                                **config.synthetic_options)
    from .data import FolderDataset, open_dataset

    train = open_dataset(config.data, "train")
    if isinstance(train, FolderDataset):
        # Classes may be inferred from the masks: make the val split agree with train.
        return train, open_dataset(config.data, "val", num_classes=train.num_classes)
    return train, open_dataset(config.data, "val")


def check_dataset(dataset, what, stream):
    """Read every item once, so a bad file stops the run before it starts (not hours into
    it); the loaders raise ValueError/FileNotFoundError naming the file."""
    bar = ProgressBar(len(dataset), f"checking {len(dataset)} {what} images", stream=stream)
    sizes = set()
    for index in range(len(dataset)):
        sizes.add(dataset[index][1].shape)
        bar.update(index + 1, 1)
    bar.clear()
    return sizes


def class_weights(dataset, num_classes, how):
    """Per-class loss weights (K,) or None.

    "sqrt": ``w_c = 1 / sqrt(f_c)`` for the pixel frequency ``f_c`` of class c in the
    training masks, scaled so the average weight per pixel is 1.  Mean IoU counts
    every class equally while the pixels are mostly background; without weights the
    loss is dominated by background and a network from scratch first spends hundreds
    of steps predicting background everywhere.  The square root is the gentler
    version of SegNet's median-frequency balancing (which over-predicts small classes).
    """
    if how == "none":
        return None
    counts = np.zeros(num_classes, dtype=np.int64)
    for index in range(len(dataset)):
        _, mask = dataset[index]
        counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
    frequency = counts / max(counts.sum(), 1)
    weights = np.where(frequency > 0, 1.0 / np.sqrt(np.maximum(frequency, 1e-12)), 0.0)
    return weights / float(np.sum(frequency * weights))


def orthogonal_init(model, seed):
    """Redraw every encoder convolution's weights orthonormal (``npfcn.init.orthogonal``),
    the first step of LSUV as Mishkin & Matas define it; lsuv_init then rescales them.
    Only the directions matter: with zero biases a ReLU layer's output scales with its
    weights, so LSUV's rescaling undoes any scale drawn here.

    The draws come from their own stream of the seed ([seed, 99]; the data use [seed, 1])
    so that they do not shift any other random sequence of the run.
    """
    from .init import orthogonal

    rng = np.random.default_rng([int(seed), 99])
    for conv in model.encoder.convs.values():
        weight = conv.params["weight"]
        weight[...] = orthogonal(weight.shape, rng, weight.dtype)


def lsuv_init(model, x):
    """Data-dependent rescaling of the encoder's freshly drawn convolutions, He normal or
    orthonormal (LSUV, Mishkin & Matas 2016): in forward order, divide each
    convolution's weights by the standard deviation of its output on the batch ``x``, so
    every layer starts with unit-variance outputs on real images.  A deep plain ReLU
    stack without batch normalisation then starts learning far sooner.  Runs in eval
    mode (no dropout masks drawn, so the model's random stream is untouched).
    """
    from .layers import Conv2d

    was_training = model.training
    model.eval()
    h = x
    for _, module in model.encoder.steps:
        if isinstance(module, Conv2d):
            y = module.forward(h)
            std = float(y.std())
            if std > 0 and np.isfinite(std):
                module.params["weight"] /= module.params["weight"].dtype.type(std)
            y = module.forward(h)
        else:
            y = module.forward(h)
        module._cache = None        # no backward follows: drop what forward kept for it
        h = y
    model.train(was_training)


def build_transform(config):
    """The training augmentation: optional random crop, then random symmetries."""
    from .data import Compose, RandomCrop, RandomHorizontalFlip, RandomSymmetry

    steps = []
    if config.crop_size:
        steps.append(RandomCrop(config.crop_size))
    symmetries = config.symmetries
    if symmetries == "auto":
        symmetries = "all" if config.data == "synthetic" else "mirror"
    if symmetries == "all":
        steps.append(RandomSymmetry())
    elif symmetries == "mirror":
        steps.append(RandomHorizontalFlip())
    return Compose(steps) if steps else None


def build_model_for(config, num_classes):
    from .models import build_model

    return build_model(config.model, num_classes=num_classes, width=config.width,
                       learn_upsampling=config.learn_upsampling, scale_skips=config.scale_skips,
                       dropout=config.dropout, seed=config.seed)


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


def build_optimizer(config, model):
    from .optim import SGD, Adam

    if config.optimizer == "adam":
        return Adam(model, lr=config.lr, weight_decay=config.weight_decay)
    # LARS for the encoder's weights only: biases start at 0 and so do the score layers
    # (a trust ratio |w| / |grad| of 0 would keep them there), and the upsampling
    # kernels start as a fixed interpolation, not a learned feature.
    encoder_weights = [f"{name}.weight" for name in model.encoder.convs]
    return SGD(model, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
               trust_coefficient=config.lars, layerwise=encoder_weights)


def build_schedule(config, total_steps):
    """schedule(global step) -> learning rate for a run of ``total_steps`` steps."""
    from .optim import constant_lr, linear_warmup, poly_lr

    if config.schedule == "poly":
        schedule = poly_lr(config.lr, total_steps, power=0.9)
    else:
        schedule = constant_lr(config.lr)
    if config.warmup:
        schedule = linear_warmup(schedule, max(1, round(config.warmup * total_steps)))
    return schedule


def clip_gradients(model, max_norm):
    """Scale every trainable gradient by ``max_norm / norm`` when their global L2 norm
    (over all of them together) exceeds ``max_norm``; returns the norm before clipping.

    Without batch normalisation a plain network trained from scratch with SGD sees rare
    gradient spikes (measured on the default run: median norm ~2, occasional 10-20) that
    throw the weights back; clipping only the spikes keeps the direction of every step.
    """
    # Each squared norm as a BLAS dot product (float32 sums in vector lanes: far more
    # accurate than a threshold needs, and no float64 copy of every gradient per step).
    total = sum(float(np.vdot(model.grads[name], model.grads[name])) for name in model.trainable)
    norm = math.sqrt(total)
    if max_norm and norm > max_norm:
        factor = max_norm / norm
        for name in model.trainable:
            model.grads[name] *= model.grads[name].dtype.type(factor)
    return norm


def data_rng(seed):
    """The Generator behind shuffling and augmentation; separate from the model's."""
    return np.random.default_rng([int(seed), 1])


def rng_state(rng):
    return rng.bit_generator.state


def set_rng_state(rng, state):
    rng.bit_generator.state = state


# --- the run folder ---------------------------------------------------------------------

def new_run_dir(output, name, model):
    """Create ``output/name`` (a fresh timestamped name when ``name`` is empty)."""
    if not name:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name, suffix = f"{model}-{stamp}", 1
        while os.path.exists(os.path.join(output, name)):
            suffix += 1
            name = f"{model}-{stamp}-{suffix}"
    run_dir = os.path.join(output, name)
    if os.path.exists(os.path.join(run_dir, LAST)):
        raise ValueError(f"run folder {run_dir} already holds a checkpoint; continue it with "
                         f"--resume {run_dir} or choose another --name")
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


def point_latest(output, run_dir):
    """Make ``output/latest`` point at ``run_dir``: a relative symlink, swapped atomically;
    where symlinks are not possible, a one-line text file naming the folder."""
    link = os.path.join(output, "latest")
    target = os.path.relpath(run_dir, output)
    tmp = os.path.join(output, f".latest.tmp-{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if os.path.isdir(link) and not os.path.islink(link):
            return  # a real folder named "latest" (a run called so): leave it alone
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(target + "\n")
        os.replace(tmp, link)


def resolve_checkpoint(path, prefer=BEST):
    """A checkpoint file from a file, a run folder (its ``prefer`` checkpoint, else the
    other one) or the ``latest`` pointer (symlink or text file)."""
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.getsize(path) < 4096 and not _is_zip(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            pointed = os.path.join(os.path.dirname(path), handle.read().strip())
        if os.path.isdir(pointed):
            path = pointed
    if os.path.isdir(path):
        for name in (prefer, LAST if prefer == BEST else BEST):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"no checkpoint ({BEST} or {LAST}) in folder {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _is_zip(path):
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


# --- Ctrl-C ---------------------------------------------------------------------------

class StopRequest:
    """Turns the first Ctrl-C into a request to stop after the current step.

    The loop polls ``requested``; a second Ctrl-C raises KeyboardInterrupt at
    once.  Only the main thread can install signal handlers; elsewhere this does
    nothing and a KeyboardInterrupt is handled by the loop itself.
    """

    def __init__(self, stream):
        self.requested = False
        self.stream = stream
        self.previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.stream.write("\nCtrl-C: stopping after this step and saving a checkpoint "
                          "(press Ctrl-C again to abort without saving)\n")
        self.stream.flush()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


# --- the loop -------------------------------------------------------------------------

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
        self.stream = sys.stderr if stream is None else stream
        self.train_set, self.val_set = build_datasets(config)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise ValueError(f"dataset {config.data} has an empty train or val split")
        if config.data != "synthetic":
            sizes = check_dataset(self.train_set, "training", self.stream)
            check_dataset(self.val_set, "validation", self.stream)
            if len(sizes) > 1 and config.batch_size > 1 and not config.crop_size:
                raise ValueError(f"the training images in {config.data} differ in size; "
                                 "use --crop-size N (random crops) or --batch-size 1")
        self.class_names = list(self.train_set.class_names)
        self.num_classes = len(self.class_names)
        self.transform = build_transform(config)
        self.model = build_model_for(config, self.num_classes)
        if config.init == "orthogonal-lsuv":
            orthogonal_init(self.model, config.seed)
        if config.init in ("lsuv", "orthogonal-lsuv"):
            # The first (up to 8) training images in order; images of mixed sizes (a folder
            # dataset without --crop-size) cannot share a batch, so then only the first.
            # No random draw: the data stream stays untouched.
            from .data import RandomCrop, iterate_batches

            same_size = config.data == "synthetic" or config.crop_size
            crop = RandomCrop(config.crop_size) if config.crop_size else None
            x, _ = next(iterate_batches(self.train_set, min(len(self.train_set), 8 if same_size else 1),
                                        transform=crop, preprocessing=config.preprocessing))
            lsuv_init(self.model, x)
        self.optimizer = build_optimizer(config, self.model)
        self.data_rng = data_rng(config.seed)
        self.steps_per_epoch = math.ceil(len(self.train_set) / config.batch_size)
        self.schedule = build_schedule(config, config.epochs * self.steps_per_epoch)
        self.class_weights = class_weights(self.train_set, self.num_classes, config.class_weighting)
        self.replica_group = None    # a ReplicaGroup while run() trains
        self.val_batch_size = config.batch_size if config.data == "synthetic" else 1
        # Progress: completed epochs, steps into the current one, and that epoch's running sums.
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.epoch_start_rng = rng_state(self.data_rng)
        # The dropout Generator's state after the last completed step (a step interrupted
        # halfway may already have drawn masks from it).
        self.dropout_state = rng_state(self.model.rng)
        self.running = {"loss_sum": 0.0, "batches": 0, "images": 0}
        self.history, self.best_mean_iou, self.best_epoch = [], -1.0, 0
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

    # -- resuming ------------------------------------------------------------------------
    @classmethod
    def resume(cls, path, epochs=None, stream=None, replicas=None):
        """A Trainer that continues the run saved in ``path`` (a checkpoint or run folder)."""
        path = resolve_checkpoint(path, prefer=LAST)
        checkpoint = load_checkpoint(path)
        meta = checkpoint.meta
        saved = (meta.get("config") or {}).get("train")
        if not isinstance(saved, dict) or "rng" not in meta:
            raise CheckpointError(f"{path} is not a training checkpoint (no training state); "
                                  "only checkpoints written by `npfcn train` can be resumed")
        # Runs saved before LARS and the Lovász term existed trained without them:
        # resume them so.
        config = TrainConfig.from_dict({"lars": 0.0, "lovasz": 0.0, **saved})
        if epochs is not None:
            config.epochs = epochs
        if replicas is not None:
            config.replicas = replicas
        trainer = cls(config, stream=stream, run_dir=os.path.dirname(os.path.abspath(path)))
        load_into(checkpoint, trainer.model, trainer.optimizer)
        trainer.dropout_state = meta["rng"]["dropout"]
        set_rng_state(trainer.model.rng, trainer.dropout_state)
        trainer.epoch_start_rng = meta["rng"]["data"]
        set_rng_state(trainer.data_rng, trainer.epoch_start_rng)
        trainer.epoch = int(meta["epoch"])
        trainer.step_in_epoch = int(meta["step_in_epoch"])
        trainer.global_step = int(meta["global_step"])
        trainer.running = dict(meta["running"])
        trainer.history = list(meta.get("history", []))
        trainer.best_mean_iou = float(meta.get("best_mean_iou", -1.0))
        trainer.best_epoch = int(meta.get("best_epoch", 0))
        return trainer

    # -- checkpoints ---------------------------------------------------------------------
    def meta(self, status):
        offset = self.score_offset
        return {
            "config": {"model": dict(self.model.config), "train": self.config.to_dict()},
            "class_names": self.class_names,
            "preprocessing": self.config.preprocessing,
            "score_offset": None if offset is None else offset.tolist(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "rng": {"dropout": self.dropout_state, "data": self.epoch_start_rng},
            "running": dict(self.running),
            "history": self.history,
            "best_mean_iou": self.best_mean_iou, "best_epoch": self.best_epoch,
            "status": status,
        }

    def save(self, name, status):
        path = os.path.join(self.run_dir, name)
        save_checkpoint(path, self.model, self.optimizer, self.meta(status))
        return path

    def _check_finite_weights(self, epoch, step):
        for name, value in self.model.params.items():
            if not np.all(np.isfinite(value)):
                raise TrainingDiverged(self._diverged_message(
                    f"weight {name} became NaN or infinite", epoch, step))

    def _diverged_message(self, what, epoch, step):
        last = os.path.join(self.run_dir, LAST)
        kept = (f"the last good checkpoint {last} was kept" if os.path.exists(last)
                else "no checkpoint had been written yet")
        return (f"{what} at epoch {epoch}, step {step} (global step {self.global_step + 1}); "
                f"training stopped and {kept} (try a lower --lr)")

    # -- running -------------------------------------------------------------------------
    def run(self):
        config = self.config
        if self.run_dir is None:
            self.run_dir = new_run_dir(config.output, config.name, config.model)
        output = os.path.dirname(os.path.abspath(self.run_dir))
        point_latest(output, self.run_dir)
        self._announce()
        started = time.perf_counter()
        status = "complete"
        with StopRequest(self.stream) as stop, self._start_replicas() as self.replica_group:
            while self.epoch < config.epochs:
                with self.replica_group.training_threads():
                    finished = self._train_epoch(stop)
                if not finished:
                    status = "interrupted"
                    break
                self._end_epoch()
                if stop.requested:
                    status = "interrupted" if self.epoch < config.epochs else "complete"
                    break
        self.replica_group = None
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

    def _start_replicas(self):
        """The processes that share each batch (just this one when ``replicas`` is 1)."""
        from functools import partial

        from .replicas import ReplicaGroup

        return ReplicaGroup(self.model, partial(build_model_for, self.config, self.num_classes),
                            replicas=self.replicas, ignore_index=IGNORE_INDEX,
                            lovasz=self.config.lovasz)

    @property
    def replicas(self):
        """The number of processes this run's steps use (see ``replica_count``)."""
        from .replicas import current_threads

        return replica_count(self.config, current_threads())

    def _say(self, text):
        self.stream.write(text + "\n")
        self.stream.flush()

    def _announce(self):
        c = self.config
        learned = sum(self.model.params[n].size for n in self.model.trainable)
        data = (f"synthetic shapes ({len(self.train_set)} train / {len(self.val_set)} val, "
                f"{c.image_size}x{c.image_size})" if c.data == "synthetic"
                else f"{c.data} ({len(self.train_set)} train / {len(self.val_set)} val)")
        resumed = (f", resuming at epoch {self.epoch + 1} step {self.step_in_epoch}"
                   if self.epoch or self.step_in_epoch else "")
        self._say(f"training {c.model} (width {c.width:g}, {learned:,} learned parameters, "
                  f"{self.num_classes} classes) on {data} for {c.epochs} epochs, "
                  f"{c.optimizer} lr {c.lr:g}{f' (LARS {c.lars:g})' if c.lars and c.optimizer == 'sgd' else ''}, "
                  f"{f'cross-entropy + {c.lovasz:g} x Lovász loss' if c.lovasz else 'cross-entropy loss'}, "
                  f"batch {c.batch_size}, seed {c.seed}{resumed}")
        replicas = self.replicas
        if replicas > 1:
            self._say(f"{replicas} processes share every batch (--replicas)")
        self._say(f"writing {self.run_dir}/ (checkpoints, metrics.json, curves.png, samples.png)")

    def _train_epoch(self, stop):
        """Train the rest of the current epoch; False if stopped by Ctrl-C (state saved)."""
        config, model = self.config, self.model
        epoch_number = self.epoch + 1
        # Replay the epoch's data stream from its start, skipping the batches already
        # trained on: this draws the same order and augmentations as an uninterrupted run.
        set_rng_state(self.data_rng, self.epoch_start_rng)
        batches = iterate_batches_for(self, config)
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
                loss = self.replica_group.forward_backward(x, y, self.class_weights_at(self.global_step))
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
                if stop.requested:
                    bar.clear()
                    self._check_finite_weights(epoch_number, step)
                    self.save(LAST, "interrupted")
                    return False
        except (KeyboardInterrupt, ReplicaError) as exc:
            # KeyboardInterrupt: only reached without the signal handler (not the main
            # thread) or on a second Ctrl-C.  ReplicaError: a helper process failed or was
            # killed (out of memory?) during a step.  Before the optimizer step the weights
            # are those of the last completed step, which the counters describe; during it
            # they may be half-updated.
            bar.clear()
            if updating:
                raise
            self._check_finite_weights(epoch_number, self.step_in_epoch)
            last = self.save(LAST, "interrupted")
            if isinstance(exc, KeyboardInterrupt):
                return False
            raise ReplicaError(f"{exc}; the state after step {self.step_in_epoch} of epoch "
                               f"{epoch_number} was saved in {last}: continue with `npfcn train "
                               f"--resume {self.run_dir}` (add --replicas 1 to train in one "
                               f"process)") from exc
        self._bar = bar
        return True

    def _end_epoch(self):
        """Validate, record the metrics, write the checkpoints and pictures."""
        config = self.config
        epoch_number = self.epoch + 1
        self._check_finite_weights(epoch_number, self.step_in_epoch)
        seconds = time.perf_counter() - self._bar.start
        self._bar.status(f"validating on {len(self.val_set)} images...")
        evaluation = self.validate()
        record = {"epoch": epoch_number, "lr": float(self.optimizer.lr),
                  "train_loss": self.running["loss_sum"] / max(self.running["batches"], 1),
                  "val_loss": evaluation.loss, **evaluation.metrics,
                  "train_seconds": seconds,
                  "images_per_second": self.running["images"] / max(seconds, 1e-9)}
        self.history.append(_jsonable(record))
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
        self._write_pictures()
        self._write_metrics("running")
        self._bar.close(
            f"epoch {epoch_number}/{config.epochs}  loss {record['train_loss']:.4f}  "
            f"val loss {record['val_loss']:.4f}  pixel acc {record['pixel_accuracy']:.4f}  "
            f"mean IoU {record['mean_iou']:.4f}{' (best)' if improved else ''}  "
            f"{record['images_per_second']:.1f} img/s  {format_duration(seconds)}")

    def validate(self):
        from .evaluate import evaluate

        return evaluate(self.model, self.val_set, batch_size=self.val_batch_size,
                        preprocessing=self.config.preprocessing, class_names=self.class_names,
                        score_offset=self.score_offset)

    def _write_pictures(self):
        from .evaluate import sample_grid
        from .viz import plot_curves, save_png

        count = min(self.config.num_samples, len(self.val_set))
        if count:
            grid = sample_grid(self.model, self.val_set, range(count), self.config.preprocessing,
                               self.score_offset)
            save_png(os.path.join(self.run_dir, "samples.png"), grid)
        plot_curves(self.history, os.path.join(self.run_dir, "curves.png"))

    def _write_metrics(self, status):
        document = {
            "status": status,
            "config": {"model": dict(self.model.config), "train": self.config.to_dict()},
            "class_names": self.class_names,
            "epochs": self.history,
            "final": self.history[-1] if self.history else None,
            "best": {"epoch": self.best_epoch, "mean_iou": self.best_mean_iou} if self.history else None,
        }
        path = os.path.join(self.run_dir, "metrics.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
        os.replace(tmp, path)


def iterate_batches_for(trainer, config):
    from .data import iterate_batches

    return iterate_batches(trainer.train_set, config.batch_size, rng=trainer.data_rng,
                           transform=trainer.transform, preprocessing=config.preprocessing,
                           drop_last=False)


def _jsonable(value):
    """NumPy scalars -> Python numbers, NaN -> None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def train(config=None, resume=None, epochs=None, stream=None, replicas=None):
    """Run (or, with ``resume``, continue) a training run; returns a RunResult.

    A resumed run may be given more ``epochs`` and another number of ``replicas``
    (which changes only the float rounding from there on).
    Raises TrainingDiverged on a NaN/inf loss, TrainingInterrupted after Ctrl-C and
    ReplicaError when a helper process fails (in each case the last good state is on disk).
    """
    if resume is not None:
        trainer = Trainer.resume(resume, epochs=epochs, stream=stream, replicas=replicas)
    else:
        trainer = Trainer(config or TrainConfig(), stream=stream)
    return trainer.run()
