"""Data-parallel steps (npfcn.replicas): a batch split across processes must give the
batch's loss and gradient, deterministically, and training with replicas must resume
exactly like training without."""
import functools
import io
import os

import numpy as np
import pytest

from npfcn.losses import CrossEntropyLoss, weight_total
from npfcn.models.fcn import build_model
import npfcn.replicas as replicas_module
from npfcn.replicas import ReplicaError, ReplicaGroup, shard_bounds
from npfcn.train import TrainConfig, Trainer, TrainingInterrupted, replica_count, train

from test_train import assert_same_state, final_state, interrupt_at, tiny_config

# A tiny float64 FCN-8s with learned upsampling: every layer kind takes part.
make_model = functools.partial(build_model, "fcn8s", num_classes=3, width=1 / 32, dtype=np.float64,
                               learn_upsampling=True, dropout=0.0, seed=1)


LOVASZ = 0.5     # the weight of the Lovász term in the groups' training loss


def perturbed_model(dropout=0.0):
    """Weights moved off their start (the score layers start at zero) the same way every call."""
    model = build_model("fcn8s", num_classes=3, width=1 / 32, dtype=np.float64,
                        learn_upsampling=True, dropout=dropout, seed=1)
    rng = np.random.default_rng(5)
    for name, value in model.params.items():
        value += 0.05 * rng.standard_normal(value.shape)
    return model


def batch(n, rng=None):
    rng = np.random.default_rng(0) if rng is None else rng
    x = rng.standard_normal((n, 3, 20, 22))
    y = rng.integers(0, 3, (n, 20, 22))
    y[0, :4] = 255                                   # some ignored pixels
    return x, y


@pytest.fixture(scope="module")
def pair():
    """A group of 2 replicas (one helper process) and its model; shared to pay the
    helper's start-up (~1 s) once.  Its loss has the Lovász term, which divides by the
    batch's image count, not the shard's."""
    model = perturbed_model()
    with ReplicaGroup(model, make_model, replicas=2, lovasz=LOVASZ) as group:
        yield group, model


@pytest.mark.parametrize("batch_size,replicas,expected", [
    (4, 2, [(0, 2), (2, 4)]), (3, 2, [(0, 2), (2, 3)]), (1, 2, [(0, 1), (1, 1)]),
    (5, 3, [(0, 2), (2, 4), (4, 5)]), (2, 1, [(0, 2)])])
def test_shards_cover_the_batch_in_order(batch_size, replicas, expected):
    assert shard_bounds(batch_size, replicas) == expected


def test_shard_losses_with_the_batch_denominator_add_up_to_the_batch_loss():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 4, 5, 6))
    target = rng.integers(0, 4, (3, 5, 6))
    target[1, 0] = 255
    weight = np.array([0.5, 1.0, 2.0, 3.0])
    whole = CrossEntropyLoss(weight=weight)
    expected = whole.forward(logits, target)
    expected_grad = whole.backward()
    denominator = weight_total(target, weight)
    # The batch's own denominator: sum of the weights of the counted pixels.
    counted = target[target != 255]
    assert denominator == pytest.approx(weight[counted].sum(), rel=1e-15)
    assert weight_total(target) == counted.size
    parts, grads = 0.0, []
    for part in (slice(0, 1), slice(1, 3)):
        loss = CrossEntropyLoss(weight=weight)
        parts += loss.forward(logits[part], target[part], denominator=denominator)
        grads.append(loss.backward())
    assert parts == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(np.concatenate(grads), expected_grad, rtol=1e-13, atol=1e-16)
    with pytest.raises(ValueError, match="denominator"):
        CrossEntropyLoss().forward(logits, target, denominator=float("nan"))


@pytest.mark.parametrize("size", [3, 4, 1])
def test_two_replicas_give_the_one_process_loss_and_gradients(pair, size):
    # float64: the only difference is the order of additions, so 1e-12 relative is
    # ~1e4 ulp of margin.  Size 3 splits 2 + 1, size 1 leaves the helper idle.
    group, model = pair
    reference = perturbed_model()
    x, y = batch(size)
    weight = np.array([0.4, 1.0, 2.5])
    loss = group.forward_backward(x, y, weight)
    single = ReplicaGroup(reference, make_model, replicas=1, lovasz=LOVASZ)
    expected = single.forward_backward(x, y, weight)
    assert loss == pytest.approx(expected, rel=1e-12)
    for name in reference.trainable:
        scale = np.abs(reference.grads[name]).max()
        assert scale > 0, name
        np.testing.assert_allclose(model.grads[name], reference.grads[name], rtol=0,
                                   atol=1e-12 * scale, err_msg=name)


