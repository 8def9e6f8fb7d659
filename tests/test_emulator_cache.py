"""The emulated execution's compile cache holds code this process loads and runs: it must be
private, verified before loading, safe under concurrent compiles, and keyed on everything the
library is built from (including headers reached through -I or CPATH)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gpulstm.emulator import EmulatedModule, EmulatorError
from gpulstm.emulator import _build

ROOT = Path(__file__).resolve().parents[1]
CODE = 'extern "C" __global__ void fill(float* y, float v) { y[threadIdx.x] = v; }\n'

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="needs a host C++ compiler")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache root (GPULSTM_CACHE_DIR) and a clean per-process memo."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GPULSTM_CACHE_DIR", str(root))
    _build.clear_memo()
    yield root / "emulated"
    _build.clear_memo()


def fill_value(module, n=4):
    y = np.full(n, np.nan, np.float32)
    module.get_function("fill")((1,), (n,), (y, np.float32(2.5)))
    return y


def mode(p):
    return os.stat(p).st_mode & 0o777


def run_py(code, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_cache_is_private_even_under_umask_000(cache):
    old = os.umask(0)
    try:
        m = EmulatedModule(CODE)
    finally:
        os.umask(old)
    lib = m._lib.path
    assert mode(cache) == 0o700 and mode(cache.parent) == 0o700
    for p in cache.iterdir():
        assert mode(p) & 0o022 == 0, (p, oct(mode(p)))
    assert (lib.parent / (lib.name + ".sha256")).exists()
    np.testing.assert_array_equal(fill_value(m), 2.5)


@pytest.mark.parametrize("bits", [0o002, 0o020])
def test_writable_cache_directory_is_refused(cache, bits):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o700 | bits)
    with pytest.raises(EmulatorError, match=rf"compile cache directory {cache} is writable .*"
                                            rf"chmod go-w {cache}.*GPULSTM_CACHE_DIR"):
        EmulatedModule(CODE)


def test_writable_cached_library_is_refused(cache):
    lib = EmulatedModule(CODE)._lib.path
    _build.clear_memo()
    os.chmod(lib, 0o722)
    with pytest.raises(EmulatorError, match=rf"library {lib} is writable by group and others"):
        EmulatedModule(CODE)


def test_foreign_owned_cache_is_refused(cache, monkeypatch):
    cache.mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(_build.os, "geteuid", lambda: os.stat(cache).st_uid + 1)
    with pytest.raises(EmulatorError, match=rf"{cache} is owned by uid \d+, not by you"):
        EmulatedModule(CODE)


def _planted_library(tmp_path, marker):
    """A shared library whose constructor creates ``marker``: proof that it was loaded."""
    src = tmp_path / "plant.c"
    src.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void plant(void) '
                   f'{{ FILE* f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    out = tmp_path / "plant.so"
    cc = shutil.which("gcc") or shutil.which("cc") or _build.compiler()
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


LOAD_AND_RUN = f"""
    import numpy as np
    from gpulstm.emulator import EmulatedModule, _build
    m = EmulatedModule({CODE!r})
    y = np.full(4, np.nan, np.float32)
    m.get_function("fill")((1,), (4,), (y, np.float32(2.5)))
    assert (y == 2.5).all(), y
    print("compiles", _build.compile_count)
    """


def plant(src, dest):
    """Put ``src`` at ``dest`` as a new file (never rewriting a library some process maps)."""
    tmp = dest.with_name(dest.name + ".planting")
    shutil.copy(src, tmp)
    os.replace(tmp, dest)


def test_planted_library_never_runs(cache, tmp_path):
    """A library planted under the predictable name is rebuilt (private cache, digest does
    not match) or refused (cache writable by others, even with a matching digest); its
    constructor never runs. Each load runs in a fresh process."""
    import hashlib
    lib = EmulatedModule(CODE)._lib.path
    marker = tmp_path / "planted-code-ran"
    planted = _planted_library(tmp_path, marker)
    env = {"GPULSTM_CACHE_DIR": str(cache.parent)}

    # 1. planted in the private cache without a valid digest: rebuilt, not loaded
    plant(planted, lib)
    res = run_py(LOAD_AND_RUN, env)
    assert res.returncode == 0, res.stderr
    assert "compiles 1" in res.stdout
    assert not marker.exists()

    # 2. planted with a matching digest in a directory others can write: refused
    plant(planted, lib)
    (lib.parent / (lib.name + ".sha256")).write_text(hashlib.sha256(planted.read_bytes()).hexdigest())
    os.chmod(cache, 0o777)
    res = run_py(LOAD_AND_RUN, env)
    assert res.returncode != 0 and "EmulatorError" in res.stderr and "writable" in res.stderr
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_corrupted_cached_library_is_rebuilt_not_loaded(cache, damage):
    """A damaged library used to crash the process inside dlopen (SIGBUS/SIGILL) or give a
    misleading compile error forever; it is detected by its digest and rebuilt."""
    lib = EmulatedModule(CODE)._lib.path
    data = lib.read_bytes()
    damaged = lib.with_name("damaged")
    damaged.write_bytes({"truncate": data[:len(data) // 2], "empty": b"",
                         "garbage": bytes(len(data))}[damage])
    plant(damaged, lib)
    res = run_py(LOAD_AND_RUN, {"GPULSTM_CACHE_DIR": str(cache.parent)})
    assert res.returncode == 0, res.stderr
    assert "compiles 1" in res.stdout
    assert lib.read_bytes() != b"" and len(lib.read_bytes()) >= len(data) // 2


def test_concurrent_compiles_of_one_library_compile_once(cache, tmp_path):
    go = tmp_path / "go"
    script = f"""
        import os, time
        from gpulstm.emulator import EmulatedModule, _build
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        EmulatedModule({CODE!r})
        print("compiles", _build.compile_count)
        """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPULSTM_CACHE_DIR": str(cache.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    time.sleep(1.0)  # all three are waiting for the start signal
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    counts = [int(o.split()[-1]) for o, _ in outs]
    assert sorted(counts) == [0, 0, 1], outs
    assert len(list(cache.glob("*.so"))) == 1


def test_stale_build_directories_are_removed(cache):
    lib = EmulatedModule(CODE)._lib.path
    key = lib.stem
    own = cache / f".build-{key}-killed"      # a compile of this key that was killed
    old = cache / ".build-ancient"            # any build dir older than a day
    fresh = cache / ".build-otherkey-running"  # another key's compile, possibly running now
    for d in (own, old, fresh):
        d.mkdir()
        (d / "partial.cpp").write_text("//")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (day_ago, day_ago))
    lib.unlink()  # force a compile of this key
    _build.clear_memo()
    EmulatedModule(CODE)
    assert not own.exists() and not old.exists() and fresh.exists()


@pytest.mark.parametrize("how", ["-I", "CPATH"])
def test_cache_key_covers_included_headers(cache, tmp_path, monkeypatch, how):
    inc = tmp_path / "inc"
    inc.mkdir()
    header = inc / "scale.h"
    code = '#include "scale.h"\nextern "C" __global__ void fill(float* y, float v) ' \
           '{ y[threadIdx.x] = SCALE * v; }\n'
    options = ()
    if how == "-I":
        options = ("-I" + str(inc),)
    else:
        monkeypatch.setenv("CPATH", str(inc))
    header.write_text("#define SCALE 2\n")
    np.testing.assert_array_equal(fill_value(EmulatedModule(code, options=options)), 5.0)
    _build.clear_memo()
    header.write_text("#define SCALE 3\n")  # same source, edited header: a new library
    np.testing.assert_array_equal(fill_value(EmulatedModule(code, options=options)), 7.5)


def test_damaged_kernel_library_does_not_take_available_backends_down(cache):
    """The issue's crash: a truncated kernels library killed available_backends() (and
    `gpulstm info`) with SIGBUS inside dlopen."""
    script = """
        import gpulstm as gl
        from gpulstm.emulator import _build
        print(gl.available_backends()["emulated"], _build.compile_count)
        """
    env = {"GPULSTM_CACHE_DIR": str(cache.parent)}
    first = run_py(script, env)
    assert first.returncode == 0 and first.stdout.split() == ["None", "1"], first
    (lib,) = cache.glob("*.so")
    damaged = lib.with_name("damaged")
    damaged.write_bytes(lib.read_bytes()[:4096])
    plant(damaged, lib)
    again = run_py(script, env)
    assert again.returncode == 0 and again.stdout.split() == ["None", "1"], again


# --- the cpu execution's cache: the same rules (gpulstm/buildcache.py) ---------------------

CPU_SRC = 'extern "C" __attribute__((visibility("default"))) int answer(void) { return 42; }\n'
CPU_LOAD = """
    import ctypes, sys
    from pathlib import Path
    from gpulstm.backends import cpu
    calls = []
    real = cpu.subprocess.run
    cpu.subprocess.run = lambda cmd, **k: (calls.append(cmd) if "-o" in cmd else None,
                                           real(cmd, **k))[1]
    lib = cpu._build(Path(sys.argv[1]))
    print("answer", ctypes.CDLL(str(lib)).answer(), "compiles", len(calls))
    """


def run_cpu_load(src, root):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPULSTM_CACHE_DIR": str(root)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(CPU_LOAD), str(src)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cpu_cache_planted_library_never_runs(tmp_path):
    """The issue's report: the cpu execution loaded a library planted in a world-writable
    GPULSTM_CACHE_DIR. Planted in a private cache without a matching digest it is rebuilt;
    with a matching digest in a directory others can write it is refused with a clear
    message; its constructor never runs."""
    import hashlib
    root = tmp_path / "cache"
    src = tmp_path / "answer.cpp"
    src.write_text(CPU_SRC)
    first = run_cpu_load(src, root)
    assert first.returncode == 0 and first.stdout.split() == ["answer", "42", "compiles", "1"], first
    cache = root / "cpu"
    assert mode(cache) == 0o700
    (lib,) = cache.glob("*.so")
    assert (lib.parent / (lib.name + ".sha256")).exists()
    marker = tmp_path / "planted-code-ran"
    planted = _planted_library(tmp_path, marker)

    plant(planted, lib)  # 1. no valid digest: rebuilt, not loaded
    res = run_cpu_load(src, root)
    assert res.returncode == 0 and res.stdout.split() == ["answer", "42", "compiles", "1"], res
    assert not marker.exists()

    plant(planted, lib)  # 2. matching digest, cache writable by others: refused
    (lib.parent / (lib.name + ".sha256")).write_text(hashlib.sha256(planted.read_bytes()).hexdigest())
    os.chmod(cache, 0o777)
    res = run_cpu_load(src, root)
    assert res.returncode != 0 and not marker.exists()
    assert "BackendUnavailable: the cpu execution's compile cache directory" in res.stderr
    assert "is writable by group and others" in res.stderr and "GPULSTM_CACHE_DIR" in res.stderr


def test_cpu_execution_refuses_a_world_writable_cache(tmp_path, monkeypatch):
    """Through the public path: creating the cpu execution names the refused directory
    (before compiling anything)."""
    import gpulstm.backends.cpu as cpu
    from gpulstm.backends import BackendUnavailable
    root = tmp_path / "cache"
    (root / "cpu").mkdir(parents=True)
    os.chmod(root / "cpu", 0o777)
    monkeypatch.setenv("GPULSTM_CACHE_DIR", str(root))
    monkeypatch.setattr(cpu, "_lib", None)
    monkeypatch.setattr(cpu, "_failure", None)
    with pytest.raises(BackendUnavailable, match=r"cpu execution's compile cache directory "
                                                 r".* is writable by group and others"):
        cpu.create()
