"""The training loop: determinism, exact resume (between and inside epochs, after Ctrl-C),
NaN handling that keeps the last good checkpoint, and an overfit check of the whole loop."""
import io
import json
import os
import signal

import numpy as np
import pytest

import npfcn.train.distributed as distributed_module
import npfcn.train as train_module
from npfcn.train import load_checkpoint
from npfcn.evaluate import evaluate
from npfcn.train import (Trainer, build_schedule, TrainConfig, TrainingDiverged, TrainingInterrupted,
                         resolve_checkpoint, train)


def tiny_config(tmp_path, name, **changes):
    """A run of seconds: 1/32 width, 24x24 images, 6 train / 3 val, 2 steps per epoch (in
    this process: ``train()`` starts no others; test_distributed runs it on MPI ranks)."""
    values = dict(width=1 / 32, image_size=24, num_train=6, num_val=3, batch_size=3, epochs=3,
                  output=str(tmp_path / "runs"), name=name, num_samples=2)
    values.update(changes)
    return TrainConfig(**values)


def final_state(run_dir):
    checkpoint = load_checkpoint(os.path.join(run_dir, "last.npz"))
    return checkpoint.model_state, checkpoint.optimizer_state, checkpoint.meta


def assert_same_state(a, b):
    (weights_a, optim_a, meta_a), (weights_b, optim_b, meta_b) = a, b
    assert set(weights_a) == set(weights_b)
    for name in weights_a:                      # bit for bit, not approximately
        np.testing.assert_array_equal(weights_a[name], weights_b[name], err_msg=name)
    for key in optim_a:
        np.testing.assert_array_equal(optim_a[key], optim_b[key], err_msg=key)
    assert meta_a["rng"] == meta_b["rng"]
    assert [e["train_loss"] for e in meta_a["history"]] == [e["train_loss"] for e in meta_b["history"]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: 3 epochs without interruption."""
    tmp_path = tmp_path_factory.mktemp("reference")
    result = train(tiny_config(tmp_path, "full"), stream=io.StringIO())
    return result, final_state(result.run_dir)


def test_run_writes_checkpoints_metrics_and_pictures(uninterrupted):
    result, (_, _, meta) = uninterrupted
    files = set(os.listdir(result.run_dir))
    assert {"last.npz", "best.npz", "metrics.json", "curves.png", "samples.png"} <= files
    assert not [f for f in files if ".tmp" in f]
    metrics = json.load(open(os.path.join(result.run_dir, "metrics.json")))
    assert metrics["status"] == "complete" and len(metrics["epochs"]) == 3
    for key in ("train_loss", "val_loss", "pixel_accuracy", "mean_accuracy", "mean_iou",
                "frequency_weighted_iou", "iou_per_class"):
        assert key in metrics["final"]
    assert set(metrics["final"]["iou_per_class"]) == set(meta["class_names"])
    assert meta["epoch"] == 3 and meta["global_step"] == 6
    assert meta["preprocessing"] == "unit" and meta["config"]["model"]["model"] == "fcn8s"
    latest = os.path.join(os.path.dirname(result.run_dir), "latest")
    assert os.path.samefile(resolve_checkpoint(latest), os.path.join(result.run_dir, "best.npz"))


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path, uninterrupted):
    again = train(tiny_config(tmp_path, "again"), stream=io.StringIO())
    assert_same_state(final_state(again.run_dir), uninterrupted[1])
    other = train(tiny_config(tmp_path, "other", seed=1), stream=io.StringIO())
    weights = final_state(other.run_dir)[0]
    assert not np.array_equal(weights["conv1_1.weight"], uninterrupted[1][0]["conv1_1.weight"])


def interrupt_at(global_step, how):
    """An on_step hook that stops the run after ``global_step`` completed steps: by a real
    SIGINT to this process (the Ctrl-C path) or by raising KeyboardInterrupt directly."""
    def hook(trainer):
        if trainer.global_step == global_step:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise KeyboardInterrupt
    return hook


@pytest.mark.parametrize("global_step,how", [(3, "signal"), (2, "signal"), (5, "exception")])
def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, uninterrupted, global_step, how):
    # global step 2 ends epoch 1 (before its validation), 3 and 5 are inside epochs 2 and 3.
    trainer = Trainer(tiny_config(tmp_path, "cut"), stream=io.StringIO())
    trainer.on_step = interrupt_at(global_step, how)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.run()
    saved = load_checkpoint(info.value.checkpoint).meta
    assert saved["global_step"] == global_step and saved["status"] == "interrupted"
    resumed = train(resume=trainer.run_dir, stream=io.StringIO())
    assert resumed.status == "complete"
    assert_same_state(final_state(resumed.run_dir), uninterrupted[1])


def test_resume_between_epochs_equals_uninterrupted_run(tmp_path, uninterrupted):
    # Stop by Ctrl-C during epoch 2's last step: the state of a finished epoch 1 + epoch 2
    # is saved, then a second process would resume; here a fresh Trainer does.
    trainer = Trainer(tiny_config(tmp_path, "cut"), stream=io.StringIO())
    trainer.on_step = interrupt_at(4, "signal")
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    resumed = Trainer.resume(os.path.join(trainer.run_dir, "last.npz"), stream=io.StringIO())
    assert (resumed.epoch, resumed.step_in_epoch) == (1, 2)
    resumed.run()
    assert_same_state(final_state(trainer.run_dir), uninterrupted[1])


class PoisonedLoss(distributed_module.SegmentationLoss):
    """The training loss, returning NaN from the 4th call on (global step 4 = epoch 2, step 2)."""

    calls = 0

    def forward(self, logits, target, denominator=None, num_images=None):
        PoisonedLoss.calls += 1
        value = super().forward(logits, target, denominator, num_images)
        return float("nan") if PoisonedLoss.calls >= 4 else value


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    PoisonedLoss.calls = 0
    monkeypatch.setattr(distributed_module, "SegmentationLoss", PoisonedLoss)
    trainer = Trainer(tiny_config(tmp_path, "nan"), stream=io.StringIO())
    snapshots = {}
    trainer.on_step = lambda t: snapshots.setdefault(t.global_step, t.model.state_dict())
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 2") as info:
        trainer.run()
    assert "last.npz was kept" in str(info.value)
    kept = load_checkpoint(os.path.join(trainer.run_dir, "last.npz"))
    assert kept.meta["epoch"] == 1 and kept.meta["global_step"] == 2
    for name, value in snapshots[2].items():     # exactly the weights after epoch 1
        np.testing.assert_array_equal(kept.model_state[name], value)


def test_overfits_two_images(tmp_path):
    # Two 24x24 images, no dropout or augmentation, learned upsampling: the loop must drive
    # the loss down by 10x and label every pixel right.  Measured: 1.61 -> ~0.01 and mean
    # IoU 1.0 after ~40 steps; 60 epochs of one step leave margin.
    config = tiny_config(tmp_path, "overfit", num_train=2, num_val=1, batch_size=2, epochs=60,
                         symmetries="none", dropout=0.0, learn_upsampling=True, optimizer="adam", lr=1e-2,
                         schedule="constant", num_samples=0, init="he", class_weighting="none",
                         synthetic_options={})
    trainer = Trainer(config, stream=io.StringIO())
    trainer.run()
    losses = [e["train_loss"] for e in trainer.history]
    assert losses[-1] < losses[0] / 10
    scores = evaluate(trainer.model, trainer.train_set, batch_size=2)
    assert scores.metrics["mean_iou"] == 1.0


def test_fresh_run_refuses_to_overwrite_a_run(tmp_path, uninterrupted):
    config = tiny_config(tmp_path, "full", output=os.path.dirname(uninterrupted[0].run_dir))
    with pytest.raises(ValueError, match="already holds a checkpoint.*--resume"):
        Trainer(config, stream=io.StringIO()).run()


def lsuv_batch(trainer):
    """The batch Trainer rescales on: the first 8 training images in order."""
    from npfcn.data import iterate_batches

    x, _ = next(iterate_batches(trainer.train_set, 8, preprocessing=trainer.config.preprocessing))
    return x


def encoder_conv_outputs(model, x):
    """{conv name: its output}, after the ReLU fused into it, as lsuv_init measures it."""
    outputs, h = {}, x
    model.eval()
    for name, module in model.encoder.steps:
        h = module.forward(h)
        if name in model.encoder.convs:
            outputs[name] = h
    return outputs


@pytest.mark.parametrize("init", ["lsuv", "orthogonal-lsuv"])
def test_lsuv_gives_every_encoder_convolution_unit_variance_on_its_batch(tmp_path, init):
    trainer = Trainer(tiny_config(tmp_path, init, init=init, num_train=8), stream=io.StringIO())
    stds = {name: float(y.std()) for name, y in
            encoder_conv_outputs(trainer.model, lsuv_batch(trainer)).items()}
    # float32 forward passes recomputed: agreement to ~1e-6.  Without the rescaling the
    # same layers' outputs have standard deviations of 0.08-0.48 (He normal, measured).
    np.testing.assert_allclose(list(stds.values()), 1.0, rtol=1e-4, err_msg=str(stds))
    he = Trainer(tiny_config(tmp_path, "he", init="he", num_train=8), stream=io.StringIO())
    he_stds = [float(y.std()) for y in encoder_conv_outputs(he.model, lsuv_batch(he)).values()]
    assert max(abs(s - 1) for s in he_stds) > 0.1     # the test can tell rescaled from not


def test_orthogonal_lsuv_draws_orthogonal_filters_of_equal_length(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "orth", init="orthogonal-lsuv"), stream=io.StringIO())
    for name, conv in trainer.model.encoder.convs.items():
        matrix = conv.params["weight"].reshape(conv.params["weight"].shape[0], -1).astype(np.float64)
        out, fan_in = matrix.shape
        gram = matrix @ matrix.T if out <= fan_in else matrix.T @ matrix
        # LSUV scales the orthonormal matrix by one number: the Gram matrix is c * I.
        np.testing.assert_allclose(gram / gram[0, 0], np.eye(min(out, fan_in)), atol=1e-5,
                                   err_msg=name)
    lsuv = Trainer(tiny_config(tmp_path, "lsuv", init="lsuv"), stream=io.StringIO())
    weight = lsuv.model.params["conv1_1.weight"]
    matrix = weight.reshape(weight.shape[0], -1)
    gram = matrix @ matrix.T
    assert not np.allclose(gram / gram[0, 0], np.eye(len(gram)), atol=1e-5)


def test_bad_configs_are_refused(tmp_path):
    for bad in (dict(epochs=0), dict(lr=-1.0), dict(model="fcn4s"), dict(optimizer="rmsprop"),
                dict(init="orthogonal"), dict(symmetries="rotations"), dict(lovasz=-1.0),
                dict(lovasz=float("inf"))):
        with pytest.raises(ValueError):
            tiny_config(tmp_path, "bad", **bad).validate()


@pytest.mark.parametrize("symmetries, data, expected", [
    ("auto", "synthetic", "RandomSymmetry"), ("auto", "some/folder", "RandomHorizontalFlip"),
    ("all", "some/folder", "RandomSymmetry"), ("mirror", "synthetic", "RandomHorizontalFlip"),
    ("none", "synthetic", None)])
def test_symmetries_choose_the_transform(symmetries, data, expected):
    from npfcn.train import build_transform

    transform = build_transform(TrainConfig(symmetries=symmetries, data=data))
    names = [type(step).__name__ for step in transform.transforms] if transform else []
    assert names == ([expected] if expected else [])


def test_configs_saved_with_the_old_flip_switch_still_load():
    """Checkpoints written before 2026-12-02 store ``flip``; resuming them must augment the same."""
    assert TrainConfig.from_dict({"flip": True}).symmetries == "mirror"
    assert TrainConfig.from_dict({"flip": False}).symmetries == "none"
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"flips": True})


def test_clip_gradients_rescales_only_a_norm_above_the_limit():
    from npfcn.models import FCN8s
    from npfcn.train import clip_gradients

    model = FCN8s(num_classes=2, width=1 / 32, dtype=np.float64)
    rng = np.random.default_rng(0)
    for name in model.trainable:
        model.grads[name][...] = rng.normal(size=model.grads[name].shape)
    before = {name: model.grads[name].copy() for name in model.trainable}
    # The global norm, by hand: one vector of every trainable gradient.
    norm = np.linalg.norm(np.concatenate([g.ravel() for g in before.values()]))

    assert clip_gradients(model, 2 * norm) == pytest.approx(norm, rel=1e-12)
    for name in model.trainable:            # under the limit: untouched
        np.testing.assert_array_equal(model.grads[name], before[name])

    clip_gradients(model, norm / 4)
    for name in model.trainable:            # above: every gradient scaled by the same 1/4
        np.testing.assert_allclose(model.grads[name], before[name] / 4, rtol=1e-12)


def test_clip_grad_norm_must_be_a_non_negative_number(tmp_path):
    for bad in (-1.0, float("nan"), "5", True):
        with pytest.raises(ValueError, match="clip_grad_norm"):
            tiny_config(tmp_path, "bad", clip_grad_norm=bad).validate()


def test_warmup_is_a_fraction_of_the_run(tmp_path):
    for bad in (-0.1, 1.0, float("nan"), "0.05", True):
        with pytest.raises(ValueError, match="warmup"):
            tiny_config(tmp_path, "bad", warmup=bad).validate()
    # 5 % of a 200-step run: 10 steps rising to the poly schedule's value, then poly itself.
    config = tiny_config(tmp_path, "warm", warmup=0.05, schedule="poly", lr=0.02)
    warmed, plain = build_schedule(config, 200), build_schedule(tiny_config(tmp_path, "plain", schedule="poly", lr=0.02), 200)
    assert warmed(0) == pytest.approx(plain(0) / 10, rel=1e-12)
    assert warmed(4) == pytest.approx(plain(4) / 2, rel=1e-12)
    assert [warmed(k) for k in (9, 10, 199)] == [plain(k) for k in (9, 10, 199)]


def test_class_weights_fade_to_one_over_the_run(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "fade", anneal_class_weights=True), stream=io.StringIO())
    start = trainer.class_weights
    assert start is not None and not np.allclose(start, 1.0)      # sqrt weighting is on
    total = trainer.config.epochs * trainer.steps_per_epoch
    np.testing.assert_allclose(trainer.class_weights_at(0), start, rtol=1e-12)
    np.testing.assert_allclose(trainer.class_weights_at(total // 2), start ** (1 - (total // 2) / total),
                               rtol=1e-12)
    np.testing.assert_allclose(trainer.class_weights_at(total), 1.0, rtol=1e-12)

    fixed = Trainer(tiny_config(tmp_path, "fixed", anneal_class_weights=False), stream=io.StringIO())
    np.testing.assert_array_equal(fixed.class_weights_at(total), fixed.class_weights)
    unweighted = Trainer(tiny_config(tmp_path, "none", class_weighting="none"), stream=io.StringIO())
    assert unweighted.class_weights_at(0) is None


def test_the_loss_uses_the_faded_weights_at_every_step(tmp_path):
    seen = []
    trainer = Trainer(tiny_config(tmp_path, "steps", epochs=2, anneal_class_weights=True),
                      stream=io.StringIO())
    trainer.on_step = lambda t: seen.append(t.parallel.loss_fn.weight.copy())
    trainer.run()
    assert len(seen) == 2 * trainer.steps_per_epoch
    for step, weight in enumerate(seen):
        np.testing.assert_allclose(weight, trainer.class_weights_at(step), rtol=1e-12)
    assert not np.allclose(seen[0], seen[-1])


def test_prior_correction_recovers_the_class_probabilities_from_weighted_scores():
    """A weighted cross-entropy is smallest at softmax(s) proportional to w * p; the
    correction -log w must turn those scores back into p."""
    from npfcn.losses import CrossEntropyLoss, prior_correction

    p = np.array([0.6, 0.25, 0.1, 0.05])            # true class frequencies at one "pixel"
    w = np.array([0.5, 1.5, 2.0, 0.0])              # a zero weight: class never a target
    labels = np.repeat(np.arange(4), (p * 20).astype(int))[None, None, :]   # (1, 1, 20)
    loss = CrossEntropyLoss(weight=w)

    def gradient(scores):
        logits = np.broadcast_to(scores[None, :, None, None], (1, 4, 1, 20)).copy()
        loss.forward(logits, labels)
        return loss.backward().sum(axis=(0, 2, 3))

    minimiser = np.log(w * p + 1e-300)       # softmax of it is w p / sum(w p)
    minimiser[w == 0] = -50.0                # ... and a class of weight 0 gets (almost) nothing
    np.testing.assert_allclose(gradient(minimiser), 0.0, atol=1e-12)
    assert np.abs(gradient(np.log(p))).max() > 0.05          # the unweighted answer is not it

    corrected = minimiser[:3] + prior_correction(w)[:3]
    np.testing.assert_allclose(np.exp(corrected) / np.exp(corrected).sum(), p[:3] / p[:3].sum(),
                               rtol=1e-12)
    assert prior_correction(w)[3] == 0.0 and prior_correction(None) is None


def test_predictions_undo_the_class_weights(tmp_path, uninterrupted):
    """Validation, the checkpoint and `npfcn eval` all add the correction of the weights."""
    from npfcn.cli import main
    from npfcn.evaluate import predict_labels
    from npfcn.losses import prior_correction

    result, (_, _, meta) = uninterrupted
    trainer = Trainer.resume(result.run_dir, stream=io.StringIO())
    offset = meta["score_offset"]
    np.testing.assert_allclose(offset, prior_correction(trainer.class_weights), rtol=1e-12)
    x = np.random.default_rng(0).random((1, 3, 24, 24)).astype(np.float32)
    _, scores_raw = predict_labels(trainer.model, x)
    labels, scores = predict_labels(trainer.model, x, offset)
    np.testing.assert_allclose(scores - scores_raw, np.broadcast_to(
        np.asarray(offset, np.float32)[:, None, None], scores.shape[1:])[None], atol=1e-5)
    np.testing.assert_array_equal(labels, scores.argmax(axis=1))
    with pytest.raises(ValueError, match="score_offset has shape"):
        predict_labels(trainer.model, x, [0.0, 1.0])

    validation = trainer.validate()
    np.testing.assert_array_equal(
        validation.hist, evaluate(trainer.model, trainer.val_set, score_offset=offset).hist)
    forced = evaluate(trainer.model, trainer.val_set, score_offset=[1e4, 0, 0, 0, 0]).hist
    assert forced[:, 1:].sum() == 0 and forced[:, 0].sum() > 0      # the offset reaches the argmax

    out = tmp_path / "eval"
    best = load_checkpoint(os.path.join(result.run_dir, "best.npz"))
    assert main(["eval", "--checkpoint", os.path.join(result.run_dir, "best.npz"), "-o", str(out)]) == 0
    trainer.model.load_state_dict(best.model_state)
    expected = evaluate(trainer.model, trainer.val_set, score_offset=best.meta["score_offset"]).hist
    np.testing.assert_array_equal(json.load(open(out / "eval.json"))["confusion_matrix"], expected)

    unweighted = Trainer(tiny_config(tmp_path, "unweighted", class_weighting="none"), stream=io.StringIO())
    assert unweighted.score_offset is None and unweighted.meta("running")["score_offset"] is None


def test_flip_averaging_is_the_mean_of_both_views_and_mirrors_with_the_input(tmp_path, uninterrupted):
    from npfcn.cli import main
    from npfcn.evaluate import predict_labels

    result, (_, _, meta) = uninterrupted
    trainer = Trainer.resume(result.run_dir, stream=io.StringIO())
    model, offset = trainer.model, np.asarray(meta["score_offset"], np.float32)
    x = np.random.default_rng(1).random((2, 3, 20, 27)).astype(np.float32)
    model.eval()
    plain = model.forward(x).copy()
    mirrored_view = model.forward(x[..., ::-1].copy())[..., ::-1].copy()
    model.train()
    labels, scores = predict_labels(model, x, offset, flip=True)
    np.testing.assert_allclose(scores, (plain + mirrored_view) / 2 + offset[:, None, None],
                               rtol=1e-6, atol=1e-6)
    assert model.training                                   # the mode is restored
    labels_of_mirror, scores_of_mirror = predict_labels(model, x[..., ::-1].copy(), offset, flip=True)
    np.testing.assert_array_equal(scores_of_mirror, scores[..., ::-1])     # exactly
    np.testing.assert_array_equal(labels_of_mirror, labels[..., ::-1])

    out = tmp_path / "eval"
    checkpoint = os.path.join(result.run_dir, "best.npz")
    assert main(["eval", "--checkpoint", checkpoint, "--flip", "-o", str(out)]) == 0
    model.load_state_dict(load_checkpoint(checkpoint).model_state)
    expected = evaluate(model, trainer.val_set, score_offset=load_checkpoint(checkpoint).meta["score_offset"],
                        flip=True).hist
    np.testing.assert_array_equal(json.load(open(out / "eval.json"))["confusion_matrix"], expected)


def test_lars_scales_the_encoder_weights_only(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "lars", lars=0.05), stream=io.StringIO())
    encoder = {f"{name}.weight" for name in trainer.model.encoder.convs}
    assert trainer.optimizer.layerwise == encoder
    assert "fc7.weight" in encoder and "conv1_1.weight" in encoder
    # Not the biases, the zero-started score layers or the upsampling kernels.
    assert not {"conv1_1.bias", "score_fr.weight", "score_pool3.weight", "upscore8.weight"} & encoder
    off = Trainer(tiny_config(tmp_path, "nolars", lars=0.0), stream=io.StringIO())
    assert off.optimizer.layerwise == frozenset()


def test_lars_must_be_a_non_negative_number(tmp_path):
    for bad in (-0.1, float("nan"), "0.05", True):
        with pytest.raises(ValueError, match="lars"):
            tiny_config(tmp_path, "bad", lars=bad).validate()


def test_a_run_saved_before_lars_existed_resumes_without_it(tmp_path, uninterrupted):
    """A checkpoint whose config has no "lars" trained with plain SGD: resuming it must
    not switch LARS on (the default now) half way through."""
    from npfcn.train import save_checkpoint

    result, _ = uninterrupted
    old = load_checkpoint(os.path.join(result.run_dir, "last.npz"))
    meta = {key: value for key, value in old.meta.items()
            if key not in ("optimizer", "format", "version", "checksum")}
    meta["config"] = json.loads(json.dumps(meta["config"]))
    del meta["config"]["train"]["lars"]
    folder = tmp_path / "old"
    folder.mkdir()
    path = save_checkpoint(str(folder / "last.npz"), old.model_state, old.optimizer_state, meta)
    trainer = Trainer.resume(path, stream=io.StringIO())
    assert trainer.config.lars == 0.0 and trainer.optimizer.layerwise == frozenset()
    assert TrainConfig().lars > 0                       # while new runs use it


def test_the_trainer_turns_the_gradient_of_the_image_off(tmp_path):
    """Nothing in training needs dx of the image (test_models checks the gradients are
    the same without it)."""
    trainer = Trainer(tiny_config(tmp_path, "no-dx"), stream=io.StringIO())
    assert trainer.model.input_gradient is False
