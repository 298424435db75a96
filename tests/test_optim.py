"""SGD and Adam against hand-computed updates and torch.optim; schedules; state round trip."""
import io

import numpy as np
import pytest

from npfcn.optim import SGD, Adam, constant_lr, linear_warmup, poly_lr


class TinyModel:
    """The optimizer's view of a model: params, grads and the trainable names."""

    def __init__(self, dtype=np.float64):
        rng = np.random.default_rng(0)
        self.params = {"a.weight": rng.standard_normal((3, 2)).astype(dtype),
                       "a.bias": rng.standard_normal(3).astype(dtype),
                       "frozen.weight": rng.standard_normal(4).astype(dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.trainable = ["a.weight", "a.bias"]


def scalar_model(p, dtype=np.float64):
    model = TinyModel(dtype)
    model.params = {"w.weight": np.array([p], dtype), "w.bias": np.array([p], dtype)}
    model.grads = {k: np.zeros_like(v) for k, v in model.params.items()}
    model.trainable = ["w.weight", "w.bias"]
    return model


def test_sgd_momentum_and_weight_decay_by_hand():
    model = scalar_model(1.0)
    opt = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.01)
    model.grads["w.weight"][:] = 0.5
    model.grads["w.bias"][:] = 0.5
    opt.step()
    # weight: g = 0.5 + 0.01*1 = 0.51, v = 0.51, p = 1 - 0.1*0.51 = 0.949
    # bias (no decay): v = 0.5, p = 0.95
    assert model.params["w.weight"][0] == pytest.approx(0.949, abs=1e-15)
    assert model.params["w.bias"][0] == pytest.approx(0.95, abs=1e-15)
    opt.step()
    # weight: g = 0.5 + 0.00949 = 0.50949, v = 0.9*0.51 + 0.50949 = 0.96849, p = 0.949 - 0.096849
    # bias: v = 0.9*0.5 + 0.5 = 0.95, p = 0.95 - 0.095 = 0.855
    assert model.params["w.weight"][0] == pytest.approx(0.852151, abs=1e-15)
    assert model.params["w.bias"][0] == pytest.approx(0.855, abs=1e-15)


def test_adam_by_hand():
    model = scalar_model(1.0)
    opt = Adam(model, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    model.grads["w.weight"][:] = 0.5
    model.grads["w.bias"][:] = -2.0
    opt.step()
    # Step 1: the bias corrections make m_hat = g, v_hat = g^2, so p -= lr * g / (|g| + eps).
    assert model.params["w.weight"][0] == pytest.approx(1 - 0.01 * 0.5 / (0.5 + 1e-8), abs=1e-15)
    assert model.params["w.bias"][0] == pytest.approx(1 + 0.01 * 2 / (2 + 1e-8), abs=1e-15)
    model.grads["w.weight"][:] = 1.5
    opt.step()
    m = 0.9 * 0.05 + 0.1 * 1.5                       # 0.195
    v = 0.999 * 0.001 * 0.25 + 0.001 * 2.25          # 0.00249975
    m_hat, v_hat = m / (1 - 0.9 ** 2), v / (1 - 0.999 ** 2)
    expected = 1 - 0.01 * 0.5 / (0.5 + 1e-8) - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
    assert model.params["w.weight"][0] == pytest.approx(expected, abs=1e-14)


def test_frozen_parameters_are_not_touched():
    model = TinyModel()
    frozen = model.params["frozen.weight"].copy()
    for opt in (SGD(model, lr=1.0), Adam(model, lr=1.0)):
        for g in model.grads.values():
            g[...] = 1.0
        opt.step()
    np.testing.assert_array_equal(model.params["frozen.weight"], frozen)


def test_updates_are_in_place_and_keep_the_dtype():
    model = TinyModel(np.float32)
    arrays = {k: v for k, v in model.params.items()}
    for opt in (SGD(model, lr=0.1, weight_decay=1e-3), Adam(model, lr=0.1, weight_decay=1e-3)):
        for g in model.grads.values():
            g[...] = 0.25
        opt.step()
    for name, array in arrays.items():
        assert model.params[name] is array and array.dtype == np.float32


def _torch_run(torch, kind, kwargs, params, grads_per_step, lrs):
    """The same updates with torch.optim: weight decay only in the weights' param group."""
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    decay = kwargs.pop("weight_decay")
    groups = [{"params": [t for k, t in tensors.items() if not k.endswith(".bias")],
               "weight_decay": decay},
              {"params": [t for k, t in tensors.items() if k.endswith(".bias")], "weight_decay": 0.0}]
    opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[kind](groups, lr=lrs[0], **kwargs)
    for grads, lr in zip(grads_per_step, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        opt.step()
    return {k: t.detach().numpy() for k, t in tensors.items()}


@pytest.mark.parametrize("kind, kwargs", [
    ("sgd", dict(momentum=0.9, weight_decay=5e-4)),
    ("sgd", dict(momentum=0.0, weight_decay=0.1)),
    ("adam", dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    ("adam", dict(betas=(0.5, 0.9), eps=1e-6, weight_decay=0.01)),
])
def test_matches_torch_optim(torch, kind, kwargs):
    # float64 on both sides, same arithmetic up to operation order: 1e-12 relative.
    model = TinyModel(np.float64)
    params = {k: model.params[k].copy() for k in model.trainable}
    rng = np.random.default_rng(1)
    grads_per_step = [{k: rng.standard_normal(params[k].shape) for k in params} for _ in range(6)]
    schedule = poly_lr(0.05, 6)
    lrs = [schedule(step) for step in range(6)]
    opt = (SGD if kind == "sgd" else Adam)(model, lr=lrs[0], **kwargs)
    for grads, lr in zip(grads_per_step, lrs):
        opt.lr = lr
        for k, g in grads.items():
            model.grads[k][...] = g
        opt.step()
    expected = _torch_run(torch, kind, dict(kwargs), params, grads_per_step, lrs)
    for k in params:
        np.testing.assert_allclose(model.params[k], expected[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda m: Adam(m, lr=0.1, weight_decay=1e-2),
])
def test_state_dict_round_trip_continues_identically(make):
    rng = np.random.default_rng(3)
    grads = [{k: rng.standard_normal(v.shape) for k, v in TinyModel().params.items()}
             for _ in range(5)]

    def run(model, opt, steps):
        for g in steps:
            for k, v in g.items():
                model.grads[k][...] = v
            opt.step()

    straight = TinyModel()
    straight_opt = make(straight)
    run(straight, straight_opt, grads)

    first = TinyModel()
    first_opt = make(first)
    run(first, first_opt, grads[:3])
    # Through an .npz file, as a checkpoint stores it: scalars come back as 0-d arrays.
    buffer = io.BytesIO()
    np.savez(buffer, **first_opt.state_dict())
    buffer.seek(0)
    with np.load(buffer) as archive:
        state = {k: archive[k] for k in archive.files}
    resumed = TinyModel()
    for k in resumed.params:
        resumed.params[k][...] = first.params[k]
    resumed_opt = make(resumed)
    resumed_opt.lr = 123.0                        # overwritten by the loaded state
    resumed_opt.load_state_dict(state)
    assert resumed_opt.lr == pytest.approx(0.1) and resumed_opt.steps == 3
    run(resumed, resumed_opt, grads[3:])
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])


def test_state_dict_is_a_copy():
    model = TinyModel()
    opt = SGD(model, lr=0.1, momentum=0.9)
    model.grads["a.weight"][...] = 1
    opt.step()
    state = opt.state_dict()
    state["momentum_buffer.a.weight"][...] = 99
    assert not (opt.state["momentum_buffer"]["a.weight"] == 99).any()


def test_load_state_dict_refuses_mismatches_without_changing_anything():
    model = TinyModel()
    sgd, adam = SGD(model, lr=0.1, momentum=0.9), Adam(model, lr=0.1)
    with pytest.raises(ValueError, match="'adam', not 'sgd'"):
        sgd.load_state_dict(adam.state_dict())
    state = sgd.state_dict()
    state["lr"] = 0.5
    state["momentum_buffer.a.weight"] = np.zeros((2, 3))
    with pytest.raises(ValueError, match="momentum_buffer.a.weight"):
        sgd.load_state_dict(state)
    assert sgd.lr == 0.1
    state = sgd.state_dict()
    del state["momentum_buffer.a.bias"]
    with pytest.raises(ValueError, match="missing"):
        sgd.load_state_dict(state)


@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=-1.0),
    lambda m: SGD(m, lr=float("nan")),
    lambda m: SGD(m, lr=0.1, momentum=1.0),
    lambda m: SGD(m, lr=0.1, weight_decay=-1e-4),
    lambda m: Adam(m, lr=0.1, betas=(0.9,)),
    lambda m: Adam(m, lr=0.1, betas=(1.0, 0.999)),
    lambda m: Adam(m, lr=0.1, eps=-1.0),
])
def test_bad_hyperparameters(make):
    with pytest.raises(ValueError):
        make(TinyModel())


