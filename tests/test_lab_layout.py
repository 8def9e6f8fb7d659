"""The lab (gpulstm.lab) sits apart from the library: the core imports nothing from it, and the
old flat names stay the same modules."""
import importlib
import subprocess
import sys

import pytest

LAB = ["tasks", "train", "sweep", "memory", "memory_doc"]


@pytest.mark.parametrize("name", LAB)
def test_flat_name_is_the_lab_module(name):
    lab = importlib.import_module(f"gpulstm.lab.{name}")
    assert importlib.import_module(f"gpulstm.{name}") is lab


def test_library_core_imports_nothing_from_the_lab():
    code = ("import sys, gpulstm, gpulstm.modules, gpulstm.engine, gpulstm.cells, gpulstm.torch;"
            "lab = sorted(m for m in sys.modules if m.startswith('gpulstm.lab')"
            " or m in {'gpulstm.tasks','gpulstm.train','gpulstm.sweep','gpulstm.memory'});"
            "print(','.join(lab))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_memory_doc_entry_point_runs_from_the_flat_name():
    out = subprocess.run([sys.executable, "-m", "gpulstm.memory_doc", "--help"],
                         capture_output=True, text=True, check=True)
    assert "MEMORY.md" in out.stdout or "usage" in out.stdout
