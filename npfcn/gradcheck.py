"""Numerical gradient checking (float64 central differences).

``gradcheck(module, inputs)`` compares a module's analytic gradients - of every
float input and every parameter - with central differences of the scalar
``sum(forward(*inputs) * r)`` for a fixed random projection ``r`` (or of the
loss itself for a loss module).  It reports, per tensor, the worst error::

    error = max_i |analytic_i - numeric_i| / max(max_i |numeric_i|, max_i |analytic_i|)

i.e. the largest deviation relative to that tensor's gradient scale, which
stays meaningful for elements whose gradient is (near) zero.  With eps=1e-6 in
float64 a correct backward pass gives errors around 1e-9..1e-10 (the
truncation error is O(eps^2), the rounding error O(1e-16/eps) relative);
anything above ~1e-6 is a real mismatch.

Randomness: if the module has an ``rng`` attribute (dropout), its state is
restored before every forward pass so that all evaluations see the same mask.
"""
import copy
from dataclasses import dataclass, field

import numpy as np


@dataclass
class GradcheckReport:
    """Worst relative error per tensor (``"input0"``, ``"weight"``, ...)."""

    errors: dict = field(default_factory=dict)

    @property
    def max_error(self):
        return max(self.errors.values(), default=0.0)

    def passed(self, tol=1e-6):
        return self.max_error <= tol

    def assert_ok(self, tol=1e-6):
        bad = {k: v for k, v in self.errors.items() if not v <= tol}
        if bad:
            raise AssertionError(f"gradient check failed (tolerance {tol:g}): " +
                                 ", ".join(f"{k}: {v:.3g}" for k, v in bad.items()))

    def __str__(self):
        width = max((len(k) for k in self.errors), default=6)
        lines = [f"{'tensor':<{width}}  worst relative error"]
        lines += [f"{k:<{width}}  {v:.3e}" for k, v in self.errors.items()]
        return "\n".join(lines)


def relative_error(analytic, numeric):
    """max |a - n| / max(|n|_max, |a|_max); 0 when both are all zero; inf for shapes that differ."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:   # broadcasting would hide a wrong-shaped gradient
        return float("inf")
    scale = max(np.abs(numeric).max(initial=0.0), np.abs(analytic).max(initial=0.0))
    diff = np.abs(analytic - numeric).max(initial=0.0)
    if scale == 0.0:
        return float(diff)
    return float(diff / scale)


def numerical_gradient(objective, array, eps=1e-6):
    """Central differences of the scalar ``objective()`` with respect to ``array`` (in place)."""
    grad = np.zeros(array.shape, dtype=np.float64)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        flat[i] = original + eps
        plus = objective()
        flat[i] = original - eps
        minus = objective()
        flat[i] = original
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(module, inputs, eps=1e-6, seed=0, params=True):
    """Check ``module.backward`` against central differences; returns a GradcheckReport.

    inputs: a tuple of positional arguments for ``module.forward``.  Float arrays
    (which must be float64) are differentiated; other arguments (labels,
    pooling indices, sizes) are passed through unchanged.
    """
    inputs = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in inputs]
    float_inputs = [i for i, a in enumerate(inputs)
                    if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    for i in float_inputs:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs; input {i} is {inputs[i].dtype}")
    for name, p in getattr(module, "params", {}).items():
        if p.dtype != np.float64:
            raise TypeError(f"gradcheck needs a float64 module; parameter {name} is {p.dtype}")

    rng_state = _snapshot_rng(module)

    def run():
        _restore_rng(module, rng_state)
        out = module.forward(*inputs)
        return out[0] if isinstance(out, tuple) else out

    first = run()
    projection = (np.random.default_rng(seed).standard_normal(np.shape(first))
                  if np.ndim(first) else 1.0)

    def objective():
        return float(np.sum(np.asarray(run(), np.float64) * projection))

    # Analytic gradients from one forward + backward.
    if hasattr(module, "zero_grad"):
        module.zero_grad()
    run()
    input_grads = module.backward(projection)
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    param_grads = {k: g.copy() for k, g in getattr(module, "grads", {}).items()}

    report = GradcheckReport()
    for slot, i in enumerate(float_inputs):
        numeric = numerical_gradient(objective, inputs[i], eps)
        # No gradient returned for an input (Crop's reference array, say) claims
        # that the output does not depend on it: analytic zero, checked like any other.
        analytic = input_grads[slot] if slot < len(input_grads) else np.zeros_like(numeric)
        report.errors[f"input{slot}"] = relative_error(analytic, numeric)
    if params:
        for name, p in getattr(module, "params", {}).items():
            numeric = numerical_gradient(objective, p, eps)
            report.errors[name] = relative_error(param_grads[name], numeric)
    return report


def _snapshot_rng(module):
    rng = getattr(module, "rng", None)
    return copy.deepcopy(rng.bit_generator.state) if isinstance(rng, np.random.Generator) else None


def _restore_rng(module, state):
    if state is not None:
        module.rng.bit_generator.state = copy.deepcopy(state)
