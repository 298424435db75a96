"""Per-pixel softmax cross-entropy with an ignore label and optional class weights, and
the training loss: that cross-entropy plus a weighted Lovász-softmax term (npfcn.lovasz)."""
import numpy as np

from ._checks import as_float_tensor, check_target
from .kernels import dispatch, softmax as fast_softmax
from .reference.softmax import softmax_cross_entropy_backward, softmax_cross_entropy_forward


def weight_total(target, weight=None, ignore_index=255):
    """What the mean loss divides by: the summed class weight of every counted pixel
    (the count of labels other than ``ignore_index`` when ``weight`` is None).

    target: (N, ...) integer labels; weight: (C,) or None.  Labels are not checked
    here; the loss checks them.
    """
    labels = np.asarray(target)
    valid = labels != ignore_index
    if weight is None:
        return float(np.count_nonzero(valid))
    counts = np.bincount(labels[valid].ravel().astype(np.intp), minlength=len(weight))
    return float(np.dot(counts[:len(weight)], np.asarray(weight, dtype=np.float64)))


def prior_correction(weight):
    """Score offsets (C,) that undo what class weights did to a trained network's scores.

    At a pixel whose true class probabilities are p, the weighted cross-entropy
    ``-sum_c w_c p_c log q_c`` is smallest for the softmax ``q_c = w_c p_c / sum_k w_k p_k``
    (a Lagrange multiplier for sum q = 1 gives it in one line): a network trained with
    class weights learns scores tilted by ``log w_c`` towards the classes with large
    weights - the rare ones - and its argmax draws every shape a little too large.
    Adding ``-log w_c`` to the scores before the argmax or softmax turns them back into
    estimates of p (the "logit adjustment" of Menon et al. 2021), while training keeps
    the weights' benefit: rare classes get gradient from the first step on.

    weight: (C,) class weights or None -> (C,) float64 offsets, or None (no weights, no
    tilt).  A class of weight 0 was never a target; its offset is 0.
    """
    if weight is None:
        return None
    weight = np.asarray(weight, dtype=np.float64)
    return np.where(weight > 0, -np.log(np.where(weight > 0, weight, 1.0)), 0.0)


class CrossEntropyLoss:
    """Softmax cross-entropy over the class axis of (N, C, H, W) logits (any (N, C, *) works).

    forward(logits, target) -> the loss (a Python float); target: (N, H, W) integers.
    backward(grad=1.0) -> d loss / d logits, (N, C, H, W) in the logits' dtype.

    ``reduction="mean"`` divides by the summed weights of the counted pixels
    (PyTorch's weighted mean); ``"sum"`` does not divide.  Pixels labelled
    ``ignore_index`` contribute nothing.  One deliberate difference from
    PyTorch: when every pixel is ignored the mean is 0 (with zero gradient)
    rather than NaN, so that a crop of pure void cannot stop a training run.
    """

    def __init__(self, weight=None, ignore_index=255, reduction="mean"):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if weight is not None:
            weight = np.asarray(weight)
            if weight.ndim != 1 or weight.dtype.kind not in "fiu":
                raise ValueError(f"class weight must be a 1-D array of numbers, got shape "
                                 f"{weight.shape} and dtype {weight.dtype}")
            if not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError("class weights must be finite and non-negative")
        self.weight = weight
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self._cache = None

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target, denominator=None):
        """The loss of ``logits`` (N, C, ...) against ``target`` (N, ...).

        denominator: with ``reduction="mean"``, divide by this instead of this batch's
        own weight total - a shard of a larger batch divides by the whole batch's
        (``weight_total``), so the shards' losses and gradients add up to the batch's.
        """
        logits = as_float_tensor(logits, "logits", ndim=None)
        if logits.ndim < 2:
            raise ValueError(f"logits must be (N, C, ...), got shape {logits.shape}")
        num_classes = logits.shape[1]
        if self.weight is not None and self.weight.shape != (num_classes,):
            raise ValueError(f"class weight has {self.weight.shape[0]} entries but logits have "
                             f"{num_classes} classes")
        check_target(target, logits.shape, num_classes, self.ignore_index)
        if denominator is not None and not (np.isfinite(denominator) and denominator >= 0):
            raise ValueError(f"denominator must be a finite number >= 0, got {denominator!r}")
        # The arithmetic is the reference's (npfcn/reference/softmax.py); on the C backend
        # float32 scores take csrc/softmax.c, which keeps a cache of its own.
        path = dispatch.cross_entropy_path(logits.dtype)
        forward = fast_softmax.cross_entropy_forward if path == "c" \
            else softmax_cross_entropy_forward
        loss, cache = forward(logits, target, self.weight, self.ignore_index, self.reduction,
                              denominator if self.reduction == "mean" else None)
        self._cache = (path, cache)
        return loss

    def backward(self, grad=1.0):
        """d loss / d logits = (softmax - onehot(target)) * pixel weight * scale * grad."""
        if self._cache is None:
            raise ValueError("CrossEntropyLoss.backward() called before forward()")
        (path, cache), self._cache = self._cache, None   # the gradient is built in the cache
        if path == "c":
            return fast_softmax.cross_entropy_backward(grad, cache)
        return softmax_cross_entropy_backward(grad, cache)


class SegmentationLoss:
    """What training minimises: the (class-weighted) cross-entropy plus ``lovasz`` times
    the Lovász-softmax loss (``npfcn.lovasz``), a surrogate of 1 - IoU per class.

    Cross-entropy gives every pixel a gradient from the first step and a calibrated
    softmax (which ``prior_correction`` relies on); the Lovász term weighs each pixel
    by what it costs its class's IoU, which cross-entropy cannot see.  ``lovasz=0``:
    cross-entropy alone, as the reference FCN trains.

    forward(logits, target, denominator=None, num_images=None) -> the loss (a float);
    ``denominator`` and ``num_images`` let a shard of a larger batch divide by the whole
    batch's weight total and image count (see the two losses).
    backward(grad=1.0) -> d loss / d logits.
    """

    def __init__(self, weight=None, ignore_index=255, lovasz=0.0):
        from .lovasz import LovaszSoftmaxLoss

        valid = (not isinstance(lovasz, bool) and isinstance(lovasz, (int, float))
                 and np.isfinite(lovasz) and lovasz >= 0)
        if not valid:
            raise ValueError(f"lovasz (the Lovász term's weight) must be a number >= 0, got {lovasz!r}")
        self.cross_entropy = CrossEntropyLoss(weight=weight, ignore_index=ignore_index)
        self.lovasz = float(lovasz)
        self.lovasz_loss = LovaszSoftmaxLoss(ignore_index=ignore_index) if lovasz else None
        self.ignore_index = int(ignore_index)

    @property
    def weight(self):
        return self.cross_entropy.weight

    @weight.setter
    def weight(self, weight):
        self.cross_entropy.weight = weight

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target, denominator=None, num_images=None):
        loss = self.cross_entropy.forward(logits, target, denominator=denominator)
        if self.lovasz_loss is not None:
            loss += self.lovasz * self.lovasz_loss.forward(logits, target, num_images=num_images)
        return loss

    def backward(self, grad=1.0):
        dlogits = self.cross_entropy.backward(grad)
        if self.lovasz_loss is not None:
            dlogits += self.lovasz_loss.backward(self.lovasz * grad)
        return dlogits
