"""Every tutorial runs as a script and as a notebook (its asserts are its checks), and the site
command writes executed tutorials as HTML pages."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar-10-python.tar.gz"

_spec = importlib.util.spec_from_file_location("build_site", ROOT / "tutorials" / "build_site.py")
build_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_site)


def tutorial_env(path: Path, figures: Path) -> dict[str, str]:
    """The environment a tutorial runs in here: figures to a scratch folder, the small versions
    of the training chapters, and CIFAR-10 for the chapters that need it (skipped without)."""
    needs_data = "load_cifar10" in path.read_text() or path.name.startswith(("11", "13"))
    env = dict(os.environ, SKSCRATCH_FIGURES=str(figures), SKSCRATCH_TUTORIAL_SMALL="1")
    if needs_data and "SKSCRATCH_DATA" not in os.environ:
        if not SHARED_ARCHIVE.exists():
            pytest.skip(f"{path.name} needs CIFAR-10; set SKSCRATCH_DATA or put {SHARED_ARCHIVE}")
        env["SKSCRATCH_DATA"] = str(SHARED_ARCHIVE)
    return env


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
    env = tutorial_env(path, tmp_path)
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


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_as_a_notebook(path, tmp_path, monkeypatch):
    for key, value in tutorial_env(path, tmp_path).items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    nb = build_site.execute(path, tmp_path)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # In a notebook the figures are shown inline, not saved.
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no figure"
    assert not list(tmp_path.glob("*.png"))


def test_the_site_command_writes_executed_pages_and_an_index(tmp_path):
    out = tmp_path / "site"
    assert build_site.main(["--out", str(out), "1"]) == 0
    page = (out / "01_chain_rule_and_graphs.html").read_text()
    assert "data:image/png;base64," in page  # the figures, inside the page
    assert "mathjax/MathJax.js" in page and (out / "mathjax" / "MathJax.js").is_file()
    assert "$$" in page and "\\frac" in page  # display maths, left for MathJax to render
    index = (out / "index.html").read_text()
    assert 'href="01_chain_rule_and_graphs.html"' in index
    assert "1. The chain rule on a computational graph" in index
    # A second build into the same folder adds to it.
    assert build_site.main(["--out", str(out), "2"]) == 0
    index = (out / "index.html").read_text()
    assert "01_chain_rule" in index and "02_fc_and_softmax" in index


def test_the_site_command_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        build_site.main(["--out", str(out), "1"])
    assert "did not make" in str(exc.value) and "nothing was written" in str(exc.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(SystemExit):
        build_site.main(["--out", str(tmp_path / "site"), "99"])
    assert "no chapter 99" in capsys.readouterr().err
