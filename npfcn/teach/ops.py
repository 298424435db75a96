"""What ``npfcn check`` knows about each operation it grades.

For every operation: the cases hypothesis draws (geometry and a seed for the
values), the inputs built from a case, and what npfcn's reference path computes
for them, forward and backward.  The student's calling conventions (CS231n's or
npfcn's) live in ``conventions.py``; this module knows nothing about them.

Values are chosen so that a correct solution can never fail on a technicality:
inputs of max pooling are distinct (0.1 apart: no ties in a window, and a central
difference with eps = 1e-6 never crosses one), inputs of ReLU stay at least 0.05
away from its kink at 0.
"""
from dataclasses import dataclass, field

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from .. import functional
from . import oracle


@dataclass
class Case:
    """One drawn case: geometry ``params`` and the arrays built from them."""
    params: dict
    inputs: dict = field(default_factory=dict)
    seed: int = 0


def rounded_normal(shape, rng, scale=1.0):
    """Normal values rounded to one decimal: short to print, no structure to exploit."""
    return np.round(rng.standard_normal(shape) * scale, 1)


def distinct(shape, rng):
    """Values 0.1 apart in random order, none within 0.05 of zero."""
    size = int(np.prod(shape, dtype=np.int64))
    return (rng.permutation(size) - (size - 1) / 2.0).reshape(shape) * 0.1 + (0.05 if size % 2 else 0.0)


def _side(draw, kernel, stride, padding, dilation, exact):
    """An input length that fits at least one window; with ``exact`` the windows tile it
    without a remainder (CS231n's formulas divide exactly)."""
    span = dilation * (kernel - 1) + 1
    out = draw(st.integers(1, 4))
    n = (out - 1) * stride + span - 2 * padding
    if not exact:
        n += draw(st.integers(0, stride - 1))
    while n < 1:
        n += stride
    return n


def _seed(draw):
    return draw(st.integers(0, 2 ** 16))


class Op:
    """One operation: ``strategy(features)`` draws a Case; ``forward``/``backward`` are npfcn's."""
    title = ""
    differentiable = ("x",)       # inputs with a gradient, in the order backward returns them

    def inputs(self, params, rng):
        raise NotImplementedError

    def strategy(self, features):
        """features: the parameters the student's signature takes (e.g. {"stride", "padding"})
        and "exact" for CS231n's exactly dividing geometry."""
        raise NotImplementedError

    def forward(self, case):
        """npfcn's outputs {name: array} and its cache."""
        raise NotImplementedError

    def backward(self, case, cache, dout):
        """npfcn's gradients {input name: array}."""
        raise NotImplementedError

    def objective(self, case, inputs, dout):
        """sum(forward(inputs) * dout): what a central difference differentiates."""
        outputs, _ = self.forward(Case(case.params, inputs, case.seed))
        return float(np.sum(outputs["out"] * dout))

    def build(self, params, seed):
        rng = np.random.default_rng(seed)
        return Case(params, self.inputs(params, rng), seed)

    def describe(self, params):
        """The case in words, leaving out parameters at their do-nothing defaults."""
        quiet = {"dilation": 1, "ceil_mode": False, "output_padding": 0}
        return ", ".join(f"{k} {v}" for k, v in params.items() if quiet.get(k, "-") != v)


class Conv(Op):
    title = "convolution"
    differentiable = ("x", "w", "b")
    reference = ("conv2d_forward", "conv2d_backward")

    def strategy(self, features):
        @st.composite
        def cases(draw):
            kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            stride = draw(st.integers(1, 3)) if "stride" in features else 1
            pad = draw(st.integers(0, 2)) if "padding" in features else 0
            dil = draw(st.integers(1, 2)) if "dilation" in features else 1
            exact = "exact" in features
            h = _side(draw, kh, stride, pad, dil, exact)
            w = _side(draw, kw, stride, pad, dil, exact)
            params = {"N": draw(st.integers(1, 2)), "C": draw(st.integers(1, 3)),
                      "F": draw(st.integers(1, 3)), "H": h, "W": w, "KH": kh, "KW": kw,
                      "stride": stride, "padding": pad, "dilation": dil}
            return self.build(params, _seed(draw))
        return cases()

    def inputs(self, p, rng):
        return {"x": rounded_normal((p["N"], p["C"], p["H"], p["W"]), rng),
                "w": rounded_normal((p["F"], p["C"], p["KH"], p["KW"]), rng),
                "b": rounded_normal((p["F"],), rng)}

    def forward(self, case):
        i, p = case.inputs, case.params
        y, cache = oracle.function(self.reference[0])(i["x"], i["w"], i["b"], p["stride"],
                                                      p["padding"], p["dilation"])
        return {"out": y}, cache

    def backward(self, case, cache, dout):
        return dict(zip(self.differentiable, oracle.function(self.reference[1])(dout, cache)))


