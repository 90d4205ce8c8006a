"""The two paths, kept apart: the layout of the package that STYLE.md ("two paths") asks for.

- The teaching modules (the reference path) are plain NumPy: they import neither numba nor
  skscratch.fast, and never read or write the environment. numba is imported in skscratch.fast
  and nowhere else.
- Importing skscratch changes nothing outside it: no environment variable is written, and numba
  is not loaded until code asks for the fast backend.
- `skscratch.im2col` is the module, not a function that shadows it.
- Modules are short enough to read in one sitting.
- Every fast pair takes the arguments of its reference pair, plus its documented extras.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

import skscratch
from skscratch.backends import Backend, get_backend

PACKAGE = Path(skscratch.__file__).resolve().parent
FAST = PACKAGE / "fast"
TEACHING = [
    "im2col.py",
    "conv.py",
    "batchnorm.py",
    "activations.py",
    "pooling.py",
    "linear.py",
    "losses.py",
    "layers.py",
    "sk.py",
    "nn.py",
    "models.py",
    "_checks.py",
]


def _module_name(path: Path) -> str:
    """skscratch/fast/conv.py -> skscratch.fast.conv; a package's __init__.py -> the package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import in the file (or in `text`, as if it were that file):
    `import a.b` gives a.b; `from a import b` gives a and a.b (b may be a module), relative
    imports resolved; a string passed to importlib.import_module or __import__ counts too."""
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0] if node.args else None
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
                found.append((node.lineno, str(first.value)))
    return found


def _is(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _environment_uses(text: str) -> list[tuple[int, str]]:
    """(line, name) for every mention of the process environment (os.environ, getenv, ...)."""
    uses = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT:
            uses.append((node.lineno, node.attr))
        elif isinstance(node, ast.Name) and node.id in ENVIRONMENT:
            uses.append((node.lineno, node.id))
    return sorted(uses)


@pytest.mark.parametrize("name", TEACHING)
def test_a_teaching_module_is_plain_numpy(name):
    """No numba, nothing of skscratch.fast, no os and no environment in the reference path."""
    path = PACKAGE / name
    assert path.is_file(), f"{name} is not in {PACKAGE}"
    forbidden = [
        f"line {line}: {module}"
        for line, module in _imported_names(path)
        if _is(module, "numba") or _is(module, "skscratch.fast") or _is(module, "os")
    ]
    assert not forbidden, f"{name} imports {forbidden}"
    uses = [f"line {line}: {what}" for line, what in _environment_uses(path.read_text())]
    assert not uses, f"{name} touches the environment: {uses}"


def test_numba_is_imported_only_in_skscratch_fast():
    paths = sorted(PACKAGE.rglob("*.py"))
    assert any(p.is_relative_to(FAST) for p in paths)
    outside = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in paths
        if not path.is_relative_to(FAST)
        for line, module in _imported_names(path)
        if _is(module, "numba")
    ]
    assert not outside, f"numba is imported outside skscratch/fast: {outside}"
    # ... and the fast package does import it (the check above looks at the right names).
    assert any(_is(m, "numba") for _, m in _imported_names(FAST / "im2col.py"))


def test_the_checks_see_every_kind_of_import():
    """The source checks above catch the spellings an import can take."""
    probe = PACKAGE / "probe.py"  # where a teaching module would be; never written
    for line in (
        "import numba",
        "from numba import njit",
        "import os",
        "from os import path",
        "from skscratch import fast",
        "from skscratch.fast.conv import conv2d_forward",
        "from .fast import im2col",
        "from . import fast",
        "importlib.import_module('skscratch.fast')",
        "def f():\n    import numba.core",
    ):
        names = [module for _, module in _imported_names(probe, text=line)]
        assert any(_is(m, "numba") or _is(m, "skscratch.fast") or _is(m, "os") for m in names), line
    text = "x = os.environ.get('A')\ny = getenv('B')\nfrom os import environ"
    assert [line for line, _ in _environment_uses(text)] == [1, 2]  # an import is caught above
    assert not _environment_uses("import numpy as np\nenv = {}")


# --- importing changes nothing -------------------------------------------------------------------

# What tune_process() would set: left out of the child's environment, so that a write shows.
KNOBS = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")

CHILD = """
import ctypes, json, os, sys

libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
before = dict(os.environ)
exec({code!r})
print(json.dumps({{
    "changed": sorted(k for k in set(before) | set(os.environ)
                      if before.get(k) != os.environ.get(k)),
    "c_level": {{k: libc.getenv(k.encode()) is not None for k in {knobs!r}}},
    "loaded": sorted(m for m in sys.modules if m == "numba" or m.startswith(("numba.",
                                                                          "skscratch.fast"))),
    "package": sys.modules["skscratch"].__file__,
}}))
"""


def _run_child(code: str, tmp_path: Path) -> dict:
    """Run `code` in a fresh interpreter with none of KNOBS set; what it changed and loaded."""
    # The rest of the environment as it is (OPENBLAS_CORETYPE and the like included: OpenBLAS
    # must find the same machine it always does).
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(code=textwrap.dedent(code), knobs=KNOBS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["package"] == skscratch.__file__  # the child tested this very package
    return report


@pytest.mark.parametrize(
    "code",
    [
        "import skscratch",
        "import skscratch; from skscratch import conv2d_forward, sk_unit_forward; "
        "import skscratch.models",
        # The reference path, end to end: a network built and run on it loads no numba.
        """
        import numpy as np
        import skscratch
        from skscratch.backends import use_backend
        from skscratch.models import PRESETS, SKResNeXt
        with use_backend("reference"):
            model = SKResNeXt(PRESETS["tiny"])
        out = model.forward(np.zeros((2, 3, 8, 8), np.float32))
        model.backward(np.ones_like(out))
        assert model.backend == "reference"
        """,
    ],
    ids=["import", "import functions and models", "reference network"],
)
def test_importing_skscratch_changes_nothing_and_loads_no_numba(code, tmp_path):
    report = _run_child(code, tmp_path)
    assert report["changed"] == [], f"os.environ changed: {report['changed']}"
    assert report["c_level"] == {knob: False for knob in KNOBS}
    assert report["loaded"] == [], f"loaded {report['loaded']}"


def test_the_fast_backend_loads_numba_when_asked_for(tmp_path):
    """The other side of the test above: the child can see numba load, and the environment is
    still untouched."""
    report = _run_child("import skscratch; skscratch.get_backend('fast')", tmp_path)
    assert report["changed"] == []
    assert "numba" in report["loaded"] and "skscratch.fast" in report["loaded"]


def test_tune_process_is_the_one_call_that_sets_process_knobs(tmp_path):
    report = _run_child("import skscratch; skscratch.tune_process()", tmp_path)
    assert report["changed"] == sorted(KNOBS)
    assert report["c_level"] == {knob: True for knob in KNOBS}
    assert report["loaded"] == []


# --- names --------------------------------------------------------------------------------------


def test_skscratch_im2col_is_the_module():
    import skscratch.im2col as m

    assert inspect.ismodule(m) and m is sys.modules["skscratch.im2col"]
    assert skscratch.im2col is m
    assert callable(m.im2col) and callable(m.col2im)
    # The same for the fast package: no function it exports hides its module of that name.
    import skscratch.fast.im2col as f

    assert inspect.ismodule(f) and f is sys.modules["skscratch.fast.im2col"]
    assert sys.modules["skscratch.fast"].im2col is f


@pytest.mark.parametrize("name", [n.removesuffix(".py") for n in TEACHING])
def test_no_exported_name_hides_a_teaching_module(name):
    module = __import__(f"skscratch.{name}", fromlist=["_"])
    assert getattr(skscratch, name) is module
    assert name not in skscratch.__all__


# --- size ---------------------------------------------------------------------------------------


def test_modules_are_short_enough_to_read_in_one_sitting():
    lengths = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    limits = {name: 320 if Path(name).parts[0] == "fast" else 400 for name in lengths}
    too_long = {name: n for name, n in lengths.items() if n > limits[name]}
    assert not too_long, f"lines above the limit (400; 320 in fast/): {too_long}"


# --- one interface -------------------------------------------------------------------------------

# The arguments a fast pair has and its reference pair has not, by design.
EXTRAS = {"conv2d_forward": {"algorithm"}, "conv2d_backward": {"add_to"}}


def _pairs():
    """(name, reference function, fast function) for every pair the fast backend has its own
    of, and im2col / col2im, which its convolution uses."""
    from skscratch import im2col as im2col_module
    from skscratch.fast import im2col as fast_im2col_module

    ref, fst = get_backend("reference"), get_backend("fast")
    pairs = [
        (f.name, getattr(ref, f.name), getattr(fst, f.name))
        for f in fields(Backend)
        if f.name != "name" and getattr(ref, f.name) is not getattr(fst, f.name)
    ]
    pairs += [
        (n, getattr(im2col_module, n), getattr(fast_im2col_module, n)) for n in ("im2col", "col2im")
    ]
    return pairs


PAIRS = _pairs()


def _interface(function, drop=()) -> tuple[list, dict]:
    """The positional parameters (name, kind, default) in order, and the keyword-only ones."""
    positional, keywords = [], {}
    for p in inspect.signature(function).parameters.values():
        if p.name in drop:
            continue
        if p.kind == p.KEYWORD_ONLY:
            keywords[p.name] = p.default
        else:
            positional.append((p.name, p.kind, p.default))
    return positional, keywords


@pytest.mark.parametrize("name, reference_pair, fast_pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_a_fast_pair_takes_the_arguments_of_its_reference_pair(name, reference_pair, fast_pair):
    extras = EXTRAS.get(name, set())
    assert extras <= set(inspect.signature(fast_pair).parameters), "an extra is documented"
    for extra in extras:
        assert inspect.signature(fast_pair).parameters[extra].kind == inspect.Parameter.KEYWORD_ONLY
    assert _interface(fast_pair, drop=extras) == _interface(reference_pair)


def test_every_pair_of_the_fast_backend_is_compared():
    """Every pair but pooling and linear, which both backends share."""
    expected = [
        f"{op}_{direction}"
        for op in ("conv2d", "batchnorm", "batchnorm_relu", "relu", "sk_unit")
        for direction in ("forward", "backward")
    ]
    assert sorted(name for name, _, _ in PAIRS) == sorted(
        [*expected, "add_relu_forward", "col2im", "im2col"]
    )
