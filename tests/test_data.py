"""Tests for skscratch.data: locating, downloading, safely reading and batching CIFAR-10.

Everything runs offline on tiny archives written in the official format; downloads come from
file:// URLs or a server on 127.0.0.1. One test reads the shared copy of the real archive.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import shutil
import tarfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from skscratch.augmentation import augment
from skscratch.data import (
    ARCHIVE_NAME,
    FOLDER_NAME,
    META,
    OFFICIAL_URL,
    TEST_BATCH,
    TRAIN_BATCHES,
    Cifar10,
    DataError,
    channel_stats,
    iterate_batches,
    load_cifar10,
    load_sample,
    normalize,
)

SHARED_ARCHIVE = Path(__file__).parents[2] / "shared/data/cifar-10-python.tar.gz"
LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


# ----------------------------------------------------------------------------- fake archives


class FakeCifar(NamedTuple):
    root: Path  # holds both of the next two
    folder: Path  # root / cifar-10-batches-py
    archive: Path  # root / cifar-10-python.tar.gz
    expected: Cifar10


def official_batches(n: int, seed: int = 0) -> dict[str, dict[bytes, Any]]:
    """The six pickled objects of the official archive, with n images per batch."""
    rng = np.random.default_rng(seed)
    batches = {}
    for i, name in enumerate((*TRAIN_BATCHES, TEST_BATCH)):
        batches[name] = {
            b"batch_label": f"batch {i} of {name}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"image_{i}_{j}.png".encode() for j in range(n)],
        }
    batches[META] = {
        b"num_cases_per_batch": n,
        b"label_names": [s.encode() for s in LABEL_NAMES],
        b"num_vis": 3072,
    }
    return batches


def write_fake_cifar(
    root: Path,
    *,
    n: int = 4,
    protocol: int = pickle.DEFAULT_PROTOCOL,
    replace: dict[str, Any] | None = None,
    omit: tuple[str, ...] = (),
) -> FakeCifar:
    """Write root/cifar-10-batches-py/ and root/cifar-10-python.tar.gz as the official ones.

    `replace` maps a member name to raw bytes or an object to pickle in its place; `omit`
    leaves members out. `expected` is what a correct loader returns for the unmodified batches.
    """
    batches = official_batches(n)
    folder = root / FOLDER_NAME
    folder.mkdir(parents=True)
    for name, content in {**batches, **(replace or {})}.items():
        if name not in omit:
            raw = content if isinstance(content, bytes) else pickle.dumps(content, protocol)
            (folder / name).write_bytes(raw)
    (folder / "readme.html").write_text("<html>CIFAR-10</html>")
    archive = root / ARCHIVE_NAME
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=FOLDER_NAME)
    train = [batches[name] for name in TRAIN_BATCHES]
    expected = Cifar10(
        x_train=np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32),
        y_train=np.concatenate([b[b"labels"] for b in train]).astype(np.int64),
        x_test=batches[TEST_BATCH][b"data"].reshape(-1, 3, 32, 32),
        y_test=np.array(batches[TEST_BATCH][b"labels"], dtype=np.int64),
        label_names=LABEL_NAMES,
    )
    return FakeCifar(root, folder, archive, expected)


def assert_same(got: Cifar10, expected: Cifar10) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(got, field), getattr(expected, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        np.testing.assert_array_equal(a, b, err_msg=field)
    assert got.label_names == expected.label_names


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the user's SKSCRATCH_DATA and ~/.cache out of every test."""
    monkeypatch.delenv("SKSCRATCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_cifar10 tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def fake(tmp_path: Path) -> FakeCifar:
    return write_fake_cifar(tmp_path / "data")


# ----------------------------------------------------------------------------- locating the data


def as_form(fake: FakeCifar, form: str) -> Path:
    """The path to hand the loader for one of the accepted layouts."""
    if form == "archive":
        return fake.archive
    if form == "folder":
        return fake.folder
    if form == "parent of folder":
        fake.archive.unlink()
        return fake.root
    assert form == "parent of archive"
    shutil.rmtree(fake.folder)
    return fake.root


FORMS = ["archive", "folder", "parent of folder", "parent of archive"]


@pytest.mark.parametrize("form", FORMS)
def test_load_from_explicit_path(fake: FakeCifar, form: str, no_network: None) -> None:
    path = as_form(fake, form)
    assert_same(load_cifar10(path), fake.expected)
    assert_same(load_cifar10(str(path)), fake.expected)


@pytest.mark.parametrize("form", FORMS)
def test_load_from_environment(
    fake: FakeCifar, form: str, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("SKSCRATCH_DATA", str(as_form(fake, form)))
    assert_same(load_cifar10(), fake.expected)


@pytest.mark.parametrize("form", ["parent of folder", "parent of archive"])
def test_load_from_cache_dir(fake: FakeCifar, form: str, no_network: None) -> None:
    assert_same(load_cifar10(cache_dir=as_form(fake, form)), fake.expected)


def test_load_from_default_cache_dir(tmp_path: Path, no_network: None) -> None:
    # The autouse fixture points XDG_CACHE_HOME at tmp_path / "xdg-cache".
    fake = write_fake_cifar(tmp_path / "xdg-cache" / "skscratch")
    assert_same(load_cifar10(), fake.expected)


def test_explicit_path_beats_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    fake = write_fake_cifar(tmp_path / "a")
    monkeypatch.setenv("SKSCRATCH_DATA", str(tmp_path / "missing"))
    assert_same(load_cifar10(fake.archive), fake.expected)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_protocols(tmp_path: Path, protocol: int, no_network: None) -> None:
    fake = write_fake_cifar(tmp_path, protocol=protocol)
    assert_same(load_cifar10(fake.archive), fake.expected)


def test_pixel_layout(tmp_path: Path) -> None:
    """A row is 1024 red, 1024 green, 1024 blue values, each plane row-major."""
    batches = official_batches(2)
    row = np.arange(3072) % 251
    batches[TEST_BATCH][b"data"][0] = row
    fake = write_fake_cifar(tmp_path, replace={TEST_BATCH: batches[TEST_BATCH]})
    image = load_cifar10(fake.archive).x_test[0]  # (3, 32, 32)
    assert image[1, 0, 0] == row[1024]  # first green value
    assert image[0, 0, 1] == row[1]  # second red value, same row
    assert image[0, 1, 0] == row[32]  # first red value of the second row
    assert image[2, 31, 31] == row[3071]


def test_missing_explicit_path_names_it(tmp_path: Path, no_network: None) -> None:
    missing = tmp_path / "nowhere" / ARCHIVE_NAME
    with pytest.raises(DataError, match="does not exist") as err:
        load_cifar10(missing)
    assert str(missing) in str(err.value)


def test_missing_environment_path_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("SKSCRATCH_DATA", str(missing))
    with pytest.raises(DataError, match="SKSCRATCH_DATA") as err:
        load_cifar10()
    assert str(missing) in str(err.value)


def test_folder_without_data(tmp_path: Path, no_network: None) -> None:
    with pytest.raises(DataError, match="holds neither"):
        load_cifar10(tmp_path)


def test_no_download_says_where_to_put_the_archive(tmp_path: Path, no_network: None) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_cifar10(download=False, cache_dir=cache)
    message = str(err.value)
    assert OFFICIAL_URL in message and str(cache / ARCHIVE_NAME) in message
    assert "SKSCRATCH_DATA" in message


# ----------------------------------------------------------------------------- downloading


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_from_file_url(fake: FakeCifar, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    data = load_cifar10(cache_dir=cache, url=fake.archive.as_uri(), md5=md5_of(fake.archive))
    assert_same(data, fake.expected)
    assert [p.name for p in cache.iterdir()] == [ARCHIVE_NAME]
    assert (cache / ARCHIVE_NAME).read_bytes() == fake.archive.read_bytes()


def test_cached_download_is_reused(
    fake: FakeCifar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    load_cifar10(cache_dir=cache, url=fake.archive.as_uri(), md5=md5_of(fake.archive))
    monkeypatch.setattr(urllib.request, "urlopen", None)  # any second download would fail
    assert_same(load_cifar10(cache_dir=cache), fake.expected)


def test_download_with_wrong_md5_leaves_nothing(fake: FakeCifar, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5"):
        load_cifar10(cache_dir=cache, url=fake.archive.as_uri(), md5="0" * 32)
    assert list(cache.iterdir()) == []


def test_unreachable_url_says_what_to_download_and_where(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        load_cifar10(cache_dir=cache, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    message = str(err.value)
    assert OFFICIAL_URL in message and str(cache / ARCHIVE_NAME) in message
    assert "SKSCRATCH_DATA" in message and "--data" in message
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.fixture
def serve() -> Iterator[Callable[[type[http.server.BaseHTTPRequestHandler]], str]]:
    """Start handlers on 127.0.0.1 in a thread; returns the server's base URL."""
    servers = []

    def start(handler: type[http.server.BaseHTTPRequestHandler]) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # A short poll interval keeps shutdown() quick.
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_download_over_http(fake: FakeCifar, tmp_path: Path, serve: Callable) -> None:
    base = serve(functools.partial(QuietHandler, directory=str(fake.root)))
    cache = tmp_path / "cache"
    url = f"{base}/{ARCHIVE_NAME}"
    assert_same(load_cifar10(cache_dir=cache, url=url, md5=md5_of(fake.archive)), fake.expected)
    assert [p.name for p in cache.iterdir()] == [ARCHIVE_NAME]


class TruncatingHandler(QuietHandler):
    """Promises a megabyte, sends a few bytes, hangs up: a dropped connection."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(2**20))
        self.end_headers()
        self.wfile.write(b"\x1f\x8b partial")
        self.wfile.flush()
        self.close_connection = True


def test_interrupted_download_leaves_nothing(tmp_path: Path, serve: Callable) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="could not download.*connection closed"):
        load_cifar10(cache_dir=cache, url=f"{serve(TruncatingHandler)}/{ARCHIVE_NAME}")
    assert list(cache.iterdir()) == []


# ----------------------------------------------------------------------------- reading safely


class Payload:
    """Pickles as a call to func(*args): what a hostile batch file would contain."""

    def __init__(self, func: Callable, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, (f"touch {marker}",)),
        "exec": Payload(exec, (f"open({str(marker)!r}, 'w').close()",)),
        "open": Payload(open, (str(marker), "w")),
    }


@pytest.mark.parametrize("kind", ["os.system", "exec", "open"])
@pytest.mark.parametrize("form", ["archive", "folder"])
def test_code_in_pickle_is_refused(tmp_path: Path, kind: str, form: str) -> None:
    marker = tmp_path / "marker"
    payload = payloads(marker)[kind]
    hostile = {b"data": payload, b"labels": [0]}
    fake = write_fake_cifar(tmp_path / "data", replace={"data_batch_2": hostile})
    with pytest.raises(DataError, match="refusing to unpickle") as err:
        load_cifar10(as_form(fake, form))
    message = str(err.value)
    assert "data_batch_2" in message and payload.func.__name__ in message
    assert not marker.exists()


def test_payload_would_run_under_plain_pickle(tmp_path: Path) -> None:
    """Shows the test above is not vacuous: an unrestricted unpickler runs the payload."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(payloads(marker)["exec"]))
    assert marker.exists()


def test_members_outside_the_folder_are_ignored(
    fake: FakeCifar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is extracted, so a member named ../escape.txt lands nowhere."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    archive = tmp_path / "traversal.tar.gz"
    escape = b"escaped"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fake.folder, arcname=FOLDER_NAME)
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(escape)
        tar.addfile(info, io.BytesIO(escape))
    assert_same(load_cifar10(archive), fake.expected)
    assert not list(tmp_path.rglob("escape.txt"))


def test_symlink_member_is_refused(fake: FakeCifar, tmp_path: Path) -> None:
    archive = tmp_path / "symlink.tar.gz"
    (fake.folder / "data_batch_1").unlink()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fake.folder, arcname=FOLDER_NAME)
        info = tarfile.TarInfo(f"{FOLDER_NAME}/data_batch_1")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="data_batch_1 is not a regular file"):
        load_cifar10(archive)


def bad_batches() -> dict[str, tuple[str, Any, str]]:
    """case -> (member, replacement, expected words in the message)."""
    good = official_batches(4)
    batch = good["data_batch_3"]

    def edited(**changes: Any) -> dict[bytes, Any]:
        return {**batch, **{k.encode(): v for k, v in changes.items()}}

    meta = {**good[META], b"label_names": [s.encode() for s in LABEL_NAMES[:9]]}
    return {
        "data shape": ("data_batch_3", edited(data=batch[b"data"][:, :3071]), "shape"),
        "data 3-d": ("data_batch_3", edited(data=batch[b"data"].reshape(4, 3, 1024)), "shape"),
        "data dtype": ("data_batch_3", edited(data=batch[b"data"].astype(np.float32)), "uint8"),
        "data list": ("data_batch_3", edited(data=batch[b"data"].tolist()), "uint8"),
        "label 10": ("data_batch_3", edited(labels=[0, 1, 10, 2]), "0..9"),
        "label -1": ("test_batch", edited(labels=[0, -1, 3, 2]), "0..9"),
        "label count": ("data_batch_3", edited(labels=[0, 1, 2]), "4 integers"),
        "label float": ("data_batch_3", edited(labels=[0.5, 1, 2, 3]), "4 integers"),
        "no labels": ("data_batch_3", {b"data": batch[b"data"]}, "'labels'"),
        "not a dict": ("data_batch_3", [batch[b"data"]], "expected a dict"),
        "garbage": ("data_batch_3", b"this is not a pickle", "not a readable pickle"),
        "empty": ("test_batch", b"", "not a readable pickle"),
        "9 names": (META, meta, "label_names"),
    }


@pytest.mark.parametrize("case", list(bad_batches()))
@pytest.mark.parametrize("form", ["archive", "folder"])
def test_invalid_batch(tmp_path: Path, case: str, form: str) -> None:
    member, replacement, words = bad_batches()[case]
    fake = write_fake_cifar(tmp_path, replace={member: replacement})
    path = as_form(fake, form)
    with pytest.raises(DataError, match=words) as err:
        load_cifar10(path)
    assert member in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_missing_member(tmp_path: Path, form: str) -> None:
    fake = write_fake_cifar(tmp_path, omit=("data_batch_4",))
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_cifar10(as_form(fake, form))


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "empty"])
def test_unreadable_archive(fake: FakeCifar, tmp_path: Path, damage: str) -> None:
    raw = fake.archive.read_bytes()
    broken = tmp_path / ARCHIVE_NAME
    broken.write_bytes(
        {"truncated": raw[: len(raw) // 2], "not gzip": raw[::-1], "empty": b""}[damage]
    )
    with pytest.raises(DataError, match="not a readable tar.gz") as err:
        load_cifar10(broken)
    assert str(broken) in str(err.value)


@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason=f"shared CIFAR-10 absent: {SHARED_ARCHIVE}")
def test_shared_archive() -> None:
    data = load_cifar10(SHARED_ARCHIVE)
    assert data.x_train.shape == (50000, 3, 32, 32) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (10000, 3, 32, 32) and data.x_test.dtype == np.uint8
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.y_train, minlength=10), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), [1000] * 10)
    assert data.label_names == LABEL_NAMES
    # Natural images: CIFAR-10 channel means sit near 0.49, 0.48, 0.45.
    mean, std = channel_stats(data.x_train)
    np.testing.assert_allclose(mean, [0.49, 0.48, 0.45], atol=0.01)
    x = normalize(data.x_train[:5000], mean, std)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=0.05)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=0.05)