def test_helpers_use_the_current_weights_every_step(pair):
    # Change a weight in the main model: the next step must see it in the helper's shard.
    group, model = pair
    x, y = batch(2)
    before = group.forward_backward(x, y)
    saved = model.params["conv3_1.weight"].copy()
    model.params["conv3_1.weight"] *= 1.5
    try:
        changed = group.forward_backward(x, y)
        reference = perturbed_model()
        reference.params["conv3_1.weight"][...] = model.params["conv3_1.weight"]
        expected = ReplicaGroup(reference, make_model, lovasz=LOVASZ).forward_backward(x, y)
    finally:
        model.params["conv3_1.weight"][...] = saved
    assert changed != before
    assert changed == pytest.approx(expected, rel=1e-12)


def test_a_bad_label_is_refused_before_any_shard_is_sent(pair):
    group, _ = pair
    x, y = batch(2)
    y[1, 3, 3] = 7                     # in the helper's shard
    with pytest.raises(ValueError, match="label 7 is outside"):
        group.forward_backward(x, y)
    x, y = batch(2)                    # the group still works afterwards
    assert np.isfinite(group.forward_backward(x, y))


def test_bad_images_are_refused_before_any_shard_is_sent(pair):
    group, _ = pair
    x, y = batch(2)
    with pytest.raises(TypeError, match="model input has dtype float32"):
        group.forward_backward(x.astype(np.float32), y)
    with pytest.raises(ValueError, match="3 channels"):
        group.forward_backward(x[:, :2], y)
    assert np.isfinite(group.forward_backward(x, y))   # the helper is still there


def test_dropout_masks_are_reproducible_and_differ_between_shards():
    x, y = batch(2)
    x[1] = x[0]
    y[1] = y[0]
    losses, grads = [], []
    for _ in range(2):
        model = perturbed_model(dropout=0.5)
        build = functools.partial(build_model, "fcn8s", num_classes=3, width=1 / 32, dtype=np.float64,
                                  learn_upsampling=True, dropout=0.5, seed=1)
        with ReplicaGroup(model, build, replicas=2) as group:
            losses.append(group.forward_backward(x, y))
        grads.append(model.grads["fc6.weight"].copy())
    assert losses[0] == losses[1]
    np.testing.assert_array_equal(grads[0], grads[1])
    # The same image in both shards: with the same masks the shard losses would be equal,
    # i.e. the batch loss would equal the loss of the image alone with the main's masks.
    alone = perturbed_model(dropout=0.5)
    alone.rng.integers(2 ** 63)        # the group draws the helper's seed first
    single = CrossEntropyLoss().forward(alone.forward(x[:1]), y[:1])
    assert losses[0] != pytest.approx(single, rel=1e-9)


def test_a_helper_that_dies_is_reported():
    model = perturbed_model()
    with ReplicaGroup(model, make_model, replicas=2) as group:
        process = group._helpers[0][0]
        process.kill()
        process.wait()
        with pytest.raises(ReplicaError, match="exited unexpectedly"):
            group.forward_backward(*batch(2))


def failing_build():
    raise ValueError("no model today")


def test_a_helper_that_fails_reports_its_error():
    with pytest.raises(ReplicaError, match="failed: ValueError: no model today"):
        ReplicaGroup(perturbed_model(), failing_build, replicas=2)


def test_replicas_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="replicas"):
            ReplicaGroup(perturbed_model(), make_model, replicas=bad)


@pytest.mark.parametrize("replicas,threads,batch_size,expected", [
    (0, 2, 2, 2), (0, 4, 2, 2), (0, 1, 2, 1), (0, 2, 1, 1), (0, 8, 5, 5), (3, 1, 2, 3), (1, 2, 2, 1)])
def test_replica_count_is_one_per_thread_but_at_most_one_per_image(replicas, threads, batch_size,
                                                                   expected):
    config = TrainConfig(replicas=replicas, batch_size=batch_size)
    assert replica_count(config, threads) == expected


