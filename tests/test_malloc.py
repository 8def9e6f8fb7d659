"""The glibc malloc settings of the host executions (gpulstm._malloc): applied once, skipped
when the user opts out or set the variables themselves, and they stop the per-call page
faults of a training loop. Each case runs in a fresh interpreter (the settings are
process-wide)."""
import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the settings are glibc's")

LOOP = r"""
import json, resource, sys
import numpy as np
import gpulstm as gl
from gpulstm import _malloc
m = gl.LSTM(32, 32, backend="numpy", dtype="float32", seed=0)
rng = np.random.default_rng(0)
x = rng.standard_normal((100, 32, 32)).astype(np.float32)
g = rng.standard_normal((100, 32, 32)).astype(np.float32)
for _ in range(3):
    m(x); m.backward(g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 40
for _ in range(n):
    m(x); m.backward(g)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n
print(json.dumps({"state": _malloc.tune(), "faults": faults}))
"""


def _run(**env):
    e = {k: v for k, v in os.environ.items()
         if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GPULSTM_MALLOC_TUNING")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", LOOP], env=e, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_tuning_applies_and_stops_page_faults():
    tuned = _run()
    untuned = _run(GPULSTM_MALLOC_TUNING="0")
    assert tuned["state"] is True
    assert "GPULSTM_MALLOC_TUNING=0" in untuned["state"]
    # untuned, the loop maps and faults in its buffers on every call (~1,000 pages here)
    assert tuned["faults"] < untuned["faults"] / 4, (tuned, untuned)


@glibc
def test_users_malloc_variables_win():
    res = _run(MALLOC_TRIM_THRESHOLD_="1000000")
    assert "MALLOC_TRIM_THRESHOLD_" in res["state"]
