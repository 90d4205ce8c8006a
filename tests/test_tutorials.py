"""Every tutorial runs as a script (its asserts are its checks) and reads as a notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"


def test_the_tutorials_are_numbered_in_order():
    numbers = [int(path.name[:2]) for path in TUTORIALS]
    assert numbers == list(range(1, len(TUTORIALS) + 1)), [p.name for p in TUTORIALS]
    assert len(TUTORIALS) == 13


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_opens_as_a_notebook(path):
    notebook = jupytext.read(path, fmt="py:percent")
    kinds = {cell.cell_type for cell in notebook.cells}
    assert kinds == {"code", "markdown"}, f"{path.name} has cells of kinds {kinds}"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path):
    needs_data = "load_cifar10" in path.read_text() or path.name.startswith(("11", "13"))
    env = dict(os.environ, SKSCRATCH_FIGURES=str(tmp_path), SKSCRATCH_TUTORIAL_SMALL="1")
    if needs_data and "SKSCRATCH_DATA" not in os.environ:
        if not SHARED_ARCHIVE.exists():
            pytest.skip(f"{path.name} needs CIFAR-10; set SKSCRATCH_DATA or put {SHARED_ARCHIVE}")
        env["SKSCRATCH_DATA"] = str(SHARED_ARCHIVE)
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{path.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    figures = list(tmp_path.glob("*.png"))
    assert figures, f"{path.name} saved no figure"
