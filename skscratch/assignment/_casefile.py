"""Cases and results on disk: arrays in an .npz (read without pickle), the rest in JSON.

    write_cases(base, cases, expected=...)  base.npz + base.json; with expected=False the
                                            answers stay out (what a grading worker is given)
    read_cases(base)                        a list of dicts: exercise, check, what, program,
                                            inputs, options, and expected and source if stored
    write_result(folder, i, results, error) case i's results, each file created only once
    read_result(folder, i)                  (results, error), or None if case i left none

NumPy's .npz is read with allow_pickle=False, so a file a student's code wrote cannot run code
in the process that reads it; a result file larger than MAX_BYTES is refused unread.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MAX_BYTES = 64 * 2**20


def write_cases(base: Path, cases, *, expected: bool) -> None:
    arrays, meta = {}, []
    for i, case in enumerate(cases):
        for name, value in case.inputs.items():
            arrays[f"{i}/in/{name}"] = np.asarray(value)
        entry = {
            "exercise": case.exercise,
            "check": case.check,
            "what": case.what,
            "program": case.program,
            "options": case.options,
            "inputs": list(case.inputs),
        }
        if expected:
            entry["expected"] = {name: rule for name, (rule, _) in case.expected.items()}
            entry["source"] = case.source
            for name, (rule, value) in case.expected.items():
                if rule != "none":
                    arrays[f"{i}/want/{name}"] = np.asarray(value)
        meta.append(entry)
    np.savez(Path(f"{base}.npz"), **arrays)
    Path(f"{base}.json").write_text(json.dumps(meta, indent=1) + "\n")


def read_cases(base: Path) -> list[dict]:
    meta = json.loads(Path(f"{base}.json").read_text())
    with np.load(Path(f"{base}.npz"), allow_pickle=False) as arrays:
        for i, entry in enumerate(meta):
            entry["inputs"] = {name: arrays[f"{i}/in/{name}"] for name in entry["inputs"]}
            if "expected" in entry:
                entry["expected"] = {
                    name: (rule, None if rule == "none" else arrays[f"{i}/want/{name}"])
                    for name, rule in entry["expected"].items()
                }
    return meta


def write_result(folder: Path, i: int, results: dict | None, error: str | None) -> None:
    """Case i's results ({name: array, None or str}) or the error that stopped it. Each file is
    created afresh ("x" mode): a result already there means something else wrote it."""
    results = results or {}
    nones = [name for name, value in results.items() if value is None]
    arrays = {name: np.asarray(v) for name, v in results.items() if v is not None}
    for name, value in arrays.items():  # checked before any file is made
        if value.dtype.kind not in "biufUS":
            raise TypeError(f"{name} is not an array of numbers or text")
    with open(folder / f"{i}.npz", "xb") as f:
        np.savez(f, **arrays)
    with open(folder / f"{i}.json", "x") as f:  # last: its presence says the case finished
        json.dump({"none": nones, "error": error}, f)


def read_result(folder: Path, i: int) -> tuple[dict, str | None] | None:
    meta_path, array_path = folder / f"{i}.json", folder / f"{i}.npz"
    if not meta_path.is_file() or not array_path.is_file():
        return None
    if meta_path.stat().st_size > MAX_BYTES or array_path.stat().st_size > MAX_BYTES:
        return {}, f"its results are larger than {MAX_BYTES // 2**20} MiB"
    try:
        meta = json.loads(meta_path.read_text())
        with np.load(array_path, allow_pickle=False) as arrays:
            results = {name: arrays[name] for name in arrays.files}
        nones = meta.get("none", [])
        error = meta.get("error")
        if not isinstance(nones, list) or not (error is None or isinstance(error, str)):
            raise ValueError("malformed")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {}, f"its results could not be read ({type(exc).__name__})"
    return results | {str(name): None for name in nones}, error
