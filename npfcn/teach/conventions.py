"""The function names ``npfcn check`` recognises and how each one is called.

Two conventions: the names and signatures of CS231n's assignment 2 (``layers.py``),
and npfcn's own (``npfcn.functional`` / ``npfcn.reference``), so that a student who
follows npfcn's reference path can grade their version of it.  ``relu_forward`` and
``relu_backward`` mean the same in both.

Each entry says which operation it is (``ops.OPS``), whether it is a forward pass,
a backward pass (and which forward pass makes its cache) or a loss returning its
gradient too, how to call it on a case, and how to read what it returns.
"""
import inspect
from dataclasses import dataclass

CS231N = "CS231n assignment 2"
NPFCN = "npfcn"


@dataclass(frozen=True)
class Entry:
    name: str
    convention: str
    op: str                 # key of ops.OPS
    role: str               # "forward", "backward" or "loss"
    returns: tuple          # names of the returned values; "cache" is the cache
    forward: str = None     # for a backward pass: the forward pass that makes its cache
    features: tuple = ()    # geometry the convention has ("exact": CS231n's exact division)
    keywords: tuple = ()    # npfcn style: parameters passed by keyword when the signature has them


def _cs231n(name, op, role, returns, forward=None, features=("exact",)):
    return Entry(name, CS231N, op, role, returns, forward, features)


def _npfcn(name, op, role, returns, forward=None, keywords=()):
    return Entry(name, NPFCN, op, role, returns, forward, (), keywords)


ENTRIES = [
    _cs231n("conv_forward_naive", "conv", "forward", ("out", "cache"),
            features=("exact", "stride", "padding")),
    _cs231n("conv_backward_naive", "conv", "backward", ("x", "w", "b"), "conv_forward_naive",
            features=("exact", "stride", "padding")),
    _cs231n("max_pool_forward_naive", "max_pool", "forward", ("out", "cache"),
            features=("exact", "stride")),
    _cs231n("max_pool_backward_naive", "max_pool", "backward", ("x",), "max_pool_forward_naive",
            features=("exact", "stride")),
    _cs231n("relu_forward", "relu", "forward", ("out", "cache")),
    _cs231n("relu_backward", "relu", "backward", ("x",), "relu_forward"),
    _cs231n("softmax_loss", "softmax_loss", "loss", ("loss", "x")),
    _npfcn("conv2d_forward", "conv", "forward", ("out", "cache"),
           keywords=("stride", "padding", "dilation")),
    _npfcn("conv2d_backward", "conv", "backward", ("x", "w", "b"), "conv2d_forward"),
    _npfcn("conv_transpose2d_forward", "conv_transpose", "forward", ("out", "cache"),
           keywords=("stride", "padding", "output_padding", "dilation")),
    _npfcn("conv_transpose2d_backward", "conv_transpose", "backward", ("x", "w", "b"),
           "conv_transpose2d_forward"),
    _npfcn("max_pool2d_forward", "max_pool", "forward", ("out", "indices", "cache"),
           keywords=("stride", "padding", "dilation", "ceil_mode")),
    _npfcn("max_pool2d_backward", "max_pool", "backward", ("x",), "max_pool2d_forward"),
    _npfcn("max_unpool2d_forward", "max_unpool", "forward", ("out", "cache"),
           keywords=("stride",)),
    _npfcn("max_unpool2d_backward", "max_unpool", "backward", ("x",), "max_unpool2d_forward"),
    _npfcn("softmax_cross_entropy_forward", "softmax_loss", "forward", ("loss", "cache")),
    _npfcn("softmax_cross_entropy_backward", "softmax_loss", "backward", ("x",),
           "softmax_cross_entropy_forward"),
]
BY_NAME = {entry.name: entry for entry in ENTRIES}
# relu_forward/relu_backward are listed once (CS231n's); npfcn's are the same contract.
BOTH = "CS231n and npfcn"
BY_NAME["relu_forward"] = Entry("relu_forward", BOTH, "relu", "forward", ("out", "cache"))
BY_NAME["relu_backward"] = Entry("relu_backward", BOTH, "relu", "backward", ("x",),
                                 "relu_forward")


def accepted_keywords(entry, fn):
    """The npfcn-style keywords the student's signature takes (all of them with **kwargs)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return set(entry.keywords)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return set(entry.keywords)
    return {k for k in entry.keywords if k in parameters}


def features(entry, fn):
    """The geometry to draw for this student's function (see ``ops.Op.strategy``): the
    convention's, or for npfcn's names the keywords its signature takes.  A backward pass
    is given its forward pass's entry and function: it draws what the forward takes."""
    if entry.convention == CS231N:
        return set(entry.features)
    return accepted_keywords(entry, fn)


def forward_call(entry, fn, case, keywords):
    """``(args, kwargs, text)`` for calling a forward pass (or a loss) on ``case``."""
    i, p = case.inputs, case.params
    name = entry.name
    if name == "conv_forward_naive":
        param = {"stride": p["stride"], "pad": p["padding"]}
        return (i["x"], i["w"], i["b"], param), {}, f"{name}(x, w, b, {param})"
    if name == "max_pool_forward_naive":
        param = {"pool_height": p["KH"], "pool_width": p["KW"], "stride": p["stride"]}
        return (i["x"], param), {}, f"{name}(x, {param})"
    if entry.op in ("relu",):
        return (i["x"],), {}, f"{name}(x)"
    if entry.op == "softmax_loss":
        return (i["x"], i["y"]), {}, f"{name}(x, y)"
    kernel = _int_or_pair(p.get("KH"), p.get("KW"))
    if entry.op in ("conv", "conv_transpose"):
        args, shown = (i["x"], i["w"], i["b"]), "x, w, b"
    elif entry.op == "max_pool":
        args, shown = (i["x"], kernel), f"x, {kernel}"
    else:                                       # max_unpool
        args, shown = (i["x"], i["indices"], kernel), f"x, indices, {kernel}"
    kwargs = {k: _int_or_pair(*p[k]) if isinstance(p[k], tuple) else p[k]
              for k in entry.keywords if k in keywords}
    text = ", ".join([shown] + [f"{k}={v!r}" for k, v in kwargs.items()])
    return args, kwargs, f"{name}({text})"


def _int_or_pair(a, b):
    """One int where both axes agree (what most students' code expects), else the pair
    (which npfcn's contract, like PyTorch's, also takes)."""
    return a if a == b else (a, b)
