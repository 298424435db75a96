"""Never lose work: checkpoints are verified, written atomically and resume exactly.

* A checkpoint carries a format version and a SHA-256 of its arrays; the test
  recomputes that checksum from the documented recipe (name, dtype, shape,
  bytes, in name order) rather than calling the code under test.
* Every truncation and many flipped bytes of a checkpoint either fail with a
  CheckpointError naming the file, or (a flip in zip bookkeeping the arrays do
  not depend on) load exactly the saved arrays: never a silently different model.
* A refused load leaves the model and optimizer exactly as they were.
* A real ``npfcn train`` subprocess is killed with SIGKILL many times over,
  half the time while it is writing a checkpoint (the test watches for the
  temporary file and strikes inside the write), half at random moments; after
  every kill each checkpoint in the run folder loads, and the run is resumed.
  The run that was killed and resumed ends with exactly the weights and
  optimizer state of an uninterrupted run with the same seed.
* Ctrl-C (SIGINT) in the middle of an epoch saves the position inside the
  epoch, and the resumed run again matches the uninterrupted one bit for bit.

* A soak (slow tier, ``NPFCN_SLOW=1``): 300 training steps of a tiny FCN-8s
  through ``benchmarks/soak.py``; peak RSS early and late agree within 3 %, and
  a planted leak of 64 KiB per step is reported as a failure.

The kill loop runs 8 kills by default (under half a minute); ``NPFCN_SLOW=1``
runs 20 and the soak.
"""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from npfcn.train.checkpoint import (FORMAT_VERSION, CheckpointError, load_checkpoint, load_into,
                                    load_model, save_checkpoint)
from npfcn.models import build_model
from npfcn.optim import SGD, Adam

SLOW = os.environ.get("NPFCN_SLOW") == "1"


def tiny_model(seed=0, num_classes=3, model="fcn32s"):
    return build_model(model, num_classes=num_classes, width=0.015625, seed=seed)


def trained_pair(seed=0):
    """A tiny model and an Adam optimizer with non-zero state (one step taken)."""
    model = tiny_model(seed)
    optimizer = Adam(model, lr=1e-3)
    for name in model.trainable:
        model.grads[name][...] = np.random.default_rng(seed).standard_normal(model.grads[name].shape)
    optimizer.step()
    return model, optimizer


def snapshot(model, optimizer=None):
    state = {k: v.copy() for k, v in model.params.items()}
    if optimizer is not None:
        state.update({f"optimizer/{k}": np.array(v, copy=True)
                      for k, v in optimizer.state_dict().items()})
    return state


def assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), f"{key} differs"


def recomputed_checksum(arrays):
    """SHA-256 over (name, dtype, shape, bytes) of every array in name order, written here
    from the recipe in npfcn/train/checkpoint.py's docstring."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def raw_arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def write_raw_checkpoint(path, arrays, document):
    """A checkpoint assembled by hand (valid checksum), to plant problems save refuses."""
    document = dict(document, checksum=recomputed_checksum(arrays))
    payload = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    np.savez(path, **arrays, __meta__=payload)


# --- the file format ------------------------------------------------------------------------

def test_checkpoint_carries_format_version_and_checksum(tmp_path):
    model, optimizer = trained_pair()
    path = save_checkpoint(tmp_path / "ckpt.npz", model, optimizer, meta={"epoch": 3})
    arrays = raw_arrays(path)
    document = json.loads(arrays.pop("__meta__").tobytes())
    assert document["format"] == "npfcn-checkpoint"
    assert document["version"] == FORMAT_VERSION == 1
    assert document["checksum"] == recomputed_checksum(arrays)
    assert document["epoch"] == 3
    for name, value in model.params.items():       # every weight is stored as saved
        np.testing.assert_array_equal(arrays[f"model/{name}"], value)
    assert not [f for f in os.listdir(tmp_path) if f != "ckpt.npz"], "temporary files left behind"


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Disk full halfway through a save: the error reaches the caller, the previous
    checkpoint is untouched and no temporary file is left behind."""
    import errno
    import npfcn.train.checkpoint

    model, optimizer = trained_pair(seed=0)
    path = save_checkpoint(tmp_path / "last.npz", model, optimizer)
    before = open(path, "rb").read()

    def disk_full(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")          # some bytes reach the temp file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(npfcn.train.checkpoint.np, "savez", disk_full)
    other, other_optimizer = trained_pair(seed=1)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, other, other_optimizer)
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["last.npz"]
    assert_same_state(load_checkpoint(path).model_state, model.state_dict())


