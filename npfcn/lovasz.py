"""The Lovász-softmax loss: a surrogate of 1 - IoU that gradient descent can follow.

Mean IoU counts pixels by set: class c's IoU is |truth & prediction| / |truth | prediction|.
Cross-entropy scores each pixel on its own and cannot see that a pixel of a small or
thin region matters more to that region's IoU than one of the big background.  Berman,
Rannen Triki & Blaschko (CVPR 2018) take the Jaccard loss ``1 - IoU`` as a function of
the set of mispredicted pixels and extend it to real-valued errors by its Lovász
extension - the piecewise-linear interpolation of a submodular set function, which is
convex.  For one class c of one image, with the errors

    e_i = 1 - p_i(c)   where pixel i belongs to c,    e_i = p_i(c)   where it does not

(p the softmax), sorted so that e_(1) >= e_(2) >= ... >= e_(P):

    loss_c = sum_k e_(k) * g_k,   g_k = J(k) - J(k - 1),
    J(k) = 1 - |c minus the first k| / |c union the first k|
         = the Jaccard loss of predicting the k largest errors wrong.

When the softmax is one-hot the errors are 0 or 1 and ``loss_c`` is exactly 1 - IoU of
that prediction (tested); between, it interpolates.  Its gradient with respect to e_(k)
is g_k (the sort order is locally constant), so d loss / d p_i(c) = -g_k where pixel i
is in c and +g_k where it is not; the softmax's Jacobian takes that to the logits.

The loss here is averaged over the classes present in each image's labels (a class the
image does not show has no IoU to lose) and over the images ("per image", as the paper
trains on PASCAL VOC).  Pixels labelled ``ignore_index`` take no part.  One sort of the
image's pixels per present class: O(P log P), a few milliseconds a batch.
"""
import numpy as np

from ._checks import as_float_tensor, check_target


def jaccard_steps(in_class_sorted):
    """g (P,): the increments of the Jaccard loss along the sorted errors.

    in_class_sorted: (P,) bool, whether the pixel with the k-th largest error belongs
    to the class.  g_k = J(k) - J(k - 1) with J(0) = 0, J(k) the Jaccard loss when the
    k largest errors are the wrong pixels; every g_k >= 0 and sum(g) = J(P) = 1.
    """
    count = len(in_class_sorted)
    # Pixels of the class among the first k (the misses): counted in integers (exact, and
    # several times faster than a float cumsum of bools), then as float64 for the ratios.
    misses = np.cumsum(in_class_sorted, dtype=np.int64).astype(np.float64)
    total = misses[-1] if count else 0.0
    intersection = total - misses                       # class pixels not yet wrong
    union = np.arange(1.0, count + 1.0)                 # k pixels claimed wrong ...
    union += total - misses                             # ... plus the class's untouched ones
    jaccard = 1.0 - intersection / union                # union >= 1: k >= 1
    steps = np.empty(count, dtype=np.float64)
    steps[:1] = jaccard[:1]
    np.subtract(jaccard[1:], jaccard[:-1], out=steps[1:])
    return steps


def lovasz_softmax(prob, target, ignore_index=255):
    """Per-image Lovász-softmax losses and their gradient with respect to ``prob``.

    prob: (N, C, H, W) softmax probabilities; target: (N, H, W) labels in [0, C) or
    ``ignore_index`` (not checked here) -> (losses (N,) float64, dprob (N, C, H, W) in
    prob's dtype), dprob the gradient of ``losses.sum()``.  An image without a counted
    pixel has loss 0 and zero gradient.
    """
    n_images, n_classes = prob.shape[:2]
    losses = np.zeros(n_images)
    dprob = np.zeros_like(prob)
    for n in range(n_images):
        labels = target[n].reshape(-1)
        counted = labels != ignore_index
        # A slice where every pixel counts (the usual case): views, not gathered copies.
        pixels = slice(None) if counted.all() else np.flatnonzero(counted)
        labels = labels[pixels]
        present = np.flatnonzero(np.bincount(labels.astype(np.intp), minlength=n_classes))
        p_image = prob[n].reshape(n_classes, -1)
        d_image = dprob[n].reshape(n_classes, -1)        # a view: writes land in dprob
        for c in present:
            in_class = (labels == c).astype(prob.dtype)   # 1 in the class, 0 outside
            errors = np.abs(in_class - p_image[c, pixels])
            order = np.argsort(errors)[::-1]              # largest error first
            steps = jaccard_steps(in_class[order] > 0) / len(present)
            # einsum, not np.dot: a BLAS dot of mixed dtypes takes a slow path, and a
            # threaded one waits for a busy core (0.8 ms instead of 6 us, measured)
            losses[n] += float(np.einsum("i,i->", errors[order], steps))
            d_errors = np.empty(len(steps), dtype=prob.dtype)
            d_errors[order] = steps
            # e = 1 - p in the class, p outside it: de/dp = -1 and +1
            d_image[c, pixels] = d_errors * (1 - 2 * in_class)
    return losses, dprob


def softmax(logits):
    """Softmax over axis 1 of (N, C, ...), stabilised by the per-pixel maximum."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    exp /= exp.sum(axis=1, keepdims=True)
    return exp


class LovaszSoftmaxLoss:
    """The Lovász-softmax loss of (N, C, H, W) logits, averaged over the images.

    forward(logits, target, num_images=None) -> the loss (a Python float).
    backward(grad=1.0) -> d loss / d logits, (N, C, H, W) in the logits' dtype.

    num_images: divide the summed per-image losses by this instead of N - a shard of a
    larger batch divides by the whole batch's image count, so the shards' losses and
    gradients add up to the batch's (as ``CrossEntropyLoss``'s ``denominator``).
    """

    def __init__(self, ignore_index=255):
        self.ignore_index = int(ignore_index)
        self._cache = None

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target, num_images=None):
        logits = as_float_tensor(logits, "logits", ndim=4)
        check_target(target, logits.shape, logits.shape[1], self.ignore_index)
        if num_images is None:
            num_images = len(logits)
        elif not (isinstance(num_images, (int, np.integer)) and num_images >= len(logits)):
            raise ValueError(f"num_images must be an integer of at least the {len(logits)} "
                             f"images given, got {num_images!r}")
        prob = softmax(logits)
        losses, dprob = lovasz_softmax(prob, target, self.ignore_index)
        scale = 1.0 / num_images if num_images else 0.0
        self._cache = (prob, dprob, scale)
        return float(losses.sum()) * scale

    def backward(self, grad=1.0):
        """Through the softmax: dz = p * (dp - sum_c p_c dp_c), times scale and grad."""
        if self._cache is None:
            raise ValueError("LovaszSoftmaxLoss.backward() called before forward()")
        prob, dprob, scale = self._cache
        self._cache = None
        dlogits = dprob
        dlogits -= (prob * dprob).sum(axis=1, keepdims=True)
        dlogits *= prob
        dlogits *= dlogits.dtype.type(scale * grad)
        return dlogits
