"""Optimizers (SGD with momentum, Adam) and learning-rate schedules.

An optimizer updates ``model.params[name]`` in place for every name in
``model.trainable``, from ``model.grads[name]``, with PyTorch's update rules
(``torch.optim.SGD`` / ``torch.optim.Adam``).  Weight decay is L2 added to the
gradient and, as in the reference FCN (``decay_mult: 0``), never applied to
biases (names ending ``.bias``).
"""
import math

import numpy as np


def _check_number(value, name, low=0.0, low_inclusive=True, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or (value == low and not low_inclusive) or (high is not None and value >= high):
        bounds = f"{'[' if low_inclusive else '('}{low:g}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {bounds}, got {value!r}")
    return value


def decays(name):
    """Whether weight decay applies to a parameter: weights yes, biases no."""
    return not name.endswith(".bias")


class Optimizer:
    """Shared machinery: the model, ``lr``, per-parameter state, state_dict round trip."""

    KIND = None
    HYPERPARAMETERS = ()       # scalar attributes saved in the state dict besides lr and steps
    BUFFERS = ()               # per-parameter arrays, saved as "<buffer>.<param name>"

    def __init__(self, model, lr):
        for attribute in ("params", "grads", "trainable"):
            if not hasattr(model, attribute):
                raise TypeError(f"optimizer needs a model with params, grads and trainable; "
                                f"{type(model).__name__} has no {attribute!r}")
        self.model = model
        self.lr = lr
        self.steps = 0
        self.names = list(model.trainable)
        self.state = {buffer: {name: np.zeros_like(model.params[name]) for name in self.names}
                      for buffer in self.BUFFERS}

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_number(value, "learning rate", 0.0)

    def step(self):
        """One update of every trainable parameter from its accumulated gradient."""
        self.steps += 1
        for name in self.names:
            self._update(name, self.model.params[name], self.model.grads[name])

    def _update(self, name, param, grad):  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self):
        """``{"kind", "lr", "steps", hyperparameters..., "<buffer>.<param>": array}`` (copies)."""
        state = {"kind": self.KIND, "lr": self.lr, "steps": self.steps}
        state.update({h: getattr(self, h) for h in self.HYPERPARAMETERS})
        for buffer, arrays in self.state.items():
            state.update({f"{buffer}.{name}": a.copy() for name, a in arrays.items()})
        return state

    def load_state_dict(self, state):
        """Restore a ``state_dict()``; checks everything before changing anything.

        Scalars may come back as 0-d arrays (after a round trip through .npz).
        """
        kind = str(np.asarray(state.get("kind", "")))
        if kind != self.KIND:
            raise ValueError(f"optimizer state is for {kind or 'an unknown optimizer'!r}, "
                             f"not {self.KIND!r}")
        expected = {"kind", "lr", "steps", *self.HYPERPARAMETERS,
                    *(f"{b}.{n}" for b in self.BUFFERS for n in self.names)}
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(f"optimizer state does not match the model: missing "
                             f"{sorted(missing)}, unexpected {sorted(unexpected)}")
        for buffer in self.BUFFERS:
            for name in self.names:
                value, own = state[f"{buffer}.{name}"], self.state[buffer][name]
                if not isinstance(value, np.ndarray) or value.shape != own.shape:
                    raise ValueError(f"optimizer state {buffer}.{name} has shape "
                                     f"{getattr(value, 'shape', None)}, expected {own.shape}")
        scalars = {key: float(np.asarray(state[key])) for key in ("lr", *self.HYPERPARAMETERS)}
        steps = int(np.asarray(state["steps"]))
        for key, value in scalars.items():
            _check_number(value, key, 0.0)
        for buffer in self.BUFFERS:
            for name in self.names:
                self.state[buffer][name][...] = state[f"{buffer}.{name}"]
        self.lr = scalars.pop("lr")
        for key, value in scalars.items():
            setattr(self, key, value)
        self.steps = steps


_UPDATE_BLOCK = 1 << 18   # elements per block of an in-place update (1 MiB of float32)


def _blocks(*arrays):
    """Matching flat slices of same-shaped arrays, ``_UPDATE_BLOCK`` elements at a time.

    The updates below work block by block (same arithmetic, element by element)
    so that their temporaries stay in cache instead of being fresh arrays the
    size of the parameter (fc6's are 411 MB each; their page faults dominated the
    step).  The slices are views: writing into them updates the arrays.
    """
    if not all(a.flags.c_contiguous for a in arrays):
        yield arrays                      # cannot be flattened without copying: one block
        return
    flat = [a.reshape(-1) for a in arrays]
    for start in range(0, flat[0].size, _UPDATE_BLOCK):
        yield tuple(a[start:start + _UPDATE_BLOCK] for a in flat)