# ----------------------------------------------------------------------------- preprocessing


def colour_images(n: int, seed: int = 0) -> np.ndarray:
    """Random uint8 images (n, 3, 32, 32) whose channels have different means and spreads."""
    rng = np.random.default_rng(seed)
    centre, spread = np.array([60, 128, 200]), np.array([20, 60, 40])
    x = rng.normal(centre[:, None, None], spread[:, None, None], size=(n, 3, 32, 32))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def test_channel_stats_match_numpy() -> None:
    x = colour_images(64)
    mean, std = channel_stats(x)
    assert mean.dtype == np.float32 and std.dtype == np.float32 and mean.shape == (3,)
    as_float = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, as_float.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, as_float.std(axis=(0, 2, 3)), rtol=1e-6)


def test_channel_stats_wants_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(np.zeros((2, 3, 4, 4), np.float32))


def test_normalize_standardises_each_channel() -> None:
    x = colour_images(64)
    out = normalize(x, *channel_stats(x))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    # and the formula itself, on one pixel
    mean, std = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.25, 2.0])
    one = normalize(np.full((1, 3, 1, 1), 51, np.uint8), mean, std)
    np.testing.assert_allclose(one.ravel(), (0.2 - mean) / std, rtol=1e-6, atol=1e-6)


def all_crops(x: np.ndarray, pad: int) -> Iterator[np.ndarray]:
    """Every padded crop of x (N, C, H, W): unflipped and flipped for each offset in turn.

    The reference materialises the padding with np.pad, unlike augment.
    """
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = padded[:, :, oy : oy + h, ox : ox + w]
            yield crop
            yield crop[..., ::-1]


