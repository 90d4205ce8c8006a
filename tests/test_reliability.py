"""Interrupted, concurrent and failing runs: the output folder is never left damaged or stuck."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
from test_train import (
    EPOCHS,
    STEPS_PER_EPOCH,
    TRAIN_ARGS,
    _env,
    fake_cifar,
    interrupt_after,
    snapshot,
    write_archive,
)

import skscratch.checkpoint
from skscratch.models import PRESETS
from skscratch.runs import LOCK, TrainingError, exclusive
from skscratch.train import TrainConfig, run_training

CONFIG = TrainConfig(epochs=2, batch_size=32, subset=64, test_subset=16)


def train(out, **kwargs):
    return run_training(
        fake_cifar(), out, model_config=PRESETS["tiny"], config=CONFIG, progress=False, **kwargs
    )


def test_a_second_run_on_a_folder_in_use_refuses(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with exclusive(out):  # as a run in progress holds it
        with pytest.raises(TrainingError, match="in use by another training run"):
            train(out)
        with pytest.raises(TrainingError, match="in use by another training run"):
            train(out, resume=True)
    assert not (out / "checkpoint.npz").exists()


def test_the_lock_of_a_killed_run_does_not_stay(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from skscratch.runs import exclusive\n"
            "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainingError, match="in use"):
            train(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (out / LOCK).exists()  # the file stays, but nothing holds it any more
    history = train(out)
    assert len(history) == 2


def test_an_output_path_that_cannot_be_a_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainingError, match="cannot create the output folder"):
        train(blocker / "run")


def test_a_full_disk_keeps_the_previous_checkpoint_and_metrics(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_savez = np.savez
    calls = {"n": 0}

    def savez_that_fills_the_disk(f, **arrays):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_savez(f, **arrays)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(skscratch.checkpoint.np, "savez", savez_that_fills_the_disk)
    with pytest.raises(TrainingError, match="No space left on device") as info:
        train(out)
    assert "previous checkpoint" in str(info.value)
    before = snapshot(out)
    assert sorted(before) == ["checkpoint.npz", "metrics.jsonl"], sorted(before)
    assert before["metrics.jsonl"].count(b"\n") == 1  # epoch 1, whole
    # The checkpoint of epoch 1 is whole and resumes.
    monkeypatch.setattr(skscratch.checkpoint.np, "savez", real_savez)
    history = train(out, resume=True)
    assert [h["epoch"] for h in history] == [1, 2]


def test_sigterm_leaves_a_checkpoint_that_resumes_bit_for_bit(tmp_path):
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar())
    command = [sys.executable, "-m", "skscratch", "train", "--data", str(archive), *TRAIN_ARGS]
    subprocess.run(
        [*command, "--out", str(tmp_path / "a")], check=True, env=_env(), capture_output=True
    )
    proc = subprocess.Popen(
        [*command, "--out", str(tmp_path / "b")],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    step = int(np.random.default_rng(7).integers(2, EPOCHS * STEPS_PER_EPOCH - 6))
    interrupt_after(proc, step, sig=signal.SIGTERM)
    proc.stderr.read()
    assert proc.wait(timeout=300) == 130
    subprocess.run(
        [*command[:4], "--out", str(tmp_path / "b"), "--resume", "--data", str(archive)],
        check=True,
        env=_env(),
        capture_output=True,
    )
    with (
        np.load(tmp_path / "a" / "checkpoint.npz", allow_pickle=False) as a,
        np.load(tmp_path / "b" / "checkpoint.npz", allow_pickle=False) as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            if key != "meta":
                assert np.array_equal(a[key], b[key]), key


def test_a_checkpoint_from_a_newer_format_says_so(tmp_path):
    from skscratch.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint

    path = tmp_path / "future.npz"
    skscratch.checkpoint.save_checkpoint(
        path, {"format_version": FORMAT_VERSION + 1}, {"w": np.zeros(2)}, {}
    )
    with pytest.raises(CheckpointError, match=rf"format {FORMAT_VERSION + 1}.*Upgrade"):
        load_checkpoint(path)


def test_a_checkpoint_holding_a_pickle_is_refused_without_running_it(tmp_path):
    from skscratch.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array('{"format_version": 1}'), **{"model.w": np.array([Payload()])})
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_kill_while_writing_a_checkpoint_keeps_the_old_one(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    path = out / "checkpoint.npz"
    path.write_bytes(b"the previous checkpoint")
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from skscratch.checkpoint import atomic_write\n"
            "def write(f):\n"
            "    f.write(b'half of a new one'); f.flush(); print('writing', flush=True)\n"
            "    time.sleep(600)\n"
            "atomic_write(Path(sys.argv[1]), write)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert path.read_bytes() == b"the previous checkpoint"
    leftovers = list(out.glob(".checkpoint.npz.*.tmp"))
    assert len(leftovers) == 1  # the killed writer's temporary file
    with exclusive(out):  # the next run clears it
        assert not list(out.glob(".checkpoint.npz.*.tmp"))
    assert path.read_bytes() == b"the previous checkpoint"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "-1"], "--epochs: must be at least 1"),
        (["train", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["train", "--lr", "nan"], "--lr: must be positive"),
        (["train", "--schedule", "linear"], "invalid choice: 'linear'"),
        (["train", "--model", "huge"], "invalid choice: 'huge'"),
        (["analyze", "x.npz", "--factors", "0.5"], "factors must be at least 1"),
        (["evaluate"], "the following arguments are required: checkpoint"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_command_line_nonsense_is_one_line_and_status_2(capsys, args, message):
    from skscratch import cli

    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


def test_a_batch_larger_than_the_data_is_one_line_and_status_2(capsys, tmp_path):
    from skscratch import cli

    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar(n_train=20))
    code = cli.main(
        [
            "train",
            "--data",
            str(archive),
            "--batch-size",
            "64",
            "--out",
            str(tmp_path / "run"),
            "--model",
            "tiny",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "larger than the 20 training images" in err, err


def test_an_unwritable_output_folder_is_a_clear_error_before_training(tmp_path, monkeypatch):
    # Permission bits do not stop root (which CI may be), so the refusal is simulated where
    # the run first writes: taking the lock file.
    import skscratch.runs

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(skscratch.runs, "open", refuse, raising=False)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="cannot write to the output folder.*Permission denied"):
        train(out)
    assert list(out.iterdir()) == []


@pytest.fixture
def umask():
    """Set the process's umask for one test, and put the old one back after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_permissions_the_umask_asks_for(tmp_path, umask, mask, mode):
    """mkstemp makes its temporary files owner-only; the file it becomes must not stay so."""
    umask(mask)
    path = tmp_path / "metrics.jsonl"
    skscratch.checkpoint.atomic_write(path, lambda f: f.write(b"{}\n"))
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.umask(mask) == mask  # and the umask is as it was


