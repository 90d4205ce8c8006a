"""The fresh-process measurements: `python -m skscratch.bench alone|first-step ...`."""

import json
import sys

from skscratch.bench.alone import _first_step_seconds, _measure_step_alone

task, *rest = sys.argv[1:]
if task == "alone":
    framework, preset, batch, repeats = rest
    print(json.dumps(_measure_step_alone(framework, preset, int(batch), int(repeats))))
elif task == "first-step":
    print(json.dumps(_first_step_seconds()))
else:
    sys.exit(f"unknown task {task!r}")