@pytest.mark.parametrize(
    ("shape", "pad", "dtype"),
    [
        ((500, 3, 32, 32), 4, np.float32),
        ((3000, 1, 6, 6), 4, np.float32),  # enough images for every offset and flip to turn up
        ((300, 2, 5, 7), 2, np.uint8),
        ((50, 1, 6, 6), 0, np.float64),
    ],
)
def test_augment_outputs_are_padded_crops(shape: tuple, pad: int, dtype: type) -> None:
    # Random nonzero content makes every crop of an image distinct, so each output matches
    # exactly one candidate.
    x = np.random.default_rng(1).integers(1, 256, size=shape).astype(dtype)
    out = augment(x, np.random.default_rng(2), pad=pad)
    assert out.shape == x.shape and out.dtype == x.dtype
    matches = np.stack([(crop == out).all(axis=(1, 2, 3)) for crop in all_crops(x, pad)])
    np.testing.assert_array_equal(matches.sum(axis=0), 1)  # (n_candidates, N) -> (N,)
    chosen = matches.argmax(axis=0)
    assert 0.4 < (chosen % 2 == 1).mean() < 0.6  # odd candidates are the flipped ones
    if shape[0] >= 3000:
        assert len(np.unique(chosen)) == 2 * (2 * pad + 1) ** 2


