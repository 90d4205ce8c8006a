"""Figures for the tutorials and the analysis: shown inline in a notebook, saved as PNG otherwise.

matplotlib is an optional extra (`pip install "skscratch[plot]"`); it is imported only here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def pyplot():
    """matplotlib.pyplot, with a headless backend unless a notebook is drawing the figures."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'skscratch[plot]'") from exc
    if not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def output_dir() -> Path:
    """Where a script's figures go: $SKSCRATCH_FIGURES, else output/ beside the running script."""
    if env := os.environ.get("SKSCRATCH_FIGURES"):
        return Path(env)
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path.cwd() / "script"
    return script.resolve().parent / "output"


def show(fig, name: str) -> Path | None:
    """Display `fig` inline in a notebook; otherwise save it as <output_dir>/<name>.png.

    Returns the path written, or None in a notebook.
    """
    plt = pyplot()
    if _in_notebook():
        plt.show()
        return None
    folder = output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"figure saved to {path}")
    return path


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules
