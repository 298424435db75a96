"""Checkpoints: exact round trip, every kind of damage detected, atomic writes, no half-loads."""
import json
import os

import numpy as np
import pytest

from npfcn.train import checkpoint as ckpt
from npfcn.train.checkpoint import (CheckpointError, check_compatible, load_checkpoint, load_into,
                                    load_model, save_checkpoint)
from npfcn.models import build_model
from npfcn.optim import Adam

# A very narrow FCN-8s: every code path of a real model, a few hundred kB of weights.
TINY = dict(num_classes=3, width=1 / 32)


def trained_pair(seed=0):
    """A tiny model and an Adam optimizer after one real update (non-trivial state)."""
    model = build_model("fcn8s", seed=seed, **TINY)
    optimizer = Adam(model, lr=1e-3)
    x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x)))
    optimizer.step()
    return model, optimizer


META = {"epoch": 3, "step_in_epoch": 0, "class_names": ["bg", "a", "b"], "preprocessing": "unit",
        "rng": {"dropout": np.random.default_rng(5).bit_generator.state},
        "best_mean_iou": 0.5}


def test_round_trip_is_exact(tmp_path):
    model, optimizer = trained_pair()
    path = save_checkpoint(tmp_path / "a.npz", model, optimizer, META)
    loaded = load_checkpoint(path)
    assert set(loaded.model_state) == set(model.params)
    for name, value in model.params.items():
        assert loaded.model_state[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded.model_state[name], value)
    expected = optimizer.state_dict()
    assert set(loaded.optimizer_state) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded.optimizer_state[key], value)
    for key, value in META.items():
        assert loaded.meta[key] == value      # the PCG64 state's 128-bit ints survive JSON
    assert loaded.model_config == model.config


def test_load_model_and_optimizer_reproduce_the_state(tmp_path):
    model, optimizer = trained_pair()
    path = save_checkpoint(tmp_path / "a.npz", model, optimizer, META)
    rebuilt = load_model(path)
    assert rebuilt.config == model.config
    for name in model.params:
        np.testing.assert_array_equal(rebuilt.params[name], model.params[name])
    fresh = build_model("fcn8s", seed=1, **TINY)
    fresh_optimizer = Adam(fresh, lr=0.5)
    load_into(load_checkpoint(path), fresh, fresh_optimizer)
    assert fresh_optimizer.steps == optimizer.steps and fresh_optimizer.lr == optimizer.lr
    np.testing.assert_array_equal(fresh_optimizer.state["exp_avg"]["conv1_1.weight"],
                                  optimizer.state["exp_avg"]["conv1_1.weight"])


def test_float32_checkpoint_loads_into_float64_model(tmp_path):
    model, _ = trained_pair()
    path = save_checkpoint(tmp_path / "a.npz", model)
    double = load_model(path, dtype=np.float64)
    assert double.params["fc6.weight"].dtype == np.float64
    np.testing.assert_array_equal(double.params["fc6.weight"], model.params["fc6.weight"])


def test_save_leaves_no_temporary_files_and_replaces_atomically(tmp_path):
    model, optimizer = trained_pair()
    target = tmp_path / "last.npz"
    save_checkpoint(target, model, optimizer, {"epoch": 1})
    save_checkpoint(target, model, optimizer, {"epoch": 2})
    assert os.listdir(tmp_path) == ["last.npz"]
    assert load_checkpoint(target).meta["epoch"] == 2


def test_failed_write_keeps_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    model, optimizer = trained_pair()
    target = tmp_path / "last.npz"
    save_checkpoint(target, model, optimizer, {"epoch": 1})
    before = target.read_bytes()

    def crash(handle, **arrays):      # dies half way through writing, like a full disk
        handle.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.np, "savez", crash)
    with pytest.raises(OSError):
        save_checkpoint(target, model, optimizer, {"epoch": 2})
    assert os.listdir(tmp_path) == ["last.npz"]
    assert target.read_bytes() == before


def test_refuses_to_save_non_finite_weights(tmp_path):
    model, _ = trained_pair()
    model.params["conv3_1.weight"][0, 0, 0, 0] = np.nan
    with pytest.raises(CheckpointError, match="conv3_1.weight"):
        save_checkpoint(tmp_path / "a.npz", model)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_detected(tmp_path, fraction):
    model, optimizer = trained_pair()
    path = tmp_path / "a.npz"
    save_checkpoint(path, model, optimizer, META)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="a.npz"):
        load_checkpoint(path)