def test_optimizer_needs_a_model():
    with pytest.raises(TypeError, match="trainable"):
        SGD(object(), lr=0.1)


def test_schedules():
    assert constant_lr(0.01)(0) == 0.01 and constant_lr(0.01)(10**6) == 0.01
    poly = poly_lr(0.1, total_steps=100, power=0.9)
    assert poly(0) == 0.1
    assert poly(50) == pytest.approx(0.1 * 0.5 ** 0.9, rel=1e-15)
    assert poly(99) == pytest.approx(0.1 * 0.01 ** 0.9, rel=1e-15)
    assert poly(100) == 0.0 and poly(150) == 0.0
    lrs = [poly(s) for s in range(101)]
    assert all(a > b for a, b in zip(lrs[:-1], lrs[1:]))       # strictly decreasing
    assert poly_lr(0.1, 10, power=1.0)(3) == pytest.approx(0.07, rel=1e-15)
    for bad in (lambda: poly_lr(0.1, 0), lambda: poly_lr(0.1, 2.5), lambda: poly_lr(-1, 10),
                lambda: poly(-1), lambda: constant_lr(float("inf"))):
        with pytest.raises(ValueError):
            bad()


def test_linear_warmup_ramps_up_then_follows_the_schedule():
    poly = poly_lr(0.1, total_steps=100, power=0.9)
    warmed = linear_warmup(poly, 10)
    # step k < 10 runs at (k + 1) / 10 of the schedule; from step 9 on, the schedule itself
    for step in range(10):
        assert warmed(step) == pytest.approx(poly(step) * (step + 1) / 10, rel=1e-15)
    for step in (9, 10, 50, 99, 100):
        assert warmed(step) == poly(step)
    assert linear_warmup(constant_lr(0.2), 4)(0) == pytest.approx(0.05, rel=1e-15)
    assert linear_warmup(poly, 1)(0) == poly(0)         # one step: no warm-up at all
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="warmup_steps"):
            linear_warmup(poly, bad)


