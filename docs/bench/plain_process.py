"""The fast backend in a plain process (no `skscratch.tune_process()`) and in a tuned one.

    python docs/bench/plain_process.py

Runs each measurement in a fresh process, without the two variables that tune_process sets
(a user's own values excepted): the grouped 3x3 convolution called directly (N=64, C=64, G=32,
32x32, float32; median of 21 calls after 3 warm-up calls), and a training step of the "small"
network (batch 128; median of 5 steps after 2), each plain and tuned, three times, alternating.
"""

import json
import os
import subprocess
import sys

CONV = """
import time, numpy as np
from skscratch.fast import conv2d_backward, conv2d_forward
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 64, 32, 32), dtype=np.float32)
w = rng.standard_normal((64, 2, 3, 3), dtype=np.float32)
out, cache = conv2d_forward(x, w, padding=1, groups=32)
d = rng.standard_normal(out.shape, dtype=np.float32)
for _ in range(3):
    conv2d_backward(d, conv2d_forward(x, w, padding=1, groups=32)[1])
tf, tb = [], []
for _ in range(21):
    t = time.perf_counter(); out, cache = conv2d_forward(x, w, padding=1, groups=32)
    tf.append(time.perf_counter() - t)
    t = time.perf_counter(); conv2d_backward(d, cache); tb.append(time.perf_counter() - t)
result = {"forward ms": np.median(tf) * 1e3, "backward ms": np.median(tb) * 1e3}
"""

STEP = """
import time, numpy as np
from skscratch.models import PRESETS, SKResNeXt
from skscratch.optim import SGD
from skscratch.train import train_step
rng = np.random.default_rng(0)
x = rng.standard_normal((128, 3, 32, 32), dtype=np.float32)
y = rng.integers(0, 10, 128)
model = SKResNeXt(PRESETS["small"], backend="fast")
optimizer = SGD(model, lr=0.01)
for _ in range(2):
    train_step(model, optimizer, x, y)
times = []
for _ in range(5):
    t = time.perf_counter(); train_step(model, optimizer, x, y)
    times.append(time.perf_counter() - t)
result = {"images/s": 128 / np.median(times)}
"""

TUNE = "import skscratch; skscratch.tune_process()\n"
REPORT = "\nimport json; print(json.dumps({k: float(v) for k, v in result.items()}))\n"


def measure(code: str, tuned: bool) -> dict:
    env = dict(os.environ)
    for name in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY"):
        env.pop(name, None)
    script = (TUNE if tuned else "") + code + REPORT
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(run.stdout)


for name, code in (("grouped 3x3 conv, called directly", CONV), ("training step", STEP)):
    for _ in range(3):
        for tuned in (False, True):
            cells = ", ".join(f"{k} {v:.1f}" for k, v in measure(code, tuned).items())
            print(f"{name}, {'tuned' if tuned else 'plain'}: {cells}")
