"""``TrainConfig``: everything that defines a training run, and its validation.

The defaults are the ``npfcn train`` default run: a narrow FCN-8s trained from scratch on
the synthetic shapes (docs/training-notes.md gives the time and mean IoU it reaches and
the experiments behind each default).
"""
import math
from dataclasses import asdict, dataclass, field, fields

IGNORE_INDEX = 255
INIT_CHOICES = ("he", "lsuv", "orthogonal-lsuv")
SYMMETRY_CHOICES = ("auto", "all", "mirror", "none")
CLASS_WEIGHTING_CHOICES = ("none", "sqrt", "median")

# Settings older versions saved that no longer define the run: the number of processes
# is chosen when a run is started (``npfcn train --procs``), not stored with it.
_DROPPED = ("replicas",)


@dataclass
class TrainConfig:
    """Everything that defines a run.  The defaults are the ``npfcn train`` default run."""

    # model
    model: str = "fcn8s"
    width: float = 0.0625       # 4 channels in conv1 ... 256 in fc6/fc7
    learn_upsampling: bool = True   # bilinear at the start, then learned
    scale_skips: bool = False
    dropout: float = 0.0        # the reference's 0.5 only slows a from-scratch run down
    # data
    data: str = "synthetic"
    num_train: int = 2000       # fewer images seen more often over-fit
    # Enough validation images to tell a mean IoU of 0.85 from 0.86: the mean IoU of a
    # few dozen images scatters by about 0.01.
    num_val: int = 500
    image_size: int = 128
    scale: float = 1.0          # dataset folders: resize every image by this factor as read
    data_seed: int = 0
    # Extra SyntheticShapes arguments: 1-3 shapes of 38-64 pixels, none more than a quarter
    # hidden.  The stride-8 output draws a boundary within a few pixels, so the larger a
    # shape, the smaller the share of its pixels that boundary errors cost.  Large images
    # are cheap: FCN's padding of 100 makes every image cost about as much as a
    # (side+200)^2 one.
    synthetic_options: dict = field(default_factory=lambda: {
        "min_scale": 0.3, "max_scale": 0.5, "max_shapes": 3, "max_occlusion": 0.25})
    crop_size: int = 0          # 0: no random crop
    # Random symmetries of each training image and its mask: "mirror" (left-right, half
    # the time, as FCN trains on PASCAL VOC), "all" (one of every symmetry of the frame,
    # npfcn.data.RandomSymmetry: for classes that have no "up"), "none"; "auto" is "all"
    # for the synthetic shapes (drawn at every angle) and "mirror" for a dataset folder.
    symmetries: str = "auto"
    preprocessing: str = "unit"
    # "none", "sqrt" (weights 1/sqrt(class frequency)) or "median" (median frequency
    # balancing, as the SegNet paper trains on CamVid: npfcn.data.camvid)
    class_weighting: str = "sqrt"
    # Fade the class weights to 1 over the run (w ** (1 - step/steps)): they get a network
    # from scratch past "background everywhere" early, but a weighted loss is minimised by
    # scores tilted towards the rare classes, which draws every shape too large at the end.
    anneal_class_weights: bool = False
    # Weight of the Lovász-softmax term added to the cross-entropy (npfcn.lovasz; 0: off):
    # a surrogate of 1 - IoU, so the network spends its few channels on what the mean IoU
    # counts.
    lovasz: float = 3.0
    # "he" (the model's own He normal draw), "lsuv" (that draw rescaled on data, see
    # npfcn.init.lsuv_init) or "orthogonal-lsuv" (orthonormal draws rescaled on data: LSUV
    # as its paper defines it, see npfcn.init.orthogonal_init).  Plain He draws leave some
    # seeds on a plateau at the start.
    init: str = "orthogonal-lsuv"
    # optimisation
    epochs: int = 14
    batch_size: int = 2
    optimizer: str = "sgd"      # SGD with momentum learns this from scratch faster than Adam
    lr: float = 0.02
    schedule: str = "poly"      # "poly" (power 0.9) or "constant"
    warmup: float = 0.0         # fraction of the run's steps over which the lr rises linearly
    clip_grad_norm: float = 5.0  # rescale the gradient to at most this global L2 norm (0: off)
    momentum: float = 0.9
    weight_decay: float = 0.0
    # LARS (layer-wise adaptive rate scaling; for SGD, as momentum is; 0: off): every
    # encoder weight tensor's step is scaled to lr * lars of its own norm
    # (npfcn.optim.SGD).  Without it the relative step per layer spans 30x - fc7, a 1x1
    # layer on a 5x5 map, moves by far less of its norm per step than conv1_2 - and some
    # seeds sit on a plateau for most of the run.
    lars: float = 0.1
    seed: int = 0
    # output
    output: str = "runs"
    name: str = ""
    num_samples: int = 4        # validation images in samples.png

    @classmethod
    def from_dict(cls, values):
        """A config from a dict (a checkpoint's saved settings), old spellings translated."""
        values = dict(values)
        if "flip" in values:    # configs of older versions: a left-right flip switch
            values.setdefault("symmetries", "mirror" if values.pop("flip") else "none")
        for name in _DROPPED:
            values.pop(name, None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**values)

    def to_dict(self):
        return asdict(self)

    def validate(self):
        """Raise ValueError naming the first bad setting; returns the config."""
        from ..models import MODEL_NAMES

        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "num_train": self.num_train,
                    "num_val": self.num_val, "image_size": self.image_size}
        for key, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
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
        if self.class_weighting not in CLASS_WEIGHTING_CHOICES:
            raise ValueError(f"class weighting must be one of {', '.join(CLASS_WEIGHTING_CHOICES)}, "
                             f"got {self.class_weighting!r}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {', '.join(INIT_CHOICES)}, got {self.init!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")
        if self.crop_size < 0:
            raise ValueError(f"crop size must be >= 0, got {self.crop_size}")
        for name in ("lars", "clip_grad_norm", "lovasz"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number >= 0 (0: off), got {value!r}")
        return self