def test_every_truncation_fails_clearly(tmp_path):
    model, optimizer = trained_pair()
    good = tmp_path / "good.npz"
    save_checkpoint(good, model, optimizer)
    data = good.read_bytes()
    lengths = sorted({0, 1, 3, 4, 30, 100, len(data) // 3, len(data) // 2, len(data) - 22,
                      len(data) - 1, *np.linspace(0, len(data) - 1, 30).astype(int)})
    for length in lengths:
        cut = tmp_path / f"cut-{length}.npz"
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(cut)
        assert str(cut) in str(info.value), f"message does not name the file: {info.value}"


def test_flipped_bytes_fail_or_load_exactly(tmp_path):
    """A flipped byte is caught (checksum, zip CRC, header parse) unless it sits in zip
    bookkeeping no array depends on; then the arrays loaded are exactly the saved ones."""
    model, optimizer = trained_pair()
    good = tmp_path / "good.npz"
    save_checkpoint(good, model, optimizer)
    reference = raw_arrays(good)
    data = bytearray(good.read_bytes())
    positions = random.Random(0).sample(range(len(data)), 60)
    caught = 0
    for position in positions:
        bad = bytearray(data)
        bad[position] ^= 0xFF
        path = tmp_path / f"flip-{position}.npz"
        path.write_bytes(bytes(bad))
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            caught += 1
        else:
            assert_same_state(raw_arrays(path), reference)
    # Most of the file is array payload: nearly every flip must be caught.
    assert caught >= 0.8 * len(positions), f"only {caught} of {len(positions)} flips detected"


def test_nan_weights_with_a_valid_checksum_are_refused(tmp_path):
    model = tiny_model()
    arrays = {f"model/{k}": v.copy() for k, v in model.params.items()}
    name = sorted(arrays)[-1]
    arrays[name].flat[0] = np.nan
    path = tmp_path / "nan.npz"
    write_raw_checkpoint(path, arrays, {"format": "npfcn-checkpoint", "version": 1,
                                        "config": {"model": model.config}})
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refusing to save"):   # and saving refuses it
        bad = tiny_model()
        bad.params[name[len("model/"):]].flat[0] = np.inf
        save_checkpoint(tmp_path / "inf.npz", bad)
    assert not (tmp_path / "inf.npz").exists()


def test_a_newer_format_version_is_refused(tmp_path):
    model = tiny_model()
    arrays = {f"model/{k}": v for k, v in model.params.items()}
    path = tmp_path / "v2.npz"
    write_raw_checkpoint(path, arrays, {"format": "npfcn-checkpoint", "version": 2,
                                        "config": {"model": model.config}})
    with pytest.raises(CheckpointError, match="version 2"):
        load_checkpoint(path)


def tampered_metadata(tmp_path, change):
    """A good checkpoint whose JSON metadata (outside the checksum) was edited by ``change``."""
    model = tiny_model()
    good = save_checkpoint(tmp_path / "good.npz", model,
                           meta={"config": {"train": {"model": "fcn32s", "width": 0.015625}}})
    arrays = raw_arrays(good)
    document = json.loads(arrays.pop("__meta__").tobytes())
    change(document["config"])
    path = tmp_path / "tampered.npz"
    np.savez(path, **arrays, __meta__=np.frombuffer(json.dumps(document).encode(), np.uint8))
    return path


@pytest.mark.parametrize("change", [
    lambda c: c["model"].update(width=0.25),          # 16x the weights: tens of MB if built
    lambda c: c["model"].update(num_classes=40),
    lambda c: c["model"].update(model="fcn8s"),
    lambda c: c["model"].update(width=-1),
    lambda c: c["train"].update(width=0.25),          # what a resumed run would build
], ids=["width", "num_classes", "architecture", "negative-width", "training-width"])
def test_corrupted_metadata_is_refused_before_any_model_is_built(tmp_path, change):
    """The metadata is not checksummed, and models are rebuilt from it: the recorded
    architecture is checked against the stored arrays first.  (A corrupted width of 64
    once had load_model allocate 22 GB.)  tracemalloc shows nothing model-sized is made."""
    path = tampered_metadata(tmp_path, change)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="corrupted metadata|invalid"):
            load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2 ** 20, f"{peak} bytes allocated before the refusal"


# --- a refused load changes nothing -----------------------------------------------------------

@pytest.mark.parametrize("problem", ["other-classes", "other-architecture", "last-weight-shape",
                                     "optimizer-kind", "truncated"])
