"""Data-parallel training on MPI (npfcn.train.distributed, npfcn.train.launch).

Without MPI: the slices of a batch add up to the batch's loss and gradient, how many
processes a run starts, the launcher's command, the --replicas alias.  With MPI (skipped
cleanly when mpi4py or an MPI launcher is missing, or two ranks cannot start): 2 ranks
give the weights of 1 process to float rounding, a run resumes with another number of
processes, a killed rank stops the run with a message naming it and the last checkpoint
resumes, a rank that cannot read its data stops every rank with its one-line error.
"""
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import npfcn.train.launch as launch
from npfcn.cli import main
from npfcn.losses import CrossEntropyLoss, weight_total
from npfcn.train import TrainConfig, load_checkpoint, train
from npfcn.train.distributed import DataParallel, FlatGradients, World, shard_bounds, \
    stop_all_on_error

from test_train import final_state, tiny_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The tiny run of test_train.tiny_config as command-line flags.
TINY_FLAGS = ["--width", "0.03125", "--image-size", "24", "--num-train", "6", "--num-val", "3",
              "--batch-size", "3"]


# -- without MPI ---------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size,ranks,expected", [
    (4, 2, [(0, 2), (2, 4)]), (3, 2, [(0, 2), (2, 3)]), (1, 2, [(0, 1), (1, 1)]),
    (5, 3, [(0, 2), (2, 4), (4, 5)]), (2, 1, [(0, 2)])])
def test_slices_cover_the_batch_in_order(batch_size, ranks, expected):
    assert shard_bounds(batch_size, ranks) == expected


def test_slice_losses_with_the_batch_denominator_add_up_to_the_batch_loss():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 4, 5, 6))
    target = rng.integers(0, 4, (3, 5, 6))
    target[1, 0] = 255
    weight = np.array([0.5, 1.0, 2.0, 3.0])
    whole = CrossEntropyLoss(weight=weight)
    expected = whole.forward(logits, target)
    expected_grad = whole.backward()
    denominator = weight_total(target, weight)
    counted = target[target != 255]     # the denominator: the weights of the counted pixels
    assert denominator == pytest.approx(weight[counted].sum(), rel=1e-15)
    parts, grads = 0.0, []
    for part in (slice(0, 1), slice(1, 3)):
        loss = CrossEntropyLoss(weight=weight)
        parts += loss.forward(logits[part], target[part], denominator=denominator)
        grads.append(loss.backward())
    # float64, only the order of additions differs: 1e-13 relative is ~500 ulp of margin.
    assert parts == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(np.concatenate(grads), expected_grad, rtol=1e-13, atol=1e-16)


def test_the_gradients_live_in_one_flat_buffer():
    from mpi_steps import batch, perturbed_model

    model = perturbed_model(np.float64)
    flat = FlatGradients(model, extra=2)
    x, y = batch(2, 0)
    DataParallel(model, World(), lovasz=0.5).forward_backward(x, y)
    assert all(np.shares_memory(model.grads[name], flat.buffer) for name in model.trainable)
    assert all(model.grads[name].ctypes.data % 64 == 0 for name in model.trainable)
    for name in model.trainable:            # the buffer holds what backward computed
        start = (model.grads[name].ctypes.data - flat.buffer.ctypes.data) // 8
        np.testing.assert_array_equal(flat.buffer[start:start + model.grads[name].size],
                                      model.grads[name].ravel())
    assert np.any(flat.buffer != 0) and flat.extra.shape == (2,)
    assert flat.extra.base is flat.buffer.base or np.shares_memory(flat.extra, flat.buffer)


@pytest.mark.parametrize("requested,threads,batch_size,expected", [
    (None, 2, 2, 2), (0, 4, 2, 2), (None, 1, 2, 1), (None, 2, 1, 1), (None, 8, 5, 5), (3, 1, 2, 3),
    (1, 2, 2, 1)])
def test_one_process_per_thread_but_at_most_one_per_image(requested, threads, batch_size, expected):
    assert launch.process_count(requested, batch_size, threads) == expected


def test_without_mpi_one_process_and_a_hint_how_to_get_more(monkeypatch):
    monkeypatch.setattr(launch, "mpi_available", lambda: False)
    monkeypatch.setattr(launch, "current_threads", lambda: 2)
    stream = io.StringIO()
    assert launch.plan(None, 2, stream) == 1
    assert "pip install 'npfcn[mpi]'" in stream.getvalue() and stream.getvalue().count("\n") == 1
    quiet = io.StringIO()
    assert launch.plan(None, 1, quiet) == 1 and quiet.getvalue() == ""   # 1 is all that pays
    with pytest.raises(ValueError, match=r"--procs 2 needs MPI: pip install 'npfcn\[mpi\]'"):
        launch.plan(2, 2)


