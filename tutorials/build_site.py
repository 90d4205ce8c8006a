"""Build the tutorials into a folder of HTML pages, each executed, with its figures.

    pip install -e '.[site]'
    python tutorials/build_site.py --out site          (then open site/index.html)
    python tutorials/build_site.py --out site 03 08    (only those chapters)

Each chapter (`tutorials/NN_*.py`, jupytext percent format) becomes a notebook in memory, runs
top to bottom in a fresh Python kernel with a scratch folder as its working directory, and is
written as OUT/NN_name.html with its printed output and figures; OUT/index.html lists the
chapters. The maths is rendered by a copy of MathJax in OUT/mathjax, so the pages read without
a network. No notebook is written anywhere: the .py files stay the only sources.

Chapters that need CIFAR-10 read `$SKSCRATCH_DATA` as they do when run as scripts, and
`SKSCRATCH_TUTORIAL_SMALL=1` shortens their training here too. A chapter that fails is reported
with the cell that failed; the others are still built, and the command exits with status 1.
"""

from __future__ import annotations

import argparse
import html
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHAPTERS = sorted(HERE.glob("[0-9][0-9]_*.py"))
MARKER = ".skscratch-site"  # a folder with this file was made by this command


def notebook(path: Path):
    """The chapter as a notebook (nbformat), as Jupyter would open it."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def execute(path: Path, workdir: Path, timeout: int = 1800):
    """Run the chapter as a notebook in a fresh kernel, in `workdir`; return the executed
    notebook. Raises nbclient's CellExecutionError, which shows the failing cell."""
    from nbclient import NotebookClient

    nb = notebook(path)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb


def title(path: Path) -> str:
    """The chapter's first heading: '# # 3. Convolution ...' -> '3. Convolution ...'."""
    for line in path.read_text().splitlines():
        if line.startswith("# # "):
            return line[4:].strip()
    return path.stem


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        sys.exit(f"build_site.py: error: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        sys.exit(
            f"build_site.py: error: {out} is a folder this command did not make and is not "
            "empty; choose a new one (nothing was written)"
        )


def _mathjax(out: Path) -> str:
    """Copy MathJax into OUT/mathjax; return the URL a page loads it from."""
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (out / "mathjax").exists():
        shutil.copytree(source, out / "mathjax")
    return "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"


def build(out: Path, chapters: list[Path]) -> list[str]:
    """Write the pages of `chapters` and the index into `out`; return the failures, one line
    each (an empty list when every chapter ran)."""
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by tutorials/build_site.py\n")
    exporter = HTMLExporter(template_name="lab", mathjax_url=_mathjax(out))
    failures = []
    for path in chapters:
        print(f"{path.name}: running", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            try:
                nb = execute(path, Path(scratch))
            except CellExecutionError as exc:
                failures.append(f"{path.name}: {str(exc).strip().splitlines()[-1]}")
                print(f"{path.name}: FAILED\n{exc}", file=sys.stderr)
                continue
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title(path)}})
        (out / f"{path.stem}.html").write_text(body)
        print(f"{path.name}: written to {out / (path.stem + '.html')}")
    _index(out)
    return failures


def _index(out: Path) -> None:
    items = "\n".join(
        f'<li><a href="{path.stem}.html">{html.escape(title(path))}</a></li>'
        for path in CHAPTERS
        if (out / f"{path.stem}.html").exists()
    )
    (out / "index.html").write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>skscratch tutorials</title>"
        "<style>body{font-family:sans-serif;max-width:40em;margin:3em auto;line-height:1.6}"
        "</style></head><body>\n<h1>skscratch: Selective Kernel Networks from scratch</h1>\n"
        f"<p>The tutorials, in order, each run as built.</p>\n<ol style='list-style:none'>\n"
        f"{items}\n</ol>\n</body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("site"), help="default: %(default)s")
    parser.add_argument("chapters", nargs="*", help="chapter numbers (default: every chapter)")
    args = parser.parse_args(argv)
    by_number = {path.name[:2]: path for path in CHAPTERS}
    unknown = [n for n in args.chapters if n.zfill(2) not in by_number]
    if unknown:
        parser.error(f"no chapter {', '.join(unknown)}; the chapters are {', '.join(by_number)}")
    chosen = [by_number[n.zfill(2)] for n in args.chapters] or CHAPTERS
    _check_out(args.out)
    failures = build(args.out, chosen)
    for line in failures:
        print(f"failed: {line}", file=sys.stderr)
    print(f"{len(chosen) - len(failures)} of {len(chosen)} chapters in {args.out / 'index.html'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