def test_a_refused_load_never_half_loads(tmp_path, problem):
    model, optimizer = trained_pair(seed=0)
    before = snapshot(model, optimizer)
    path = tmp_path / f"{problem}.npz"
    if problem == "other-classes":
        other = tiny_model(seed=1, num_classes=5)
        save_checkpoint(path, other, Adam(other))
    elif problem == "other-architecture":
        other = tiny_model(seed=1, model="fcn8s")
        save_checkpoint(path, other, Adam(other))
    elif problem == "last-weight-shape":
        # Every weight fits except the last one in name order: a loader that assigned
        # as it went would have changed all the others by the time it noticed.
        other = tiny_model(seed=1)
        state = other.state_dict()
        last = sorted(state)[-1]
        state[last] = np.zeros(state[last].shape + (1,), dtype=state[last].dtype)
        save_checkpoint(path, state, meta={"config": {}})
    elif problem == "optimizer-kind":
        other = tiny_model(seed=1)
        save_checkpoint(path, other, SGD(other, lr=0.1))
    else:
        other, other_optimizer = trained_pair(seed=1)
        save_checkpoint(path, other, other_optimizer)
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_into(path, model, optimizer)
    assert_same_state(snapshot(model, optimizer), before)


# --- killed training runs -----------------------------------------------------------------------

# Two steps per epoch and a checkpoint at the end of every epoch (last.npz, and best.npz
# when the validation IoU improves): a tiny FCN-8s on 8x8 synthetic images.
EPOCHS = 30
TRAIN_ARGS = ["--model", "fcn8s", "--width", "0.015625", "--image-size", "8", "--num-train", "4",
              "--num-val", "1", "--batch-size", "2", "--epochs", str(EPOCHS), "--seed", "3"]
# The same BLAS/OpenMP threading in every process, so runs are comparable bit for bit.
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONUNBUFFERED="1")


def npfcn_train(output, name, *extra, resume=None):
    """Start ``python -m npfcn train`` (fresh, or resuming ``resume``) as a subprocess."""
    if resume:
        argv = ["--resume", resume]
    else:
        argv = [*TRAIN_ARGS, "--output", str(output), "--name", name]
    with open(os.path.join(output, f"{name}.log"), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "npfcn", "train", *argv, *extra],
                                stdout=log, stderr=log, env=ENV)


def final_state(run_dir, epochs=None):
    """(weights, optimizer arrays, global step) of a finished run's last.npz."""
    checkpoint = load_checkpoint(os.path.join(run_dir, "last.npz"))
    assert checkpoint.meta["status"] == "epoch"
    assert checkpoint.meta["epoch"] == (epochs or EPOCHS)
    optimizer = {k: np.asarray(v) for k, v in checkpoint.optimizer_state.items()}
    return checkpoint.model_state, optimizer, checkpoint.meta["global_step"]