def test_the_launch_command_runs_this_npfcn_and_may_run_as_root(monkeypatch):
    monkeypatch.setattr(launch, "_is_open_mpi", lambda launcher: True)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    command, env = launch.launch_command(2, ["train", "--epochs", "1"], launcher="/x/mpiexec")
    assert command[0] == "/x/mpiexec" and ["--bind-to", "none"] == command[1:3]
    assert command[command.index("-n"):] == ["-n", "2", sys.executable, "-m", "npfcn", "train",
                                             "--epochs", "1"]
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_when_mpi_cannot_start_the_default_run_trains_in_one_process(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(launch, "mpi_available", lambda: True)
    monkeypatch.setattr(launch, "current_threads", lambda: 2)
    broken = [sys.executable, "-c", "import sys; sys.exit(3)"]      # an MPI that cannot start
    monkeypatch.setattr(launch, "launch_command", lambda count, argv: (broken, dict(os.environ)))
    common = ["train", *TINY_FLAGS, "--epochs", "1", "--output", str(tmp_path)]
    assert main(common + ["--name", "auto"]) == 0
    err = capsys.readouterr().err
    assert "could not start 2 processes (exit code 3); training in one process" in err
    assert (tmp_path / "auto" / "last.npz").exists()
    assert main(common + ["--name", "asked", "--procs", "2"]) == 1       # asked for: an error
    assert "could not start 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "asked" / "last.npz").exists()


def test_configs_saved_with_replicas_still_load():
    assert TrainConfig.from_dict({"replicas": 2, "epochs": 3}).epochs == 3


def test_replicas_is_an_alias_of_procs_that_says_so(tmp_path, capsys):
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--output", str(tmp_path),
                 "--name", "alias", "--replicas", "1"]) == 0
    err = capsys.readouterr().err
    assert "--replicas is now --procs" in err and "processes (MPI ranks)" not in err
    assert (tmp_path / "alias" / "last.npz").exists()


def test_info_says_how_to_get_mpi(monkeypatch):
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name: None)
    assert "pip install 'npfcn[mpi]'" in launch.describe_mpi()


def test_one_process_passes_errors_on():
    with pytest.raises(ValueError, match="boom"):
        with stop_all_on_error(World()):
            raise ValueError("boom")


# -- with MPI ------------------------------------------------------------------------------

def _mpi_problem():
    """Why two MPI ranks cannot run here, or None."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'npfcn[mpi]')"
    if launch.find_launcher() is None:
        return "no mpiexec found"
    command, env = launch.launch_command(2, [])
    command = command[:command.index(sys.executable)] + [
        sys.executable, "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"mpiexec did not run: {exc}"
    if done.returncode:
        return f"mpiexec -n 2 failed: {done.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def mpi():
    problem = _mpi_problem()
    if problem:
        pytest.skip(problem)


def mpirun(args, timeout=120, **kwargs):
    """``mpiexec -n 2 python <args>`` as npfcn would start it; returns CompletedProcess."""
    command, env = launch.launch_command(2, [])
    command = command[:command.index(sys.executable) + 1] + list(args)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def npfcn_train(*args, procs=2):
    """``python -m npfcn train ... --procs N`` (which starts mpiexec itself)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "npfcn", "train", *args, "--procs", str(procs)],
                          capture_output=True, text=True, timeout=180, env=env)


def test_two_ranks_give_the_weights_of_one_process(mpi, tmp_path):
    from mpi_steps import run

    done = mpirun([str(HERE / "mpi_steps.py"), str(tmp_path / "two.npz")])
    assert done.returncode == 0, done.stderr
    two = np.load(tmp_path / "two.npz")
    assert int(two["size"]) == 2
    # After 3 SGD steps only the order of the float additions differs: float64 agrees
    # to ~1e-12 of each tensor's scale (thousands of ulp), float32 to 1e-4 (~1000 ulp).
    for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-4)):
        tag = np.dtype(dtype).name
        weights, hist, losses = run(World(), dtype)
        np.testing.assert_allclose(two[f"{tag}/losses"], losses, rtol=tolerance * 10)
        for name, value in weights.items():
            scale = max(float(np.abs(value).max()), 1e-6)
            np.testing.assert_allclose(two[f"{tag}/{name}"], value, rtol=0, atol=tolerance * scale,
                                       err_msg=f"{tag} {name}")
        # The validation split across ranks counts every pixel once, as one process does.
        assert two[f"{tag}/hist"].sum() == hist.sum() == 5 * 24 * 24
        if dtype == np.float64:
            np.testing.assert_array_equal(two[f"{tag}/hist"], hist)


def close_to(weights, reference):
    """float32 runs of 4 steps, summed in other orders: within 1e-3 of each tensor's scale."""
    for name, value in reference.items():
        np.testing.assert_allclose(weights[name], value, rtol=0,
                                   atol=1e-3 * max(float(np.abs(value).max()), 1e-6), err_msg=name)