class SGD(Optimizer):
    """SGD with momentum and L2 weight decay (PyTorch's rule, dampening 0, no Nesterov).

        g = grad + weight_decay * p        (weights only, not biases)
        g = trust(p, grad) * g             (only the tensors named in ``layerwise``)
        v = momentum * v + g
        p = p - lr * v

    ``layerwise`` with ``trust_coefficient`` > 0 is LARS, layer-wise adaptive rate
    scaling (You, Gitman & Ginsburg 2017): each named tensor's gradient is rescaled to
    ``trust_coefficient * |p| / (|grad| + weight_decay * |p|)`` (L2 norms over the
    tensor; 1 when a norm is 0), so a step moves every such layer by the same fraction
    of its own norm, ``lr * trust_coefficient`` before momentum - whether its
    gradient is large (a layer summing over a 326x326 map) or small (fc7, 1x1 on a 5x5
    map).  The trust coefficient is configuration, like the schedule: not in the
    state dict.
    """

    KIND = "sgd"
    HYPERPARAMETERS = ("momentum", "weight_decay")

    def __init__(self, model, lr=1e-3, momentum=0.9, weight_decay=5e-4, trust_coefficient=0.0,
                 layerwise=()):
        self.momentum = _check_number(momentum, "momentum", 0.0, high=1.0)
        self.weight_decay = _check_number(weight_decay, "weight_decay", 0.0)
        self.trust_coefficient = _check_number(trust_coefficient, "trust_coefficient", 0.0)
        self.BUFFERS = ("momentum_buffer",) if self.momentum > 0 else ()
        super().__init__(model, lr)
        unknown = sorted(set(layerwise) - set(self.names))
        if unknown:
            raise ValueError(f"layerwise names {unknown} are not trainable parameters of the model")
        self.layerwise = frozenset(layerwise) if self.trust_coefficient > 0 else frozenset()

    def trust(self, name, param, grad):
        """The factor LARS scales ``name``'s gradient by (1 for the other tensors)."""
        if name not in self.layerwise:
            return 1.0
        # In the tensors' own dtype (BLAS nrm2, no float64 copy of fc6's 400k weights
        # every step): a trust ratio needs no more than float32's 7 digits.
        p_norm, g_norm = float(np.linalg.norm(param.ravel())), float(np.linalg.norm(grad.ravel()))
        decay = self.weight_decay if decays(name) else 0.0
        if p_norm == 0.0 or g_norm == 0.0:
            return 1.0
        return self.trust_coefficient * p_norm / (g_norm + decay * p_norm)

    def _update(self, name, param, grad):
        dtype = param.dtype.type
        lr, momentum = dtype(self.lr), dtype(self.momentum)
        decay = dtype(self.weight_decay if decays(name) else 0.0)
        scale = dtype(self.trust(name, param, grad))
        arrays = (param, grad) + ((self.state["momentum_buffer"][name],) if self.momentum else ())
        for p, g, *velocity in _blocks(*arrays):
            if decay:
                g = g + decay * p             # a block-sized temporary; grad stays as it is
            if scale != 1:
                g = scale * g
            if velocity:
                v = velocity[0]
                v *= momentum
                v += g
                g = v
            p -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and L2 weight decay, PyTorch's rule.

        g = grad + weight_decay * p        (weights only, not biases)
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    KIND = "adam"
    HYPERPARAMETERS = ("beta1", "beta2", "eps", "weight_decay")
    BUFFERS = ("exp_avg", "exp_avg_sq")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.beta1 = _check_number(betas[0], "beta1", 0.0, high=1.0)
        self.beta2 = _check_number(betas[1], "beta2", 0.0, high=1.0)
        self.eps = _check_number(eps, "eps", 0.0)
        self.weight_decay = _check_number(weight_decay, "weight_decay", 0.0)
        super().__init__(model, lr)

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _update(self, name, param, grad):
        dtype = param.dtype.type
        decay = dtype(self.weight_decay if decays(name) else 0.0)
        beta1, beta2, eps = dtype(self.beta1), dtype(self.beta2), dtype(self.eps)
        step_size = dtype(self.lr / (1 - self.beta1 ** self.steps))
        root_correction2 = dtype(math.sqrt(1 - self.beta2 ** self.steps))
        exp_avg, exp_avg_sq = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
        for p, g, m, v in _blocks(param, grad, exp_avg, exp_avg_sq):
            if decay:
                g = g + decay * p
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * np.square(g)
            denominator = np.sqrt(v)
            denominator /= root_correction2
            denominator += eps
            p -= step_size * (m / denominator)


def constant_lr(base_lr):
    """schedule(step) -> base_lr for every step."""
    base_lr = _check_number(base_lr, "base_lr", 0.0)
    return lambda step: base_lr


def poly_lr(base_lr, total_steps, power=0.9):
    """The "poly" policy: ``base_lr * (1 - step / total_steps) ** power``, 0 from total_steps on."""
    base_lr = _check_number(base_lr, "base_lr", 0.0)
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    power = _check_number(power, "power", 0.0)

    def schedule(step):
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        return base_lr * max(0.0, 1.0 - step / total_steps) ** power

    return schedule


def linear_warmup(schedule, warmup_steps):
    """``schedule`` with its first ``warmup_steps`` steps scaled by ``(step + 1) / warmup_steps``.

    The learning rate rises linearly from ``schedule(0) / warmup_steps`` and joins the
    schedule at step ``warmup_steps - 1``; from there on it is the schedule itself.  Small
    first steps keep a network from scratch from being thrown about while its weights
    and gradients are still far from any trained scale (Goyal et al., 2017).
    """
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) \
            or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be a positive int, got {warmup_steps!r}")
    warmup_steps = int(warmup_steps)

    def warmed(step):
        return schedule(step) * min(1.0, (step + 1) / warmup_steps)

    return warmed
