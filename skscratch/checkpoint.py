"""Checkpoints: one `.npz` file per run, written atomically, read without pickle.

A checkpoint holds the model's state_dict (keys `model.<name>`), the optimiser's (`optim.<name>`)
and a JSON header (`meta`): the format version, the model configuration, the training
configuration, the position in training and the history of metrics. Every value is a plain array
or a string, so `np.load(..., allow_pickle=False)` reads it and loading never runs code.

Writing goes to a temporary file in the same folder, which is flushed to disk and then renamed
over the old checkpoint: a crash at any moment leaves either the old file or the new one whole.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, from a newer version or for another model."""


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, and rename it to `path`.

    The file gets the permissions it would have had written in place: those of the file it
    replaces, or for a new file 0o666 less the umask (mkstemp makes its files owner-only).
    """
    path = Path(path)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself lives in the folder: sync it too so it survives a power cut.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _mode_for(path: Path) -> int:
    """The permission bits of `path` if it exists, else those open() would give a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        pass
    # The umask can only be read by setting it. A file another thread creates between these two
    # calls comes out owner-only (umask 0o077), the safe side; skscratch writes from one thread.
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def save_checkpoint(
    path: Path, meta: dict, model_state: dict[str, NDArray], optim_state: dict[str, NDArray]
) -> None:
    arrays = {f"model.{k}": v for k, v in model_state.items()}
    arrays |= {f"optim.{k}": v for k, v in optim_state.items()}
    arrays["meta"] = np.array(json.dumps({"format_version": FORMAT_VERSION, **meta}))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: Path) -> tuple[dict, dict[str, NDArray], dict[str, NDArray]]:
    """Read a checkpoint; return (meta, model_state, optim_state). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged?): {exc}"
        ) from exc
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not an skscratch checkpoint: it has no 'meta' entry")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} has a damaged header: {exc}") from exc
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this skscratch reads format "
            f"{FORMAT_VERSION} and older. Upgrade skscratch to read it."
        )
    model = {k.removeprefix("model."): v for k, v in arrays.items() if k.startswith("model.")}
    optim = {k.removeprefix("optim."): v for k, v in arrays.items() if k.startswith("optim.")}
    return meta, model, optim