def test_a_run_resumes_with_another_number_of_processes(mpi, tmp_path):
    # Every run trains epoch 1 of a 1-epoch run, then is resumed and extended to 2 epochs
    # (the learning-rate schedule follows the run's length: this is what "the same run" is).
    reference = train(tiny_config(tmp_path, "one", epochs=1), stream=io.StringIO())
    train(resume=reference.run_dir, epochs=2, stream=io.StringIO())
    expected = final_state(reference.run_dir)[0]
    # Epoch 1 on two ranks, epoch 2 in one process.
    done = npfcn_train(*TINY_FLAGS, "--epochs", "1", "--output", str(tmp_path), "--name", "two")
    assert done.returncode == 0, done.stderr
    assert "2 processes (MPI ranks) share every batch" in done.stderr
    assert done.stderr.count("epoch 1/1") == 1                  # rank 0 alone reports
    for name in ("last.npz", "best.npz", "metrics.json", "samples.png", "curves.png"):
        assert (tmp_path / "two" / name).exists(), name
    train(resume=str(tmp_path / "two"), epochs=2, stream=io.StringIO())
    close_to(final_state(tmp_path / "two")[0], expected)
    # Epoch 1 in one process, epoch 2 on two ranks.
    mixed = train(tiny_config(tmp_path, "mixed", epochs=1), stream=io.StringIO()).run_dir
    done = npfcn_train("--resume", mixed, "--epochs", "2")
    assert done.returncode == 0, done.stderr
    meta = final_state(mixed)[2]
    assert (meta["epoch"], meta["global_step"]) == (2, 4)
    close_to(final_state(mixed)[0], expected)


def _rank_pid(marker, rank):
    """The pid of MPI rank ``rank`` whose command line contains ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [v for v in environ if v.startswith((b"OMPI_COMM_WORLD_RANK=", b"PMI_RANK="))]
        if marker in command and "-m npfcn" in command and ranks \
                and ranks[0].split(b"=")[1] == str(rank).encode():
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a rank")
def test_a_killed_rank_stops_the_run_and_the_last_checkpoint_resumes(mpi, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    name = f"killed-{os.getpid()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "npfcn", "train", "--width", "0.03125", "--image-size", "24",
         "--num-train", "60", "--num-val", "3", "--batch-size", "2", "--epochs", "50",
         "--output", str(tmp_path), "--name", name, "--procs", "2"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    last = tmp_path / name / "last.npz"
    try:
        deadline = time.monotonic() + 90
        while not last.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert last.exists(), "no checkpoint was written"
        pid = _rank_pid(name, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, err = process.communicate(timeout=30)
        stopped = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert stopped < 15, f"the other rank took {stopped:.0f} s to stop"
    assert "rank 1" in err, err                           # MPI's message names the rank
    assert "the last checkpoint is kept" in err
    checkpoint = load_checkpoint(last)
    assert checkpoint.meta["epoch"] >= 1
    result = train(resume=str(tmp_path / name), epochs=checkpoint.meta["epoch"] + 1,
                   stream=io.StringIO())
    assert result.status == "complete"


def test_ctrl_c_stops_every_rank_and_rank_0_saves(mpi, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "npfcn", "train", "--width", "0.03125", "--image-size", "24",
         "--num-train", "60", "--num-val", "3", "--batch-size", "2", "--epochs", "50",
         "--output", str(tmp_path), "--name", "stopped", "--procs", "2"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    last = tmp_path / "stopped" / "last.npz"
    try:
        deadline = time.monotonic() + 90
        while not last.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert last.exists(), "no checkpoint was written"
        process.send_signal(signal.SIGINT)            # what a Ctrl-C at the terminal sends
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err.count("state saved in") == 1 and "--resume" in err, err
    assert "non-zero status" not in err and "npfcn: error" not in err, err
    meta = load_checkpoint(last).meta
    assert meta["epoch"] * 30 + meta["step_in_epoch"] == meta["global_step"] > 0


def _folder_dataset(root, corrupt=False):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for index in range(2):
            image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"i{index}.png")
            Image.fromarray((rng.integers(0, 2, (16, 16))).astype(np.uint8)).save(
                root / split / "masks" / f"i{index}.png")
    if corrupt:
        path = root / "train" / "images" / "i1.png"
        path.write_bytes(path.read_bytes()[:40])


def test_a_rank_that_cannot_read_its_data_stops_every_rank(mpi, tmp_path):
    if not launch._is_open_mpi(launch.find_launcher()):
        pytest.skip("the per-rank working folders use Open MPI's --wdir")
    # The same relative --data folder seen from two working folders, as on two machines:
    # rank 1's copy has a truncated image.
    for name, corrupt in (("a", False), ("b", True)):
        _folder_dataset(tmp_path / name / "data", corrupt=corrupt)
    args = [sys.executable, "-m", "npfcn", "train", "--data", "data", "--width", "0.03125",
            "--epochs", "1", "--batch-size", "2", "--output", str(tmp_path / "runs")]
    command, env = launch.launch_command(2, [])
    prefix = command[:command.index("-n")]
    command = prefix + ["-n", "1", "--wdir", str(tmp_path / "a"), *args, ":",
                        "-n", "1", "--wdir", str(tmp_path / "b"), *args]
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert time.monotonic() - started < 60
    # Open MPI may put a space or a NUL byte before a forwarded line
    lines = [line.strip("\0 \t\r") for line in done.stderr.splitlines()
             if line.strip("\0 \t\r").startswith("npfcn: error:")]
    assert lines and "process 1 of 2" in lines[0] and "i1.png" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