class ConvTranspose(Conv):
    title = "transposed convolution"
    reference = ("conv_transpose2d_forward", "conv_transpose2d_backward")

    def strategy(self, features):
        @st.composite
        def cases(draw):
            k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
            stride = draw(st.integers(1, 3)) if "stride" in features else 1
            pad = draw(st.integers(0, 2)) if "padding" in features else 0
            dil = draw(st.integers(1, 2)) if "dilation" in features else 1
            out_pad = (draw(st.integers(0, max(stride, dil) - 1))
                       if "output_padding" in features else 0)
            h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
            try:                       # npfcn.functional refuses an empty or invalid output
                functional.conv_transpose2d_geometry((h, w), k, stride, pad, out_pad, dil)
            except ValueError:
                assume(False)
            params = {"N": draw(st.integers(1, 2)), "C": draw(st.integers(1, 3)),
                      "F": draw(st.integers(1, 3)), "H": h, "W": w, "KH": k[0], "KW": k[1],
                      "stride": stride, "padding": pad, "output_padding": out_pad,
                      "dilation": dil}
            return self.build(params, _seed(draw))
        return cases()

    def inputs(self, p, rng):
        return {"x": rounded_normal((p["N"], p["C"], p["H"], p["W"]), rng),
                "w": rounded_normal((p["C"], p["F"], p["KH"], p["KW"]), rng),
                "b": rounded_normal((p["F"],), rng)}

    def forward(self, case):
        i, p = case.inputs, case.params
        y, cache = oracle.function(self.reference[0])(
            i["x"], i["w"], i["b"], p["stride"], p["padding"], p["output_padding"], p["dilation"])
        return {"out": y}, cache