@pytest.mark.parametrize("position", [0.02, 0.3, 0.6, 0.95])
def test_flipped_byte_is_detected(tmp_path, position):
    model, optimizer = trained_pair()
    path = tmp_path / "a.npz"
    save_checkpoint(path, model, optimizer, META)
    data = bytearray(path.read_bytes())
    data[int(len(data) * position)] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="a.npz"):
        load_checkpoint(path)


def _rewrite(path, change):
    """Re-save a checkpoint's raw arrays after ``change(arrays, meta)``, bypassing the checks
    of save_checkpoint (as a buggy tool or a hand edit would)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    change(arrays, meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_checksum_catches_a_changed_weight_with_valid_zip(tmp_path):
    model, _ = trained_pair()
    path = tmp_path / "a.npz"
    save_checkpoint(path, model)

    def nudge(arrays, meta):
        arrays["model/fc7.bias"] = arrays["model/fc7.bias"] + np.float32(1e-3)

    _rewrite(path, nudge)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_checksum_covers_names_and_dtypes(tmp_path):
    model, _ = trained_pair()
    path = tmp_path / "a.npz"
    save_checkpoint(path, model)

    def rename(arrays, meta):
        arrays["model/fc7.bias_renamed"] = arrays.pop("model/fc7.bias")

    _rewrite(path, rename)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    save_checkpoint(path, model)
    _rewrite(path, lambda arrays, meta: arrays.__setitem__(
        "model/fc7.bias", arrays["model/fc7.bias"].astype(np.float64)))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_nan_weights_with_a_matching_checksum_are_refused(tmp_path):
    model, _ = trained_pair()
    path = tmp_path / "a.npz"
    save_checkpoint(path, model)

    def poison(arrays, meta):
        arrays["model/score_fr.weight"] = np.full_like(arrays["model/score_fr.weight"], np.inf)
        meta["checksum"] = ckpt._checksum(arrays)

    _rewrite(path, poison)
    with pytest.raises(CheckpointError, match="score_fr.weight.*NaN or inf"):
        load_checkpoint(path)


def test_other_format_versions_are_refused(tmp_path):
    model, _ = trained_pair()
    path = tmp_path / "a.npz"
    save_checkpoint(path, model)
    _rewrite(path, lambda arrays, meta: meta.__setitem__("version", 99))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)


@pytest.mark.parametrize("offset", [[0.0, 1.0], [0.0, 1.0, float("nan")], "abc", [0.0, True, 1.0]])
def test_a_bad_score_offset_is_refused(tmp_path, offset):
    model, _ = trained_pair()
    path = tmp_path / "a.npz"
    save_checkpoint(path, model, meta={"score_offset": [0.0, -1.0, 0.5]})
    assert load_checkpoint(path).meta["score_offset"] == [0.0, -1.0, 0.5]
    _rewrite(path, lambda arrays, meta: meta.__setitem__("score_offset", offset))
    with pytest.raises(CheckpointError, match=r"a\.npz: score_offset must hold one finite number "
                                              r"per class \(3 classes\)"):
        load_checkpoint(path)


def test_files_that_are_not_checkpoints(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="plain.npz.*not an npfcn checkpoint"):
        load_checkpoint(plain)
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.npz"):
        load_checkpoint(text)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("other", [dict(model="fcn16s", num_classes=3),
                                   dict(model="fcn8s", num_classes=4),
                                   dict(model="fcn8s", num_classes=3, width=1 / 16)])
def test_wrong_architecture_is_refused_and_nothing_is_loaded(tmp_path, other):
    model, _ = trained_pair()
    path = save_checkpoint(tmp_path / "a.npz", model)
    target = build_model(**{"width": 1 / 32, **other}, seed=7)
    before = target.state_dict()
    with pytest.raises(CheckpointError, match="a.npz"):
        load_into(load_checkpoint(path), target)
    for name, value in target.params.items():
        np.testing.assert_array_equal(value, before[name])


def test_shape_mismatch_is_found_even_when_the_config_agrees(tmp_path):
    model, _ = trained_pair()
    path = save_checkpoint(tmp_path / "a.npz", model)
    loaded = load_checkpoint(path)
    loaded.model_state["fc7.weight"] = loaded.model_state["fc7.weight"][:1]
    with pytest.raises(CheckpointError, match="fc7.weight"):
        check_compatible(loaded, build_model("fcn8s", **TINY))