def test_augment_is_reproducible() -> None:
    x = colour_images(32)
    a = augment(x, np.random.default_rng(7))
    np.testing.assert_array_equal(a, augment(x, np.random.default_rng(7)))
    assert not np.array_equal(a, augment(x, np.random.default_rng(8)))
    assert not np.shares_memory(a, x)


def test_augment_empty_batch() -> None:
    x = np.zeros((0, 3, 32, 32), np.float32)
    assert augment(x, np.random.default_rng(0)).shape == x.shape
    assert augment(x, np.random.default_rng(0), cutout=8).shape == x.shape


@pytest.mark.parametrize(("size", "side"), [(32, 8), (9, 4), (6, 1), (7, 5)])
def test_cutout_zeroes_one_square_cut_off_at_the_border(size: int, side: int) -> None:
    """Cutout changes nothing of the crop and flip (it draws after them), and zeroes in each
    image the pixels of one side x side square around a random centre, in every channel: the
    whole square where it lies inside the image, the part inside where it crosses the border."""
    n = 4000
    x = np.random.default_rng(1).integers(1, 256, size=(n, 3, size, size)).astype(np.uint8)
    # Without padding (pad=0) the crops are the images, mirrored or not, and nonzero.
    flipped = augment(x, np.random.default_rng(5), pad=0)
    out = augment(x, np.random.default_rng(5), pad=0, cutout=side)
    square = out != flipped
    np.testing.assert_array_equal(out[square], 0)
    assert (square.all(axis=1) == square.any(axis=1)).all()  # every channel, or none
    mask = square[:, 0]
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # (N, size): rows and columns it touches
    n_rows, n_cols = rows.sum(axis=1), cols.sum(axis=1)
    assert (n_rows >= 1).all() and (n_rows <= side).all() and (n_cols <= side).all()
    # One rectangle: the pixels are exactly the product of its rows and columns,
    np.testing.assert_array_equal(mask, rows[:, :, None] & cols[:, None, :])
    # contiguous, and whole along each axis wherever it does not touch the border there.
    for touched, count in ((rows, n_rows), (cols, n_cols)):
        first, last = touched.argmax(axis=1), size - 1 - touched[:, ::-1].argmax(axis=1)
        np.testing.assert_array_equal(last - first + 1, count)
        inside = (first > 0) & (last < size - 1)
        assert inside.any() and (count[inside] == side).all()
        # The centres are spread over the whole image: every row and column is covered.
        assert touched.any(axis=0).all()