class MaxPool(Op):
    title = "max pooling"

    def strategy(self, features):
        @st.composite
        def cases(draw):
            kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            stride = draw(st.integers(1, 3)) if "stride" in features else kh
            if "stride" not in features:
                kw = kh            # stride defaults to the kernel: keep it one number
            pad = draw(st.integers(0, min(kh, kw) // 2)) if "padding" in features else 0
            dil = draw(st.integers(1, 2)) if "dilation" in features else 1
            ceil = draw(st.booleans()) if "ceil_mode" in features else False
            exact = "exact" in features
            h = _side(draw, kh, stride, pad, dil, exact)
            w = _side(draw, kw, stride, pad, dil, exact)
            params = {"N": draw(st.integers(1, 2)), "C": draw(st.integers(1, 2)), "H": h, "W": w,
                      "KH": kh, "KW": kw, "stride": stride, "padding": pad, "dilation": dil,
                      "ceil_mode": ceil}
            try:                      # npfcn.functional refuses windows of pure padding
                functional.max_pool2d_forward(np.zeros((1, 1, h, w)), (kh, kw), stride, pad,
                                              dil, ceil)
            except ValueError:
                assume(False)
            return self.build(params, _seed(draw))
        return cases()

    def inputs(self, p, rng):
        return {"x": distinct((p["N"], p["C"], p["H"], p["W"]), rng)}

    def forward(self, case):
        p = case.params
        y, indices, cache = oracle.function("max_pool2d_forward")(
            case.inputs["x"], (p["KH"], p["KW"]), p["stride"], p["padding"], p["dilation"],
            p["ceil_mode"])
        return {"out": y, "indices": indices}, cache

    def backward(self, case, cache, dout):
        return {"x": oracle.function("max_pool2d_backward")(dout, cache)}


class MaxUnpool(Op):
    """Unpooling with the indices of a max pooling of non-overlapping windows (stride >=
    kernel), so that no two values claim the same output pixel."""
    title = "max unpooling"

    def strategy(self, features):
        @st.composite
        def cases(draw):
            kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
            if "stride" in features:
                stride = (kh + draw(st.integers(0, 1)), kw + draw(st.integers(0, 1)))
            else:
                stride = (kh, kw)
            params = {"N": draw(st.integers(1, 2)), "C": draw(st.integers(1, 2)),
                      "H": draw(st.integers(1, 3)), "W": draw(st.integers(1, 3)),
                      "KH": kh, "KW": kw, "stride": stride}
            return self.build(params, _seed(draw))
        return cases()

    def inputs(self, p, rng):
        size = ((p["H"] - 1) * p["stride"][0] + p["KH"], (p["W"] - 1) * p["stride"][1] + p["KW"])
        image = distinct((p["N"], p["C"]) + size, rng)
        _, indices, _ = oracle.function("max_pool2d_forward")(image, (p["KH"], p["KW"]),
                                                              p["stride"])
        return {"x": rounded_normal((p["N"], p["C"], p["H"], p["W"]), rng), "indices": indices}

    def forward(self, case):
        p = case.params
        y, cache = oracle.function("max_unpool2d_forward")(
            case.inputs["x"], case.inputs["indices"], (p["KH"], p["KW"]), p["stride"])
        return {"out": y}, cache

    def backward(self, case, cache, dout):
        return {"x": oracle.function("max_unpool2d_backward")(dout, cache)}

    def describe(self, params):
        return super().describe(params) + " (indices from a max pooling of the output's size)"


class Relu(Op):
    title = "ReLU"

    def strategy(self, features):
        @st.composite
        def cases(draw):
            shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
            return self.build({"shape": shape}, _seed(draw))
        return cases()

    def inputs(self, p, rng):
        return {"x": distinct(p["shape"], rng)}

    def forward(self, case):
        y, cache = oracle.function("relu_forward")(case.inputs["x"])
        return {"out": y}, cache

    def backward(self, case, cache, dout):
        return {"x": oracle.function("relu_backward")(dout, cache)}


class SoftmaxLoss(Op):
    """Mean softmax cross-entropy of scores (N, C) (CS231n) or (N, C, H, W) (npfcn)."""
    title = "softmax cross-entropy"

    def strategy(self, features):
        @st.composite
        def cases(draw):
            spatial = () if "exact" in features else tuple(
                draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
            params = {"N": draw(st.integers(1, 5)), "C": draw(st.integers(2, 5)),
                      "spatial": spatial}
            return self.build(params, _seed(draw))
        return cases()

    def inputs(self, p, rng):
        shape = (p["N"], p["C"]) + p["spatial"]
        labels = rng.integers(0, p["C"], size=(p["N"],) + p["spatial"])
        return {"x": np.round(rng.standard_normal(shape) * 2, 2), "y": labels}

    def forward(self, case):
        loss, cache = oracle.function("softmax_cross_entropy_forward")(case.inputs["x"],
                                                                       case.inputs["y"])
        return {"loss": np.float64(loss)}, cache

    def backward(self, case, cache, dout):
        return {"x": oracle.function("softmax_cross_entropy_backward")(float(dout), cache)}

    def objective(self, case, inputs, dout):
        outputs, _ = self.forward(Case(case.params, inputs, case.seed))
        return float(outputs["loss"]) * float(dout)

    def describe(self, params):
        shape = (params["N"], params["C"]) + params["spatial"]
        return f"scores {shape}, labels {(params['N'],) + params['spatial']}"


OPS = {"conv": Conv(), "conv_transpose": ConvTranspose(), "max_pool": MaxPool(),
       "max_unpool": MaxUnpool(), "relu": Relu(), "softmax_loss": SoftmaxLoss()}