@pytest.mark.parametrize("make", [
    lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda m: SGD(m, lr=0.1, momentum=0.0, weight_decay=1e-2),
    lambda m: Adam(m, lr=0.1, weight_decay=1e-2),
])
def test_blockwise_update_equals_the_whole_array_update(make, monkeypatch):
    # Big parameters are updated a block of elements at a time; with blocks of 4
    # elements (a 6-element weight spans two, the last one partial) nothing may change.
    import npfcn.optim as optim
    rng = np.random.default_rng(5)
    grads = [{k: rng.standard_normal(v.shape) for k, v in TinyModel().params.items()}
             for _ in range(3)]
    results = []
    for block in (1 << 18, 4):
        monkeypatch.setattr(optim, "_UPDATE_BLOCK", block)
        model = TinyModel()
        opt = make(model)
        for g in grads:
            for k, v in g.items():
                model.grads[k][...] = v
            opt.step()
            np.testing.assert_array_equal(model.grads["a.weight"], g["a.weight"])  # untouched
        results.append(model.params)
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k])


# --- LARS -----------------------------------------------------------------------------

def lars_model(dtype=np.float64):
    model = TinyModel(dtype)
    model.grads["a.weight"][...] = np.arange(6, dtype=dtype).reshape(3, 2) - 2.5
    model.grads["a.bias"][...] = [0.5, -1.0, 2.0]
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lars_step_by_hand(weight_decay):
    """Without momentum one LARS step moves the named tensor along -(g + decay*w) by
    exactly lr * trust * |w| / (|g| + decay*|w|) times that vector, and leaves the
    tensors it does not name to plain SGD."""
    model = lars_model()
    w0, g = model.params["a.weight"].copy(), model.grads["a.weight"].copy()
    b0, gb = model.params["a.bias"].copy(), model.grads["a.bias"].copy()
    opt = SGD(model, lr=0.1, momentum=0.0, weight_decay=weight_decay, trust_coefficient=0.05,
              layerwise=["a.weight"])
    opt.step()
    w_norm, g_norm = np.sqrt((w0 ** 2).sum()), np.sqrt((g ** 2).sum())
    ratio = 0.05 * w_norm / (g_norm + weight_decay * w_norm)
    np.testing.assert_allclose(model.params["a.weight"], w0 - 0.1 * ratio * (g + weight_decay * w0),
                               rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(model.params["a.bias"], b0 - 0.1 * gb, rtol=1e-14)   # not named


def test_lars_moves_every_named_layer_by_the_same_fraction_of_its_norm():
    """The point of LARS: gradients 1e-4 and 1e4 times as large give steps of the same
    relative size, lr * trust (no decay, no momentum)."""
    model = TinyModel()
    model.params["b.weight"] = np.full((5, 5), 3.0)
    model.grads["b.weight"] = np.full((5, 5), 1e4)
    model.grads["a.weight"][...] = 1e-4
    model.trainable = ["a.weight", "b.weight"]
    before = {k: model.params[k].copy() for k in model.trainable}
    SGD(model, lr=0.5, momentum=0.0, weight_decay=0.0, trust_coefficient=0.02,
        layerwise=model.trainable).step()
    for k in model.trainable:
        moved = np.linalg.norm(model.params[k] - before[k]) / np.linalg.norm(before[k])
        assert moved == pytest.approx(0.5 * 0.02, rel=1e-12), k


def test_lars_leaves_zero_tensors_to_plain_sgd_and_can_be_off():
    model = lars_model()
    model.params["a.weight"][...] = 0.0          # a trust ratio of 0 would freeze it
    g = model.grads["a.weight"].copy()
    SGD(model, lr=0.1, momentum=0.0, weight_decay=0.0, trust_coefficient=0.05,
        layerwise=["a.weight"]).step()
    np.testing.assert_allclose(model.params["a.weight"], -0.1 * g, rtol=1e-15)
    plain, off = lars_model(), lars_model()
    SGD(plain, lr=0.1, momentum=0.9, weight_decay=0.0).step()
    SGD(off, lr=0.1, momentum=0.9, weight_decay=0.0, trust_coefficient=0.0,
        layerwise=["a.weight"]).step()
    np.testing.assert_array_equal(plain.params["a.weight"], off.params["a.weight"])


def test_lars_with_momentum_accumulates_the_scaled_gradient():
    model = lars_model()
    opt = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.0, trust_coefficient=0.05,
              layerwise=["a.weight"])
    w0, g = model.params["a.weight"].copy(), model.grads["a.weight"].copy()
    scaled0 = 0.05 * np.linalg.norm(w0) / np.linalg.norm(g) * g
    opt.step()
    w1 = model.params["a.weight"].copy()
    scaled1 = 0.05 * np.linalg.norm(w1) / np.linalg.norm(g) * g
    opt.step()
    np.testing.assert_allclose(model.params["a.weight"], w1 - 0.1 * (0.9 * scaled0 + scaled1),
                               rtol=1e-13)


def test_lars_refuses_names_that_are_not_trainable():
    with pytest.raises(ValueError, match="frozen.weight"):
        SGD(lars_model(), lr=0.1, trust_coefficient=0.05, layerwise=["frozen.weight"])
    with pytest.raises(ValueError, match="trust_coefficient"):
        SGD(lars_model(), lr=0.1, trust_coefficient=-1.0, layerwise=["a.weight"])
