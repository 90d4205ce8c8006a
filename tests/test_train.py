"""Training end to end: learning, resuming, bad input, and what a run leaves behind.

Most tests use a small made-up CIFAR-10 (a few images per class, each class its own colour, so
a tiny network learns it in a few steps), written to a tar.gz in the official format so that
the command line reads it like the real archive. The overfitting test uses real images from the
shared archive and is skipped without it. The command line runs in subprocesses where exit
codes, signals and tracebacks matter, and in-process (`cli.main`) elsewhere, which is faster.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from skscratch import cli
from skscratch.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from skscratch.data import Cifar10, channel_stats, load_cifar10, normalize
from skscratch.evaluation import evaluate, shifted
from skscratch.losses import softmax_cross_entropy
from skscratch.models import PRESETS, SKResNeXt
from skscratch.optim import SGD
from skscratch.runs import LOCK, TrainingError, load_model
from skscratch.train import TrainConfig, run_training, train_step

SHARED_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar-10-python.tar.gz"
LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIME_KEYS = ("seconds", "images_per_second", "test_seconds", "elapsed_seconds")  # may differ


# -------------------------------------------------------------------------------------- data


def fake_cifar(n_train: int = 120, n_test: int = 40, seed: int = 0) -> Cifar10:
    """Images whose class is their colour (plus noise): learnable in a few steps, even with
    random crops and flips."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(30, 225, size=(10, 3, 1, 1))

    def images(n):
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = colours[y] + rng.normal(0, 20, size=(n, 3, 32, 32))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = images(n_train)
    x_test, y_test = images(n_test)
    return Cifar10(x_train, y_train, x_test, y_test, list(LABEL_NAMES))


def write_archive(path: Path, data: Cifar10) -> Path:
    """data as cifar-10-python.tar.gz: five training batches, a test batch, batches.meta."""

    def batch(x, y, name):
        return {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in y],
            b"data": x.reshape(len(x), 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(len(x))],
        }

    members = {}
    for i, (x, y) in enumerate(
        zip(np.array_split(data.x_train, 5), np.array_split(data.y_train, 5), strict=True)
    ):
        members[f"data_batch_{i + 1}"] = batch(x, y, f"data_batch_{i + 1}")
    members["test_batch"] = batch(data.x_test, data.y_test, "test_batch")
    members["batches.meta"] = {b"label_names": [s.encode() for s in data.label_names]}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            raw = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture(scope="session")
def real_cifar() -> Cifar10:
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(f"the shared CIFAR-10 archive is not at {SHARED_ARCHIVE}")
    return load_cifar10(SHARED_ARCHIVE)


@pytest.fixture(scope="module")
def fake_data() -> Cifar10:
    return fake_cifar()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, fake_data) -> Path:
    return write_archive(tmp_path_factory.mktemp("data") / "cifar-10-python.tar.gz", fake_data)


# ------------------------------------------------------------------------ running the commands

# Every run of the command line trains the tiny preset on the fake archive for 2 epochs of 15
# steps (120 images, batches of 8) and evaluates on its 40 test images.
TRAIN_ARGS = [
    "--model", "tiny", "--epochs", "2", "--batch-size", "8", "--lr", "0.05",
    "--warmup", "0.5", "--test-subset", "40", "--seed", "3",
]  # fmt: skip
STEPS_PER_EPOCH, EPOCHS = 15, 2


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SKSCRATCH_DATA", None)  # only --data decides where the data are
    return env


def skscratch(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skscratch", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        **kwargs,
    )