def assert_same_training_state(a, b):
    (weights_a, optim_a, steps_a), (weights_b, optim_b, steps_b) = a, b
    assert steps_a == steps_b
    assert_same_state(weights_a, weights_b)
    assert sorted(optim_a) == sorted(optim_b)
    for key in optim_a:
        if optim_a[key].dtype.kind in "fiu":
            assert np.array_equal(optim_a[key], optim_b[key]), f"optimizer {key} differs"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run, never interrupted."""
    output = tmp_path_factory.mktemp("reference")
    process = npfcn_train(str(output), "reference")
    assert process.wait(timeout=300) == 0, (output / "reference.log").read_text()
    return final_state(output / "reference")


def temporary_files(run_dir):
    try:
        return {f for f in os.listdir(run_dir) if ".tmp-" in f}
    except FileNotFoundError:
        return set()


def kill_inside_a_write(process, run_dir, rng, timeout=60):
    """SIGKILL ``process`` a random 0-5 ms after a new checkpoint temp file appears
    (a write takes about 20 ms here, most of it in fsync)."""
    seen = temporary_files(run_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if temporary_files(run_dir) - seen:
            time.sleep(rng.uniform(0.0, 0.005))
            break
        time.sleep(0.0005)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def every_checkpoint_loads(run_dir):
    """Load (and rebuild the model of) every checkpoint in the folder; returns their names."""
    names = sorted(f for f in os.listdir(run_dir) if f.endswith(".npz"))
    for name in names:
        checkpoint = load_checkpoint(os.path.join(run_dir, name))
        model = load_model(checkpoint)
        assert model.num_classes == len(checkpoint.meta["class_names"])
        assert 1 <= checkpoint.meta["epoch"] <= EPOCHS
    return names


def test_sigkill_during_writes_never_loses_a_checkpoint_and_resume_is_exact(tmp_path, uninterrupted):
    """Kill, check every checkpoint, resume, kill again...  Every run that reaches its
    end (however often it was killed) must equal the uninterrupted reference exactly."""
    rng = random.Random(2026)
    kills = 20 if SLOW else 8
    inside_write = loaded = finished = 0
    run = 0
    for round_number in range(kills):
        name = f"killed-{run}"
        run_dir = tmp_path / name
        resume = str(run_dir) if (run_dir / "last.npz").exists() else None
        before = temporary_files(run_dir)
        process = npfcn_train(str(tmp_path), name, resume=resume)
        if round_number % 2 == 0:
            code = kill_inside_a_write(process, run_dir, rng)
        else:
            time.sleep(rng.uniform(0.5, 2.0))
            process.send_signal(signal.SIGKILL)
            code = process.wait()
        if code == 0:           # it reached the end before the kill: check it, start another
            assert_same_training_state(final_state(run_dir), uninterrupted)
            finished, run = finished + 1, run + 1
            continue
        assert code == -signal.SIGKILL, (tmp_path / f"{name}.log").read_text()[-2000:]
        # A temp file that is still there was being written when the process died.
        inside_write += bool(temporary_files(run_dir) - before)
        if run_dir.exists():
            loaded += len(every_checkpoint_loads(run_dir))

    # Finish the current run (resuming from whatever the last kill left) and compare.
    run_dir = tmp_path / f"killed-{run}"
    resume = str(run_dir) if (run_dir / "last.npz").exists() else None
    process = npfcn_train(str(tmp_path), f"killed-{run}", resume=resume)
    assert process.wait(timeout=300) == 0, (tmp_path / f"killed-{run}.log").read_text()[-2000:]
    every_checkpoint_loads(run_dir)
    assert_same_training_state(final_state(run_dir), uninterrupted)
    print(f"\n{kills} SIGKILLs ({inside_write} inside a checkpoint write), {loaded} checkpoints "
          f"loaded after them, {finished + 1} killed-and-resumed runs equal to the reference")
    assert inside_write >= kills // 4, "too few kills landed inside a write to test atomicity"
    assert loaded >= 1


# Eight steps per epoch, so that Ctrl-C usually lands inside an epoch.
LONG_EPOCH_ARGS = ["--num-train", "16", "--epochs", "3"]


@pytest.fixture(scope="module")
def uninterrupted_long_epochs(tmp_path_factory):
    output = tmp_path_factory.mktemp("reference-long")
    process = npfcn_train(str(output), "reference", *LONG_EPOCH_ARGS)
    assert process.wait(timeout=300) == 0, (output / "reference.log").read_text()
    return final_state(output / "reference", epochs=3)


def test_ctrl_c_mid_epoch_then_resume_matches_the_uninterrupted_run(tmp_path,
                                                                    uninterrupted_long_epochs):
    rng = random.Random(7)
    for attempt in range(3):       # until an interruption lands inside an epoch
        name = f"interrupted-{attempt}"
        run_dir = tmp_path / name
        process = npfcn_train(str(tmp_path), name, *LONG_EPOCH_ARGS)
        # metrics.json is the last file the end of an epoch writes (after the checkpoint
        # and the pictures): once it exists, the run is training its second epoch.
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.json").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
        if code == 0:
            continue                # finished before Ctrl-C arrived
        assert code == 130, (tmp_path / f"{name}.log").read_text()[-2000:]
        saved = load_checkpoint(run_dir / "last.npz").meta
        if saved["step_in_epoch"] > 0:
            break
    else:
        pytest.fail("Ctrl-C never landed inside an epoch in 3 attempts")
    assert saved["status"] == "interrupted"
    print(f"\nCtrl-C saved epoch {saved['epoch'] + 1} at step {saved['step_in_epoch']} of 8")
    process = npfcn_train(str(tmp_path), name, resume=str(run_dir))
    assert process.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    assert_same_training_state(final_state(run_dir, epochs=3), uninterrupted_long_epochs)


# --- soak ---------------------------------------------------------------------------------------

SOAK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                    "soak.py")


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="soak test (slow tier): set NPFCN_SLOW=1")
def test_soak_peak_rss_early_and_late_agree(tmp_path):
    """300 training steps: peak RSS of steps 60-120 and 240-300 within 3 %; and the same
    script does report a planted leak of 64 KiB per step (about 19 MiB in all)."""
    clean = subprocess.run([sys.executable, SOAK, "--steps", "300", "--output", str(tmp_path / "clean")],
                           capture_output=True, text=True, env=ENV, timeout=900)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    result = json.loads((tmp_path / "clean" / "soak.json").read_text())
    print(f"\nsoak: peak RSS {result['early_peak_rss_mib']} MiB early, "
          f"{result['late_peak_rss_mib']} MiB late ({result['growth']:+.2%})")
    assert result["growth"] <= 0.03 and (tmp_path / "clean" / "soak.png").exists()

    leaky = subprocess.run([sys.executable, SOAK, "--steps", "300", "--plant-leak", "64",
                            "--output", str(tmp_path / "leaky")],
                           capture_output=True, text=True, env=ENV, timeout=900)
    assert leaky.returncode == 1, leaky.stdout + leaky.stderr[-2000:]
    assert json.loads((tmp_path / "leaky" / "soak.json").read_text())["growth"] > 0.03