# ----------------------------------------------------------------------------- batching


def indexed_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """x[i] is filled with i, so a batch shows which examples it holds."""
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 3, 10, 10)).copy()
    return x, np.arange(n)


@pytest.mark.parametrize("batch_size", [1, 7, 10, 100])
def test_epoch_covers_every_example_once(batch_size: int) -> None:
    x, y = indexed_data(50)
    batches = list(iterate_batches(x, y, batch_size, rng=np.random.default_rng(0)))
    seen = np.concatenate([yb for _, yb in batches])
    np.testing.assert_array_equal(np.sort(seen), y)
    assert [len(yb) for _, yb in batches[:-1]] == [batch_size] * (len(batches) - 1)
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0, 0, 0], yb)
    if batch_size > 1:
        assert not np.array_equal(seen, y)  # shuffled


def test_drop_last_and_no_shuffle() -> None:
    x, y = indexed_data(50)
    batches = list(iterate_batches(x, y, 16, shuffle=False, drop_last=True))
    assert [len(yb) for _, yb in batches] == [16, 16, 16]
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y[:48])


def test_batches_are_reproducible_from_a_seed() -> None:
    x, y = colour_images(40), np.arange(40)

    def epoch(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return list(iterate_batches(x, y, 16, rng=np.random.default_rng(seed), augment=True))

    for (xa, ya), (xb, yb) in zip(epoch(3), epoch(3), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(epoch(3)[0][1], epoch(4)[0][1])


def test_augmented_batches_keep_labels_and_shapes() -> None:
    x, y = indexed_data(20)
    for xb, yb in iterate_batches(x, y, 8, rng=np.random.default_rng(0), augment=True):
        assert xb.shape[1:] == x.shape[1:] and xb.dtype == x.dtype
        # shifted by at most 4 either way, a 10x10 image still covers pixel (4, 4)
        np.testing.assert_array_equal(xb[:, 0, 4, 4], yb)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_bad_batch_size(batch_size: int) -> None:
    x, y = indexed_data(4)
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(x, y, batch_size)


def test_mismatched_lengths() -> None:
    x, y = indexed_data(4)
    with pytest.raises(ValueError, match="length"):
        iterate_batches(x, y[:3], 2)


def test_the_sample_in_the_package_is_four_test_images_of_each_class() -> None:
    sample = load_sample()
    assert sample.x.shape == (40, 3, 32, 32) and sample.x.dtype == np.uint8
    assert sample.y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(sample.y, minlength=10), 4)
    assert sample.label_names == LABEL_NAMES
    assert sample.x.std() > 30  # images, not a constant


@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason=f"shared CIFAR-10 absent: {SHARED_ARCHIVE}")
def test_the_sample_is_the_first_four_of_each_class_of_the_shared_test_batch() -> None:
    data = load_cifar10(SHARED_ARCHIVE)
    first = np.sort(np.concatenate([np.flatnonzero(data.y_test == c)[:4] for c in range(10)]))
    sample = load_sample()
    np.testing.assert_array_equal(sample.x, data.x_test[first])
    np.testing.assert_array_equal(sample.y, data.y_test[first])
