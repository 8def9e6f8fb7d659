"""The CUDA driver detection behind the install step (the CuPy extra) and `gpulstm info`."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from gpulstm.backends import BackendUnavailable, cuda_driver, explain_auto, get_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


def test_parse_nvidia_smi():
    assert cuda_driver.parse_nvidia_smi(SMI) == (12, 4)
    assert cuda_driver.parse_nvidia_smi(SMI.replace("12.4", "13.0")) == (13, 0)
    assert cuda_driver.parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate") is None


@pytest.mark.parametrize("version,extra", [((12, 4, "x"), "cuda12"), ((12, 0, "x"), "cuda12"),
                                           ((13, 0, "x"), "cuda13"), ((14, 1, "x"), "cuda13"),
                                           ((11, 8, "x"), None), (None, None)])
def test_cupy_extra_for_driver(version, extra, monkeypatch):
    monkeypatch.delenv("GPULSTM_CUDA_EXTRA", raising=False)
    assert cuda_driver.cupy_extra(version) == extra


def test_cupy_extra_override(monkeypatch):
    monkeypatch.setenv("GPULSTM_CUDA_EXTRA", "none")
    assert cuda_driver.cupy_extra((12, 4, "x")) is None
    monkeypatch.setenv("GPULSTM_CUDA_EXTRA", "cuda13")
    assert cuda_driver.cupy_extra(None) == "cuda13"
    monkeypatch.setenv("GPULSTM_CUDA_EXTRA", "cuda11")
    with pytest.raises(ValueError, match="GPULSTM_CUDA_EXTRA"):
        cuda_driver.cupy_extra()


def test_script_runs_by_path_without_the_package():
    """The Makefile runs it with the system Python before anything is installed."""
    script = ROOT / "gpulstm" / "backends" / "cuda_driver.py"
    env = dict(os.environ, GPULSTM_CUDA_EXTRA="cuda12")
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == "cuda12"
    r = subprocess.run([sys.executable, "-X", "importtime", str(script)], capture_output=True,
                       text=True, env=env, check=True)
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "subprocess" in imported and not imported & {"numpy", "cupy", "gpulstm"}


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.parametrize("extra,want", [("cuda13", '".[test,cuda13]"'), ("none", '".[test]"')])
def test_makefile_installs_the_detected_extra(extra, want, tmp_path):
    out = subprocess.run(["make", "-n", "venv", f"VENV={tmp_path / 'v'}", f"CUDA_EXTRA={extra}"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"pip install -e {want}" in out


def test_explain_auto(monkeypatch):
    try:
        get_backend("cupy")
    except BackendUnavailable as e:
        name, why = explain_auto()
        assert name == "numpy" and str(e) in why
        monkeypatch.setattr(cuda_driver, "driver_cuda_version", lambda: (12, 4, "nvidia-smi"))
        monkeypatch.delenv("GPULSTM_CUDA_EXTRA", raising=False)
        name, why = explain_auto()
        assert name == "numpy" and "CUDA 12.4 (nvidia-smi)" in why and "[cuda12]" in why
    else:
        name, why = explain_auto()
        assert name == "cupy" and "kernels compile" in why