def test_auto_replicas_stay_one_process_without_posix(monkeypatch):
    monkeypatch.setattr(os, "name", "nt")
    assert replica_count(TrainConfig(replicas=0, batch_size=2), 2) == 1
    assert replica_count(TrainConfig(replicas=2, batch_size=2), 2) == 2   # asked for: tried


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_config_refuses_a_bad_replica_count(bad):
    with pytest.raises(ValueError, match="replicas must be an integer >= 0"):
        TrainConfig(replicas=bad).validate()


def test_the_default_run_uses_a_process_per_thread(tmp_path):
    from npfcn import sysinfo

    before = replicas_module.current_threads()
    sysinfo.set_threads(2)
    try:
        stream = io.StringIO()
        trainer = Trainer(tiny_config(tmp_path, "auto", replicas=0, epochs=1), stream=stream)
        assert trainer.replicas == 2
        trainer.run()
        assert "2 processes share every batch" in stream.getvalue()
        sysinfo.set_threads(1)
        assert trainer.replicas == 1
    finally:
        sysinfo.set_threads(before)


# -- the training loop with two replicas ----------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted_replicas(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("replicas")
    result = train(tiny_config(tmp_path, "full", replicas=2), stream=io.StringIO())
    return result, final_state(result.run_dir)


def test_training_with_replicas_is_deterministic(tmp_path, uninterrupted_replicas):
    again = train(tiny_config(tmp_path, "again", replicas=2), stream=io.StringIO())
    assert_same_state(final_state(again.run_dir), uninterrupted_replicas[1])


def test_training_with_replicas_learns_like_one_process(tmp_path, uninterrupted_replicas):
    # float32 and different addition orders: the runs drift apart by rounding only.
    one = train(tiny_config(tmp_path, "one"), stream=io.StringIO())
    weights_one = final_state(one.run_dir)[0]
    weights_two = uninterrupted_replicas[1][0]
    for name in weights_one:
        scale = np.abs(weights_one[name]).max()
        np.testing.assert_allclose(weights_two[name], weights_one[name], rtol=0,
                                   atol=1e-3 * max(scale, 1e-6), err_msg=name)


def test_resume_with_replicas_equals_uninterrupted_run(tmp_path, uninterrupted_replicas):
    trainer = Trainer(tiny_config(tmp_path, "cut", replicas=2), stream=io.StringIO())
    trainer.on_step = interrupt_at(3, "signal")
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    resumed = Trainer.resume(os.path.join(trainer.run_dir, "last.npz"), stream=io.StringIO())
    resumed.run()
    assert_same_state(final_state(trainer.run_dir), uninterrupted_replicas[1])


def test_a_helper_killed_during_training_keeps_the_state_and_the_run_resumes(
        tmp_path, uninterrupted_replicas):
    # The helper dies after global step 3 (inside epoch 2): the next step fails, the state
    # after step 3 is saved, and resuming gives bit for bit the uninterrupted run.
    trainer = Trainer(tiny_config(tmp_path, "killed", replicas=2), stream=io.StringIO())

    def kill_helper(t):
        if t.global_step == 3:
            process = t.replica_group._helpers[0][0]
            process.kill()
            process.wait()
    trainer.on_step = kill_helper
    with pytest.raises(ReplicaError, match=r"exited unexpectedly.*after step 1 of epoch 2 was "
                                           r"saved in .*last\.npz.*--resume"):
        trainer.run()
    resumed = Trainer.resume(os.path.join(trainer.run_dir, "last.npz"), stream=io.StringIO())
    assert resumed.global_step == 3
    resumed.run()
    assert_same_state(final_state(trainer.run_dir), uninterrupted_replicas[1])


def test_resume_may_change_the_number_of_replicas(tmp_path, uninterrupted_replicas):
    trainer = Trainer(tiny_config(tmp_path, "cut1", replicas=2), stream=io.StringIO())
    trainer.on_step = interrupt_at(3, "signal")
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    result = train(resume=trainer.run_dir, replicas=1, stream=io.StringIO())
    assert result.status == "complete"
    weights = final_state(trainer.run_dir)[0]
    for name, value in uninterrupted_replicas[1][0].items():   # equal up to rounding
        np.testing.assert_allclose(weights[name], value, rtol=0,
                                   atol=1e-3 * max(np.abs(value).max(), 1e-6), err_msg=name)