def test_a_rewritten_file_keeps_its_permissions(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"the previous checkpoint")
    path.chmod(0o640)
    skscratch.checkpoint.atomic_write(path, lambda f: f.write(b"a new one"))
    assert path.read_bytes() == b"a new one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_run_writes_files_others_may_read_under_umask_022(tmp_path, umask):
    umask(0o022)
    out = tmp_path / "run"
    train(out)
    for name in ("checkpoint.npz", "metrics.jsonl", "curves.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


# -------------------------------------------------------------- what the command line reports


@pytest.mark.parametrize(
    "option, message",
    [
        (["--weight-decay", "-1"], "weight decay must not be negative, got -1.0"),
        (["--warmup", "-0.5"], "warm-up must not be negative"),
        (["--label-smoothing", "1"], "label smoothing must be in [0, 1), got 1.0"),
    ],
)
def test_a_setting_training_cannot_use_is_one_line_and_status_2(capsys, tmp_path, option, message):
    from skscratch import cli

    out = tmp_path / "run"
    code = cli.main(["train", "--out", str(out), "--data", str(tmp_path / "none"), *option])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("skscratch train: error: ") and message in err, err
    assert not out.exists()


def test_a_valueerror_from_inside_is_a_bug_and_keeps_its_traceback(tmp_path, monkeypatch):
    """skscratch's own errors become one line; a ValueError such as NumPy raises on mismatched
    shapes is not one of them, and must reach the user whole."""
    import skscratch.train
    from skscratch import cli

    def broken_step(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (8,16) (8,32)")

    monkeypatch.setattr(skscratch.train, "train_step", broken_step)
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", fake_cifar(n_train=20))
    args = ["train", "--data", str(archive), "--out", str(tmp_path / "run"), *TRAIN_ARGS, "--quiet"]
    with pytest.raises(ValueError, match="could not be broadcast") as info:
        cli.main(args)
    assert any(entry.name == "broken_step" for entry in info.traceback)


def test_a_valueerror_from_inside_prints_a_traceback_from_the_command_line(tmp_path):
    code = (
        "import sys, skscratch.data\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('shapes (3,) and (4,) not aligned')\n"
        "skscratch.data.load_cifar10 = broken\n"
        "from skscratch.cli import main\n"
        "sys.exit(main(['evaluate', 'x.npz']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path
    )
    # evaluate loads the checkpoint first: the missing one is a one-line error, not the bug.
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
    code = code.replace("['evaluate', 'x.npz']", "['train', '--out', 'run']")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=tmp_path
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "not aligned" in result.stderr


def test_the_entry_point_tunes_the_process_before_numpy_loads(tmp_path):
    """`python -m skscratch` reaches main() with NumPy not yet imported, and main's first act is
    tune_process(), so OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when NumPy then loads it."""
    probe = (
        "import runpy, sys, skscratch.tuning as t\n"
        "real = t.tune_process\n"
        "def probe():\n"
        "    print('numpy loaded' if 'numpy' in sys.modules else 'numpy not loaded')\n"
        "    return real()\n"
        "t.tune_process = probe\n"
        "sys.argv = ['skscratch', 'train', '--help']\n"
        "runpy.run_module('skscratch', run_name='__main__')\n"
    )
    env = {k: v for k, v in _env().items() if k not in ("OPENBLAS_THREAD_TIMEOUT",)}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("numpy not loaded\n"), result.stdout
    assert "--backend {reference,fast}" in result.stdout


def test_the_console_script_imports_no_numpy_before_main():
    check = "import sys; from skscratch.cli import main; print('numpy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_a_run_as_a_library_changes_nothing_in_the_process(tmp_path, monkeypatch):
    """run_training leaves environment variables and the allocator to the entry point."""
    import skscratch.tuning

    def refuse(*args, **kwargs):
        raise AssertionError("run_training changed process-wide settings")

    monkeypatch.setattr(skscratch.tuning, "tune_process", refuse)
    monkeypatch.setattr(skscratch.tuning, "reuse_freed_memory", refuse)
    environ = dict(os.environ)
    train(tmp_path / "run")
    assert dict(os.environ) == environ


def test_gradcheck_passes_the_backends_and_counts_unwritten_functions_as_failures(
    capsys, monkeypatch
):
    import skscratch.gradcheck
    from skscratch import cli

    calls = []

    def fake_check(*, seed, backends):
        calls.append((seed, backends))
        return [
            (backends[0], "relu", "x", 3e-11, None),
            (backends[0], "conv2d 3x3 grouped", "w", float("nan"), "conv"),
        ]

    monkeypatch.setattr(skscratch.gradcheck, "check_all_operations", fake_check, raising=False)
    assert cli.main(["gradcheck", "--seed", "4"]) == 1
    capsys.readouterr()
    assert cli.main(["gradcheck", "--backend", "fast"]) == 1
    assert calls == [(4, ("reference", "fast")), (0, ("fast",))]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split() == ["fast", "relu", "x", "3.00e-11", "pass"]
    assert lines[2].endswith("not written yet (exercise conv)") and "conv2d" in lines[2]
    assert lines[-1] == "1 of 2 gradients within 1e-06 (float64)"


def test_bench_passes_the_backend(capsys, monkeypatch):
    import skscratch.bench
    from skscratch import cli

    calls = []

    def fake_run(settings, *, compare, backend, progress):
        calls.append((compare, backend))
        return {"backend": backend}

    monkeypatch.setattr(skscratch.bench, "run", fake_run)
    monkeypatch.setattr(skscratch.bench, "format_report", lambda result: f"report {result}")
    assert cli.main(["bench", "--quick"]) == 0
    assert cli.main(["bench", "--quick", "--backend", "reference"]) == 0
    assert calls == [(None, "fast"), (None, "reference")]
    assert "report {'backend': 'reference'}" in capsys.readouterr().out
