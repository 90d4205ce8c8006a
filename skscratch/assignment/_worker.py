"""The grading checks of one exercise, run against a student copy in a fresh process.

    python _worker.py STUDENT_DIR EXERCISE SEED SECONDS_PER_CHECK

prints one JSON line per check: {"check": ..., "passed": bool, "reason": ...}. The student's
package is imported from STUDENT_DIR; the references (`_references.py`) use NumPy alone (nested
loops and formulas written out again), so a mistake in the student's code cannot leak into its
own grade. What is graded is the student's own functions, the reference path: in this process
`skscratch.fast` (the compiled backend, which is the instructor's code) cannot be imported, so
a function that hands its work to it fails instead of scoring.
Backward passes are checked against centred differences in float64, with a random upstream
gradient (`_compare.py`). Each check has a time limit; a check that raises, returns the wrong
shape or NaN, or takes too long fails with a reason, and the next check runs.

The checks themselves are in `_checks_operations.py` and `_checks_gradient_checking.py`. This
file runs as a script, not as part of the package: its neighbours are imported by their plain
names, from its own folder (the first entry of a script's sys.path), and all of them before the
student copy goes on the path, so none can be replaced by a module of the student's.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import signal
import sys
import traceback

import _checks_gradient_checking
import _checks_operations
import numpy as np
from _compare import CheckFailed, TimeLimit, raise_time_limit

CHECKS = _checks_operations.CHECKS | _checks_gradient_checking.CHECKS


class NoFastBackend(importlib.abc.MetaPathFinder):
    """Refuses `skscratch.fast` and its modules: the grader grades the student's functions."""

    def find_spec(self, name, path=None, target=None):
        if name == "skscratch.fast" or name.startswith("skscratch.fast."):
            raise ImportError(
                f"{name} is not available in the grader: your own functions are graded, not "
                f"the compiled backend"
            )
        return None


def run(student_dir: str, exercise: str, seed: int, seconds: int) -> None:
    sys.meta_path.insert(0, NoFastBackend())
    sys.path.insert(0, student_dir)
    import skscratch

    here = os.path.realpath(os.path.dirname(skscratch.__file__))
    if not here.startswith(os.path.realpath(student_dir) + os.sep):
        sys.exit(f"imported skscratch from {here}, not from the student copy {student_dir}")

    signal.signal(signal.SIGALRM, raise_time_limit)
    for name, check in CHECKS[exercise]:
        rng = np.random.default_rng(seed)
        signal.alarm(seconds)
        try:
            check(skscratch, rng)
            result = {"check": name, "passed": True, "reason": ""}
        except CheckFailed as exc:
            result = {"check": name, "passed": False, "reason": str(exc)}
        except TimeLimit:
            result = {"check": name, "passed": False, "reason": f"took longer than {seconds} s"}
        except NotImplementedError as exc:
            result = {"check": name, "passed": False, "reason": f"not written yet ({exc})"}
        except Exception as exc:  # noqa: BLE001 - any error in student code is a failed check
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result = {
                "check": name,
                "passed": False,
                "reason": f"raised {type(exc).__name__}: {exc} "
                f"({os.path.basename(where.filename)}, line {where.lineno})",
            }
        finally:
            signal.alarm(0)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
