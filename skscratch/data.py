"""CIFAR-10: find it, read it safely, normalise it, augment it, batch it.

The official "python version" archive holds six pickled batches. Unpickling runs code named in
the file, so the batches go through an unpickler that can only rebuild numpy arrays, and they
are read straight out of the tar.gz in memory: nothing is extracted to disk.

Images are uint8 NCHW (N, 3, 32, 32); training runs in float32 after `normalize`.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from skscratch.augmentation import augment

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
NUM_CLASSES = 10
# A real batch pickle is about 31 MB; refuse to read anything far larger into memory.
_MAX_MEMBER_BYTES = 512 * 2**20


class DataError(ValueError):
    """The data set is missing, cannot be downloaded, or is not a valid CIFAR-10 copy."""


class Cifar10(NamedTuple):
    x_train: npt.NDArray[np.uint8]  # (50000, 3, 32, 32)
    y_train: npt.NDArray[np.int64]  # (50000,)
    x_test: npt.NDArray[np.uint8]  # (10000, 3, 32, 32)
    y_test: npt.NDArray[np.int64]  # (10000,)
    label_names: list[str]  # ["airplane", ..., "truck"]


# ----------------------------------------------------------------------------- safe unpickling


def _numpy_core(submodule: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles name either, depending on who wrote them.
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


_multiarray, _numeric = _numpy_core("multiarray"), _numpy_core("numeric")
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") at pickle protocol 2.
    ("_codecs", "encode"): codecs.encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
}
for _core in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _SAFE_GLOBALS[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
    # Protocol 5 pickles of arrays go through _frombuffer instead of _reconstruct.
    _SAFE_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle global {module}.{name} "
                "(a CIFAR-10 batch only needs numpy arrays)"
            ) from None


def _unpickle(data: bytes, source: str) -> Any:
    try:
        return _ArrayUnpickler(data, source).load()
    except DataError:
        raise
    except Exception as err:  # a damaged pickle can fail in many ways
        raise DataError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err


# ----------------------------------------------------------------------------- reading batches


def _read_archive(archive: Path) -> dict[str, bytes]:
    """Read the expected members of the tar.gz into memory, in one pass over the stream."""
    wanted = {f"{FOLDER_NAME}/{name}": name for name in (*TRAIN_BATCHES, TEST_BATCH, META)}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None:
                    continue
                if not member.isreg():
                    raise DataError(f"{archive}: member {member.name} is not a regular file")
                if member.size > _MAX_MEMBER_BYTES:
                    raise DataError(f"{archive}: member {member.name} is too large")
                found[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{archive}: not a readable tar.gz archive ({err})") from err
    return found


def _read_folder(folder: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in (*TRAIN_BATCHES, TEST_BATCH, META):
        file = folder / name
        if file.is_file():
            if file.stat().st_size > _MAX_MEMBER_BYTES:
                raise DataError(f"{file}: too large for a CIFAR-10 batch")
            found[name] = file.read_bytes()
    return found


def _field(batch: dict, key: str, source: str) -> Any:
    # Keys are bytes under encoding="bytes"; accept str keys from home-made pickles as well.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{source}: no {key!r} entry")


def _parse_batch(data: bytes, source: str) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Unpickle one batch: returns images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    batch = _unpickle(data, source)
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a dict, got {type(batch).__name__}")
    x, labels = _field(batch, "data", source), _field(batch, "labels", source)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise DataError(f"{source}: data must be a uint8 array of shape (n, 3072), got {got}")
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
        raise DataError(f"{source}: labels must be {len(x)} integers, one per image")
    if len(y) and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{source}: labels must lie in 0..{NUM_CLASSES - 1}")
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major.
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _parse(members: dict[str, bytes], where: Path) -> Cifar10:
    missing = [name for name in (*TRAIN_BATCHES, TEST_BATCH, META) if name not in members]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}")
    train = [_parse_batch(members[name], f"{where}: {name}") for name in TRAIN_BATCHES]
    x_test, y_test = _parse_batch(members[TEST_BATCH], f"{where}: {TEST_BATCH}")
    meta = _unpickle(members[META], f"{where}: {META}")
    names = _field(meta, "label_names", f"{where}: {META}") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{where}: {META} must hold a list of {NUM_CLASSES} label_names")
    label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Cifar10(x_train, y_train, x_test, y_test, label_names)


# ----------------------------------------------------------------------------- finding the data


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "skscratch"


def _find_in(path: Path) -> Path | None:
    """The archive or batch folder that `path` is, or holds directly; None if neither."""
    if path.is_file():
        return path
    if (path / META).is_file() or (path / TRAIN_BATCHES[0]).is_file():
        return path
    for candidate in (path / FOLDER_NAME, path / ARCHIVE_NAME):
        if candidate.exists():
            return candidate
    return None


def _load_from(path: Path, origin: str) -> Cifar10:
    if not path.exists():
        raise DataError(f"{origin} {path} does not exist")
    found = _find_in(path)
    if found is None:
        raise DataError(f"{origin} {path} holds neither {ARCHIVE_NAME} nor {FOLDER_NAME}/")
    members = _read_archive(found) if found.is_file() else _read_folder(found)
    return _parse(members, found)


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch `url` to `dest`, all or nothing: a temp file beside it is checked, then renamed."""
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(name)
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            # A dropped connection just ends the stream early; say so rather than "bad md5".
            if total is not None and received != total:
                raise ConnectionError(f"connection closed after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != md5:
            raise DataError(
                f"download from {url} is corrupt: md5 {digest.hexdigest()}, expected {md5}; "
                f"nothing was written to {dest}"
            )
        os.replace(tmp, dest)
        tmp = None
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"could not download {url} ({err}). Download {OFFICIAL_URL} yourself and put it at "
            f"{dest}, or point SKSCRATCH_DATA (or --data) at where it is."
        ) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def load_cifar10(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    url: str = OFFICIAL_URL,
    md5: str = OFFICIAL_MD5,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Cifar10:
    """Load CIFAR-10 as uint8 NCHW images and int64 labels.

    Looks, in order, at `path`, then the environment variable SKSCRATCH_DATA (each may name
    cifar-10-python.tar.gz, the extracted cifar-10-batches-py/ folder, or a folder holding either),
    then the cache folder (`cache_dir`, else $XDG_CACHE_HOME/skscratch or ~/.cache/skscratch).
    If all fail and `download` is true, fetches `url` into the cache folder and checks `md5`.
    A local copy is validated but not checksummed, so re-encoded copies of CIFAR-10 load too.

    Returns Cifar10(x_train (50000, 3, 32, 32) uint8, y_train (50000,) int64,
    x_test (10000, 3, 32, 32) uint8, y_test (10000,) int64, label_names: 10 str).
    Raises DataError if the data cannot be found, fetched or read.
    """
    if path is not None:
        return _load_from(Path(path).expanduser(), "data path")
    if env := os.environ.get("SKSCRATCH_DATA"):
        return _load_from(Path(env).expanduser(), "SKSCRATCH_DATA")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    if cache.is_dir() and _find_in(cache) is not None:
        return _load_from(cache, "cache folder")
    if not download:
        raise DataError(
            f"CIFAR-10 not found: download {OFFICIAL_URL} and put it at {cache / ARCHIVE_NAME}, "
            "or point SKSCRATCH_DATA (or --data) at where it is."
        )
    _download(url, cache / ARCHIVE_NAME, md5)
    return _load_from(cache / ARCHIVE_NAME, "downloaded archive")


# ------------------------------------------------------------------- the sample in the package

SAMPLE = Path(__file__).with_name("cifar10_sample.npz")


class Sample(NamedTuple):
    x: npt.NDArray[np.uint8]  # (40, 3, 32, 32)
    y: npt.NDArray[np.int64]  # (40,)
    label_names: list[str]


def load_sample() -> Sample:
    """40 CIFAR-10 test images, the first four of each class, shipped with skscratch (120 KB):
    enough for a tutorial that looks at a few images, without the 170 MB archive. They come
    from the test batch of the JPEG-q75 copy of CIFAR-10 that skscratch's recorded runs used
    (the file's `index` array says which); x (40, 3, 32, 32) uint8, y (40,) int64."""
    with np.load(SAMPLE, allow_pickle=False) as f:
        return Sample(f["x"], f["y"].astype(np.int64), [str(n) for n in f["label_names"]])


# ----------------------------------------------------------------------------- preprocessing


def channel_stats(
    x: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-channel mean and (population) std of uint8 images x (N, C, H, W), in [0, 1] units.

    Returns mean (C,) and std (C,) float32.
    """
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
    # A 256-bin histogram per channel gives exact moments without a float copy of the data.
    values = np.arange(256, dtype=np.float64) / 255
    mean, std = np.empty(x.shape[1], np.float32), np.empty(x.shape[1], np.float32)
    for c in range(x.shape[1]):
        p = np.bincount(x[:, c].ravel(), minlength=256) / x[:, c].size
        mean[c] = m = p @ values
        std[c] = np.sqrt(p @ (values - m) ** 2)
    return mean, std


def normalize(
    x: npt.NDArray[np.uint8], mean: npt.ArrayLike, std: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """(x / 255 - mean) / std for uint8 images x (N, C, H, W); mean, std (C,). Returns float32."""
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)  # (C, 1, 1) broadcasts over N, H, W
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    out = x.astype(np.float32)
    out *= np.float32(1 / 255)
    out -= mean
    out /= std
    return out


def iterate_batches(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    shuffle: bool = True,
    augment: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """Yield (xb, yb) minibatches for one epoch: xb (B, C, H, W), yb (B,), B <= batch_size.

    Shuffling and augmentation draw only from `rng` (a fresh unseeded Generator if None), so a
    seeded Generator makes the epoch reproducible. With drop_last, a final batch smaller than
    batch_size is skipped; otherwise every example appears exactly once.
    """
    # Checked here, not in the generator below, so a bad call fails before the first batch.
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    rng = np.random.default_rng() if rng is None else rng
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    return _batches(x, y, order[:stop], batch_size, rng if augment else None)


def _batches(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    order: npt.NDArray[np.int64],
    batch_size: int,
    augment_rng: np.random.Generator | None,
) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        yield (xb if augment_rng is None else augment(xb, augment_rng)), y[idx]