def main(capsys, *args) -> tuple[int, str, str]:
    """`skscratch args` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    """The error is one line starting 'skscratch <command>: error:', and no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(r"skscratch \w+: error: ", lines[0]), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file in folder, by name: the bytes a failed command must leave alone. (The lock
    file is not among them: every run that takes the lock writes its process id there.)"""
    return {
        p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != LOCK
    }


_PROGRESS = re.compile(rb"epoch (\d+)/\d+:\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+)")


def interrupt_after(
    proc: subprocess.Popen, step: int, timeout: float = 240, sig: int = signal.SIGINT
) -> bytes:
    """Read proc's progress bars (stderr) until they show `step` finished steps over all
    epochs, then send `sig` (SIGINT) once. Returns the stderr read so far."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen, deadline = b"", time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while time.monotonic() < deadline:
        if not sel.select(timeout=1):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break  # the run ended before reaching the step
        seen += chunk
        done = [(int(e) - 1) * int(total) + int(b) for e, b, total in _PROGRESS.findall(seen)]
        if done and max(done) >= step:
            proc.send_signal(sig)
            return seen
    proc.kill()
    pytest.fail(f"the run never reached step {step}; its stderr:\n{seen.decode(errors='replace')}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, archive) -> dict:
    """Run A trains uninterrupted; run B, with the same settings, is interrupted by SIGINT at a
    step drawn at random (seeded, so a failure can be reproduced), then resumed. A and the
    first part of B run at the same time."""
    root = tmp_path_factory.mktemp("runs")
    a, b = root / "a", root / "b"
    step = int(np.random.default_rng(2024).integers(2, EPOCHS * STEPS_PER_EPOCH - 6))
    command = [sys.executable, "-m", "skscratch", "train", "--data", str(archive), *TRAIN_ARGS]
    run_a = subprocess.Popen(
        [*command, "--out", str(a), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    # B shows its progress bars: they tell when to interrupt it.
    run_b = subprocess.Popen(
        [*command, "--out", str(b)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    try:
        early_err = interrupt_after(run_b, step)
        out_b, err_b = run_b.communicate(timeout=240)
        out_a, err_a = run_a.communicate(timeout=240)
    finally:
        for proc in (run_a, run_b):
            if proc.poll() is None:
                proc.kill()
    interrupted = {
        "code": run_b.returncode,
        "stdout": out_b.decode(),
        "stderr": (early_err + err_b).decode(errors="replace"),
        "meta": load_checkpoint(b / "checkpoint.npz")[0]
        if (b / "checkpoint.npz").exists()
        else None,
        "files": sorted(p.name for p in b.iterdir()),
    }
    resumed = skscratch("train", "--data", archive, "--out", b, "--resume", "--quiet")
    return {
        "a": a,
        "b": b,
        "step": step,
        "a_result": (run_a.returncode, out_a, err_a),
        "interrupted": interrupted,
        "resumed": resumed,
    }


# ------------------------------------------------------------------------------ (a) overfitting


def test_tiny_network_overfits_48_real_images(real_cifar):
    """48 CIFAR-10 training images, full batch, no augmentation: 100% training accuracy.

    lr 0.1 gets there in 60-66 steps for seeds 0, 1, 2 (lr 0.05 in about 100); the budget is
    150. Accuracy is that of the training-mode forward of each step (train_step's count).
    """
    x, y = real_cifar.x_train[:48], real_cifar.y_train[:48]
    assert len(np.unique(y)) >= 8  # a real mix of classes, not a trivial task
    mean, std = channel_stats(x)
    xn = normalize(x, mean, std)
    model = SKResNeXt(PRESETS["tiny"], seed=0)
    optimizer = SGD(model, lr=0.1, momentum=0.9, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss, correct = train_step(model, optimizer, xn, y)
        losses.append(loss)
        if correct == len(y):
            break
    assert correct == len(y), f"{correct}/{len(y)} after {len(losses)} steps, loss {loss:.3f}"
    assert losses[-1] < 0.5 < 2.0 < losses[0]


# ------------------------------------------------------------------- (b) a short run learns


def test_short_run_lowers_the_loss(tmp_path, fake_data):
    # Without cutout: blanking a square of 64 images slows three epochs too much to judge by.
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.5, subset=64, cutout=0)
    history = run_training(
        fake_data, tmp_path, model_config=PRESETS["tiny"], config=config, progress=False
    )
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    assert history[-1]["train_accuracy"] > history[0]["train_accuracy"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history


def test_the_first_step_reports_the_kernels_it_compiled(tmp_path, fake_data, monkeypatch, capsys):
    import skscratch.fast

    counts = iter([0, 7])  # before and after the first step; nothing compiles after that
    monkeypatch.setattr(skscratch.fast, "compilations", lambda: next(counts, 7))
    config = TrainConfig(epochs=1, batch_size=16, subset=32)
    run_training(fake_data, tmp_path, model_config=PRESETS["tiny"], config=config)
    printed = capsys.readouterr()
    reports = re.findall(r"compiled (\d+) numba kernels in the first step: [\d.]+ s", printed.out)
    assert reports == ["7"], printed


def test_the_reference_backend_compiles_nothing_and_reports_nothing(
    tmp_path, fake_data, monkeypatch, capsys
):
    import skscratch.fast

    def no_look(*args):
        raise AssertionError("a run on the reference backend asked numba for its compilations")

    monkeypatch.setattr(skscratch.fast, "compilations", no_look)
    config = TrainConfig(epochs=1, batch_size=16, subset=32, test_subset=16)
    history = run_training(
        fake_data, tmp_path, model_config=PRESETS["tiny"], config=config, backend="reference"
    )
    assert len(history) == 1 and "compiled" not in capsys.readouterr().out


def test_evaluate_counts_per_class(fake_data):
    """evaluate in eval mode: overall accuracy, loss, and one accuracy per class."""
    model = SKResNeXt(PRESETS["tiny"])
    x, y = fake_data.x_test, fake_data.y_test
    mean, std = channel_stats(fake_data.x_train)
    result = evaluate(model, x, y, mean, std, batch_size=7)
    logits = model.eval().forward(normalize(x, mean, std))
    pred = logits.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(np.mean(pred == y))
    assert len(result["per_class_accuracy"]) == 10
    for k, acc in enumerate(result["per_class_accuracy"]):
        assert acc == pytest.approx(np.mean(pred[y == k] == k))
    model.train()
    evaluate(model, x, y, mean, std)
    assert model.training  # the mode is restored


def test_evaluate_with_flips_averages_each_image_and_its_mirror(fake_data):
    model = SKResNeXt(PRESETS["tiny"]).eval()
    x, y = fake_data.x_test, fake_data.y_test
    mean, std = channel_stats(fake_data.x_train)
    result = evaluate(model, x, y, mean, std, batch_size=7, flips=True)
    images = normalize(x, mean, std)
    logits = (model.forward(images) + model.forward(images[..., ::-1].copy())) / 2
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))
    assert result["loss"] == pytest.approx(softmax_cross_entropy(logits, y)[0], rel=1e-5)
    # An image that is its own mirror image is classified as without flips.
    symmetric = np.concatenate([x[..., :16], x[..., :16][..., ::-1]], axis=-1)
    plain = evaluate(model, symmetric, y, mean, std)
    flipped = evaluate(model, symmetric, y, mean, std, flips=True)
    assert flipped["accuracy"] == plain["accuracy"]
    assert flipped["loss"] == pytest.approx(plain["loss"], rel=1e-5)


def test_shifted_moves_images_a_pixel_diagonally_mirroring_the_edge_that_comes_in():
    image = np.arange(16).reshape(1, 1, 4, 4)
    down_right = [[5, 4, 5, 6], [1, 0, 1, 2], [5, 4, 5, 6], [9, 8, 9, 10]]
    up_left = [[5, 6, 7, 6], [9, 10, 11, 10], [13, 14, 15, 14], [9, 10, 11, 10]]
    np.testing.assert_array_equal(shifted(image, 1)[0, 0], down_right)
    np.testing.assert_array_equal(shifted(image, -1)[0, 0], up_left)
    # A step moves every pixel inside the image by (step, step).
    big = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    np.testing.assert_array_equal(shifted(big, 2)[..., 2:, 2:], big[..., :-2, :-2])
    np.testing.assert_array_equal(shifted(big, -2)[..., :-2, :-2], big[..., 2:, 2:])


@pytest.mark.parametrize("flips", [False, True])
def test_evaluate_with_shifts_averages_every_view_and_its_shifts(fake_data, flips):
    model = SKResNeXt(PRESETS["tiny"]).eval()
    x, y = fake_data.x_test, fake_data.y_test
    mean, std = channel_stats(fake_data.x_train)
    result = evaluate(model, x, y, mean, std, batch_size=7, flips=flips, shifts=True)
    images = normalize(x, mean, std)
    views = [images, images[..., ::-1]] if flips else [images]
    padded = [np.pad(v, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect") for v in views]
    views += [p[..., :32, :32] for p in padded] + [p[..., 2:, 2:] for p in padded]
    assert len(views) == (6 if flips else 3)
    logits = sum(model.forward(v.copy()) for v in views) / len(views)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))
    assert result["loss"] == pytest.approx(softmax_cross_entropy(logits, y)[0], rel=1e-5)


# ------------------------------------------------------------------------------- (c) resuming


def _arrays(value):
    """Every ndarray inside a cache: nested tuples (named ones too), lists and dicts."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _arrays(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays(item)


def test_a_training_step_stays_float32_throughout():
    """No silent float64: every activation a module saves, every gradient, the optimiser's
    velocities and the updated parameters and running statistics are float32."""
    model = SKResNeXt(PRESETS["default"], seed=0)
    optimizer = SGD(model, lr=0.1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, 4)
    for _ in range(2):  # the second step also has velocities to update
        logits = model.forward(x)
        assert logits.dtype == np.float32
        saved = [
            (name, a)
            for name, module in model.named_modules()
            for a in _arrays(module._cache)
            if a.dtype.kind == "f"
        ]
        assert len(saved) > 50  # the caches were found: convolutions, batch norms, SK units
        assert not [name for name, a in saved if a.dtype != np.float32]
        train_step(model, optimizer, x, y)
        for name, p in model.named_parameters():
            assert p.data.dtype == p.grad.dtype == np.float32, name
        assert all(v.dtype == np.float32 for v in optimizer.velocity.values())
        assert all(b.dtype == np.float32 for _, b in model.named_buffers())


def test_sigint_stops_with_code_130_and_a_checkpoint(runs):
    stopped = runs["interrupted"]
    assert stopped["code"] == 130, stopped["stderr"][-2000:]
    assert "Traceback" not in stopped["stderr"]
    assert "SIGINT: saved a resumable checkpoint" in stopped["stdout"]
    assert "--resume" in stopped["stdout"]
    assert "checkpoint.npz" in stopped["files"]
    assert not [f for f in stopped["files"] if f.endswith(".tmp")]
    position = stopped["meta"]["position"]
    done = position["epoch"] * STEPS_PER_EPOCH + position["batch"]
    # SIGINT is honoured after the step in progress: at or a few steps after the chosen one.
    assert runs["step"] <= done < EPOCHS * STEPS_PER_EPOCH


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(runs):
    code, _, err = runs["a_result"]
    assert code == 0, err[-2000:]
    assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-2000:]
    meta_a, model_a, optim_a = load_checkpoint(runs["a"] / "checkpoint.npz")
    meta_b, model_b, optim_b = load_checkpoint(runs["b"] / "checkpoint.npz")
    assert set(model_a) == set(model_b) and set(optim_a) == set(optim_b)
    for key in model_a:
        assert model_a[key].dtype == model_b[key].dtype, key
        assert np.array_equal(model_a[key], model_b[key]), f"model.{key} differs"
    for key in optim_a:
        assert np.array_equal(optim_a[key], optim_b[key]), f"optim.{key} differs"
    assert meta_a["position"] == meta_b["position"] == {
        "epoch": EPOCHS, "batch": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0
    }  # fmt: skip

    def untimed(history):
        return [{k: v for k, v in h.items() if k not in TIME_KEYS} for h in history]

    assert untimed(meta_a["history"]) == untimed(meta_b["history"])
    lines_b = (runs["b"] / "metrics.jsonl").read_text().splitlines()
    assert untimed([json.loads(line) for line in lines_b]) == untimed(meta_a["history"])


def test_resume_of_a_finished_run_trains_no_further(runs, tmp_path, archive):
    out = tmp_path / "done"
    shutil.copytree(runs["a"], out)
    before = load_checkpoint(out / "checkpoint.npz")[1]
    result = skscratch("train", "--data", archive, "--out", out, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    after = load_checkpoint(out / "checkpoint.npz")[1]
    assert all(np.array_equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------- (e) and (f): what a run leaves


def test_metrics_have_one_json_line_per_epoch(runs):
    lines = (runs["a"] / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS
    keys = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"}
    for epoch, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert record["epoch"] == epoch
        assert keys <= set(record)
        assert all(math.isfinite(record[k]) for k in keys)
        assert 0 <= record["train_accuracy"] <= 1 and 0 <= record["test_accuracy"] <= 1
        # Test-time flips and shifts (the default) evaluate the last epoch twice more, and only
        # it.
        assert ("test_accuracy_flips" in record) == (epoch == EPOCHS)
        assert ("test_accuracy_shifts" in record) == (epoch == EPOCHS)
    assert json.loads(lines[-1])["lr"] < json.loads(lines[0])["lr"]  # the schedule decays


def test_curves_are_a_png(runs):
    for run in ("a", "b"):
        png = (runs[run] / "curves.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR"
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 100 and height > 100
    assert sorted(p.name for p in runs["a"].iterdir()) == [
        ".lock",  # stays; the lock is on the open file, not on its existence
        "checkpoint.npz",
        "curves.png",
        "metrics.jsonl",
    ]


def test_evaluate_command_prints_accuracy_and_every_class(runs, archive, fake_data):
    result = skscratch("evaluate", runs["a"] / "checkpoint.npz", "--data", archive)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 11, result.stdout
    # The run evaluated itself with test-time flips and shifts (the default), and so does the
    # command.
    match = re.fullmatch(
        r"test accuracy (\d\.\d{4}) on 40 images \(loss (\d+\.\d{4})\), "
        r"with test-time flips and shifts",
        lines[0],
    )
    assert match, lines[0]
    for name, line in zip(LABEL_NAMES, lines[1:], strict=True):
        assert re.fullmatch(rf"\s+{name}\s+(\d\.\d{{4}}|nan)", line), line

    # The numbers are those of the checkpoint's model on the test images, as the run's last
    # evaluation found them.
    model, mean, std = load_model(runs["a"] / "checkpoint.npz")
    x, y = fake_data.x_test, fake_data.y_test
    expected = evaluate(model, x, y, mean, std, flips=True, shifts=True)
    assert match.group(1) == f"{expected['accuracy']:.4f}"
    last = load_checkpoint(runs["a"] / "checkpoint.npz")[0]["history"][-1]
    assert match.group(1) == f"{last['test_accuracy_shifts']:.4f}"
    for line, acc in zip(lines[1:], expected["per_class_accuracy"], strict=True):
        assert line.split()[-1] == f"{acc:.4f}"

    flips = skscratch("evaluate", runs["a"] / "checkpoint.npz", "--data", archive, "--no-shifts")
    expected = evaluate(model, x, y, mean, std, flips=True)
    assert f"{expected['accuracy']:.4f}" == f"{last['test_accuracy_flips']:.4f}"
    assert flips.stdout.splitlines()[0] == (
        f"test accuracy {expected['accuracy']:.4f} on 40 images (loss {expected['loss']:.4f}), "
        "with test-time flips"
    )

    plain = skscratch(
        "evaluate", runs["a"] / "checkpoint.npz", "--data", archive, "--no-flips", "--no-shifts"
    )
    first = plain.stdout.splitlines()[0]
    expected = evaluate(model, fake_data.x_test, fake_data.y_test, mean, std)
    assert f"{expected['accuracy']:.4f}" == f"{last['test_accuracy']:.4f}"
    assert first == (
        f"test accuracy {expected['accuracy']:.4f} on 40 images (loss {expected['loss']:.4f})"
    )


# ------------------------------------------------------------------------------- backends

# One epoch of the tiny preset on 48 of the fake images: 6 steps of 8.
BACKEND_ARGS = [
    "--model", "tiny", "--subset", "48", "--test-subset", "20", "--batch-size", "8",
    "--epochs", "1", "--quiet",
]  # fmt: skip


def test_the_initialisation_options_change_the_model_and_are_recorded(capsys, tmp_path, archive):
    out = tmp_path / "run"
    code, _, err = main(capsys, "train", "--data", archive, "--out", out, *BACKEND_ARGS,
                        "--attention-init", "official", "--no-zero-init-residual")  # fmt: skip
    assert code == 0, err
    config = load_checkpoint(out / "checkpoint.npz")[0]["model_config"]
    assert config["attention_init"] == "official" and config["zero_init_residual"] is False
    assert PRESETS["tiny"].attention_init == "kaiming"  # what the options changed
    assert PRESETS["tiny"].zero_init_residual is True


def test_the_branch_options_change_the_model_and_are_recorded(capsys, tmp_path, archive):
    out = tmp_path / "run"
    code, _, err = main(capsys, "train", "--data", archive, "--out", out, *BACKEND_ARGS,
                        "--kernel-sizes", "3,5", "--dilations", "1,1")  # fmt: skip
    assert code == 0, err
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    config = checkpoint[0]["model_config"]
    assert tuple(config["kernel_sizes"]) == (3, 5) and tuple(config["dilations"]) == (1, 1)
    assert checkpoint[1]["stages.0.0.sk.convs.1.weight"].shape[2:] == (5, 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--kernel-sizes", "3,4"), "kernel_sizes must be odd"),
     (("--branches", "3", "--dilations", "1,2"), "dilations must hold one value per branch (3)"),
     (("--kernel-sizes", "3,x"), "must be positive ints and commas")],
)  # fmt: skip
def test_wrong_branch_options_are_one_line_errors(tmp_path, archive, args, message):
    out = tmp_path / "run"
    result = skscratch("train", "--data", archive, "--out", out, *BACKEND_ARGS, *args)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, message)
    assert not out.exists()


def test_the_reference_backend_trains_end_to_end(capsys, tmp_path, archive, fake_data):
    out = tmp_path / "run"
    code, stdout, err = main(
        capsys, "train", "--data", archive, "--out", out, *BACKEND_ARGS, "--backend", "reference"
    )
    assert code == 0, err
    assert "on the reference backend" in stdout.splitlines()[0]
    assert {"checkpoint.npz", "metrics.jsonl", "curves.png"} <= {p.name for p in out.iterdir()}
    assert "backend" not in load_checkpoint(out / "checkpoint.npz")[0]  # not part of the model
    code, stdout, err = main(
        capsys, "evaluate", out / "checkpoint.npz", "--data", archive, "--backend", "reference"
    )
    assert code == 0, err
    assert stdout.startswith("test accuracy")

    # The checkpoint's model computes the same function on either backend.
    x = normalize(fake_data.x_test[:8], *load_model(out / "checkpoint.npz")[1:])
    logits = {
        backend: load_model(out / "checkpoint.npz", backend=backend)[0].forward(x)
        for backend in ("reference", "fast")
    }
    np.testing.assert_allclose(logits["fast"], logits["reference"], rtol=1e-4, atol=1e-4)


def test_a_run_stopped_on_the_reference_backend_resumes_on_the_fast_one(
    capsys, monkeypatch, tmp_path, archive
):
    """Ctrl-C after the third of 6 steps (a SIGINT to this process, which the run's handler
    turns into a stop after the step), then --resume with the default backend."""
    import skscratch.train as train_module

    real_step, backends = train_module.train_step, []

    def step_then_interrupt(model, optimizer, x, y, **kwargs):
        backends.append(model.backend)
        result = real_step(model, optimizer, x, y, **kwargs)
        if len(backends) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train_module, "train_step", step_then_interrupt)
    out = tmp_path / "run"
    args = ("train", "--data", archive, "--out", out, *BACKEND_ARGS)
    code, stdout, _ = main(capsys, *args, "--backend", "reference")
    assert code == 130
    assert "SIGINT: saved a resumable checkpoint" in stdout
    stopped = load_checkpoint(out / "checkpoint.npz")[0]
    assert stopped["position"]["epoch"] == 0 and stopped["position"]["batch"] == 3

    code, stdout, err = main(capsys, *args, "--resume")
    assert code == 0, err
    assert "on the fast backend" in stdout
    assert backends == ["reference"] * 3 + ["fast"] * 3
    meta = load_checkpoint(out / "checkpoint.npz")[0]
    assert meta["position"]["epoch"] == 1 and len(meta["history"]) == 1
    # The epoch's totals carry the three steps taken before the stop.
    assert meta["history"][0]["train_accuracy"] * 48 >= stopped["position"]["correct"]


# ------------------------------------------------------------------------------ (d) bad input


@pytest.fixture
def finished(runs, tmp_path) -> Path:
    """A copy of run A, for a test to (fail to) damage."""
    out = tmp_path / "run"
    shutil.copytree(runs["a"], out)
    return out


def test_batch_size_zero_is_one_line_from_the_command_line(tmp_path, archive):
    """argparse refuses it before anything runs: exit 2, one line, no traceback."""
    out = tmp_path / "run"
    result = skscratch("train", "--data", archive, "--out", out, "--batch-size", "0")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "argument --batch-size: must be at least 1, got 0")
    assert not out.exists()


def test_missing_data_is_one_line_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    result = skscratch("train", "--data", tmp_path / "nowhere.tar.gz", "--out", out)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "nowhere.tar.gz", "does not exist")
    assert not out.exists()


def test_batch_size_one_is_refused(capsys, tmp_path, archive):
    out = tmp_path / "run"
    code, _, err = main(capsys, "train", "--data", archive, "--out", out, "--batch-size", "1")
    assert code == 2
    assert_one_line_error(err, "batch size must be at least 2")
    assert not (out / "checkpoint.npz").exists()


def test_batch_larger_than_the_data_is_refused(capsys, tmp_path, archive):
    out = tmp_path / "run"
    args = ("--subset", "10", "--batch-size", "16", "--quiet")
    code, _, err = main(capsys, "train", "--data", archive, "--out", out, *args)
    assert code == 2
    assert_one_line_error(err, "batch size 16 is larger than the 10 training images")
    assert not (out / "checkpoint.npz").exists()


def test_corrupt_data_leaves_the_run_alone(capsys, tmp_path, archive, finished):
    before = snapshot(finished)
    whole = archive.read_bytes()
    for name, content in [
        ("truncated.tar.gz", whole[: len(whole) // 2]),
        ("noise.tar.gz", b"x" * 999),
    ]:
        bad = tmp_path / name
        bad.write_bytes(content)
        code, _, err = main(
            capsys, "train", "--data", bad, "--out", finished, "--resume", "--quiet"
        )
        assert code == 2
        assert_one_line_error(err, name)
        code, _, err = main(capsys, "evaluate", finished / "checkpoint.npz", "--data", bad)
        assert code == 2
        assert_one_line_error(err, name)
    assert snapshot(finished) == before


def test_training_twice_into_one_folder_is_refused(capsys, archive, finished):
    before = snapshot(finished)
    code, _, err = main(
        capsys, "train", "--data", archive, "--out", finished, *TRAIN_ARGS, "--quiet"
    )
    assert code == 2
    assert_one_line_error(err, "already holds a run", "--resume")
    assert snapshot(finished) == before


def _swap_architecture(path: Path) -> None:
    """Rewrite a tiny run's checkpoint so that its header names another architecture (the
    default preset's widths, in tiny's blocks) while its arrays stay those of the tiny one."""
    meta, model, optim = load_checkpoint(path)
    meta.pop("format_version")
    meta["model_config"] = dataclasses.replace(PRESETS["default"], depths=(1, 1, 1)).to_dict()
    save_checkpoint(path, meta, model, optim)


def test_checkpoint_of_another_architecture_is_refused(capsys, archive, finished):
    _swap_architecture(finished / "checkpoint.npz")
    before = snapshot(finished)
    code, _, err = main(capsys, "evaluate", finished / "checkpoint.npz", "--data", archive)
    assert code == 2
    assert_one_line_error(err, "does not hold a model", "stem.0.weight has shape")
    code, _, err = main(
        capsys, "train", "--data", archive, "--out", finished, "--resume", "--quiet"
    )
    assert code == 2
    assert_one_line_error(err, "does not fit", "stem.0.weight has shape")
    assert snapshot(finished) == before
    with pytest.raises(CheckpointError):
        load_model(finished / "checkpoint.npz")


def test_damaged_checkpoint_is_refused(capsys, archive, finished):
    path = finished / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:1000])
    before = snapshot(finished)
    code, _, err = main(capsys, "evaluate", path, "--data", archive)
    assert code == 2
    assert_one_line_error(err, "not a readable checkpoint")
    code, _, err = main(
        capsys, "train", "--data", archive, "--out", finished, "--resume", "--quiet"
    )
    assert code == 2
    assert_one_line_error(err, "not a readable checkpoint")
    assert snapshot(finished) == before


def test_missing_checkpoint_is_refused(capsys, tmp_path, archive):
    code, _, err = main(capsys, "evaluate", tmp_path / "none.npz", "--data", archive)
    assert code == 2
    assert_one_line_error(err, "checkpoint not found")
    code, _, err = main(
        capsys, "train", "--data", archive, "--out", tmp_path, "--resume", "--quiet"
    )
    assert code == 2
    assert_one_line_error(err, "checkpoint not found")


def test_a_diverging_run_stops_and_keeps_its_last_checkpoint(monkeypatch, tmp_path, fake_data):
    """The loss turns NaN in epoch 2: a clear TrainingError, and the checkpoint and metrics
    written after epoch 1 stay byte for byte as they were."""
    import skscratch.train as train_module

    real_loss = train_module.softmax_cross_entropy
    steps_per_epoch = 64 // 16
    calls, saved = [], {}

    def loss_that_diverges(logits, labels, **kwargs):
        loss, dlogits = real_loss(logits, labels, **kwargs)
        if logits.shape[0] == 16:  # training steps, not the evaluation's batches
            calls.append(1)
            if len(calls) == steps_per_epoch + 2:
                saved.update(snapshot(tmp_path))
                return float("nan"), dlogits * np.nan
        return loss, dlogits

    monkeypatch.setattr(train_module, "softmax_cross_entropy", loss_that_diverges)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.05, subset=64, test_subset=20)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, batch 2.*diverged"):
        run_training(
            fake_data, tmp_path, model_config=PRESETS["tiny"], config=config, progress=False
        )
    assert set(saved) == {"checkpoint.npz", "metrics.jsonl"}
    assert snapshot(tmp_path) == saved
    meta = load_checkpoint(tmp_path / "checkpoint.npz")[0]
    assert meta["position"]["epoch"] == 1 and len(meta["history"]) == 1


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_a_huge_learning_rate_is_reported_as_divergence(capsys, tmp_path, archive):
    out = tmp_path / "run"
    args = ("--model", "tiny", "--epochs", "1", "--batch-size", "8", "--lr", "1e30", "--quiet")
    code, _, err = main(capsys, "train", "--data", archive, "--out", out, *args)
    assert code == 2
    assert_one_line_error(err, "diverged", "try a lower --lr")
    assert not (out / "checkpoint.npz").exists()
    assert not (out / "metrics.jsonl").exists()
