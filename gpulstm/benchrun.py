"""Run the asv benchmark suite (``bench/``) in the current environment, in one command.

    python -m gpulstm.benchrun [--quick | --full] [--bench REGEX] [--backend NAME]
                               [--machine NAME] [--launch-method {forkserver,spawn}]
                               [--dry-run] [-- ASV-RUN-ARGS]

Steps:

1. the machine: its name is the host name on a CPU machine and ``<gpu model>-<host name>`` on a
   GPU machine (``h100-80gb-hbm3-node7``); it is registered in asv's machine file
   (``~/.asv-machine.json``) with asv's own fields plus ``gpu``, ``gpu_count``,
   ``gpu_memory``, ``driver``, ``cuda`` (the driver's CUDA version), ``cuda_runtime`` and
   ``cupy`` (CuPy's), ``torch``, ``torch_cuda``, ``cudnn`` and ``numpy``; ``asv run`` copies
   them into ``results/<machine>/machine.json`` (``gpu`` is ``none`` on a CPU machine);
2. ``asv run -E existing:same --set-commit-hash <HEAD> --machine NAME --show-stderr`` with
   ``GPULSTM_BENCH_PROFILE`` set; asv's progress lines pass through; results land in
   ``results/`` (``benchmarks.json``, ``<machine>/machine.json``, ``<machine>/<commit>-*.json``).

``--backend NAME`` restricts the speed benchmarks to one backend (``GPULSTM_BENCH_BACKENDS``;
the speed ratios still time its PyTorch reference) and runs the long-range memory benchmarks
on it (``GPULSTM_BENCH_BACKEND``). Without it, on a GPU machine the memory benchmarks run on
``cupy`` (unless GPULSTM_BENCH_BACKEND is set), elsewhere on ``numpy``.

A run on a working tree with uncommitted changes (outside ``results/``) still runs, labelled
with HEAD's hash, and says so before and after. Used by ``gpulstm bench`` (``main(argv)``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

PROFILES = ("quick", "full")

# Versions that need an import (CUDA runtime, cuDNN), asked of a child process so that this
# one never initialises CUDA or imports CuPy/PyTorch.
_VERSIONS_SCRIPT = r"""
import json, importlib.metadata as md
out = {}
try:
    import numpy; out["numpy"] = numpy.__version__
except Exception: pass
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = str(torch.version.cuda) if torch.version.cuda else "none"
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
except Exception: pass
cupy_dists = sorted(d.metadata["Name"] for d in md.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("cupy"))
if cupy_dists:
    out["cupy"] = cupy_dists[0] + " " + md.version(cupy_dists[0])
    try:
        import cupy
        v = cupy.cuda.runtime.runtimeGetVersion()
        out["cuda_runtime"] = f"{v // 1000}.{v % 1000 // 10}"
    except Exception as e:
        out["cuda_runtime"] = f"unavailable ({type(e).__name__})"
print(json.dumps(out))
"""


def _slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def gpu_info():
    """{"gpu", "gpu_count", "gpu_memory", "driver", "cuda"} from nvidia-smi, or {} without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    try:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
        head = subprocess.run([smi], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    rows = [[c.strip() for c in line.split(",")] for line in q.stdout.splitlines() if line.strip()]
    if q.returncode != 0 or not rows:
        return {}
    name, driver, memory = rows[0][:3]
    m = re.search(r"CUDA Version:\s*([0-9.]+)", head.stdout)
    return {"gpu": name, "gpu_count": str(len(rows)), "gpu_memory": memory, "driver": driver,
            "cuda": m.group(1) if m else "unknown"}


def library_versions(python=sys.executable):
    """numpy / torch / torch_cuda / cudnn / cupy / cuda_runtime versions (child process)."""
    try:
        r = subprocess.run([python, "-c", _VERSIONS_SCRIPT], capture_output=True, text=True,
                           timeout=300)
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {}


def default_machine_name(gpu=None):
    """The host name; on a GPU machine prefixed by the GPU model (``h100-80gb-hbm3-<host>``)."""
    host = _slug(platform.node().split(".")[0]) or "host"
    if gpu and gpu.get("gpu"):
        model = _slug(re.sub(r"^(nvidia|tesla)\s+", "", gpu["gpu"], flags=re.I))
        return f"{model}-{host}"
    return host


def machine_info(name, gpu=None, versions=None):
    """asv's machine fields (its own defaults) for ``name`` plus the GPU and library keys."""
    from asv.machine import Machine

    info = Machine.get_defaults()
    info["machine"] = name
    info.update(gpu or {"gpu": "none"})
    info.update(versions or {})
    return {k: str(v) for k, v in info.items()}


def register_machine(info):
    """Store ``info`` in asv's machine file (``~/.asv-machine.json``), replacing the entry of
    the same name. (``asv machine --yes --machine NAME`` would store the name alone.)"""
    from asv.machine import MachineCollection

    MachineCollection.save(info["machine"], info)


def find_config(path=None):
    """The asv.conf.json to use: ``path``, else the first found in the current directory or a
    parent, else the one beside this package (an editable install)."""
    if path:
        return os.path.abspath(path)
    d = os.getcwd()
    while True:
        if os.path.isfile(os.path.join(d, "asv.conf.json")):
            return os.path.join(d, "asv.conf.json")
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "asv.conf.json")
    if os.path.isfile(here):
        return here
    raise FileNotFoundError("no asv.conf.json in the current directory or its parents; run "
                            "from the gpulstm repository or pass --config")


def git_state(root):
    """(HEAD's hash, [changed paths outside results/ and html/])."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    changed = [line[3:] for line in status.splitlines()
               if line[3:] and not line[3:].startswith(("results/", "html/", '"results/'))]
    return head, changed


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m gpulstm.benchrun",
        description="Run gpulstm's asv benchmark suite in the current environment; results "
                    "go to results/. Extra arguments after -- are passed to `asv run`.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="profile", action="store_const", const="quick",
                   help="the quick grid (default; bench/speed about 3 minutes on 2 CPU cores)")
    g.add_argument("--full", dest="profile", action="store_const", const="full",
                   help="the full grid (GPU machines)")
    p.add_argument("--bench", "-b", action="append", metavar="REGEX",
                   help="only benchmarks matching REGEX (repeatable; asv searches the name "
                        "with and without its parameters), e.g. 'speed\\.' or "
                        "'SequenceLength.time_forward(?!_)'")
    p.add_argument("--backend", help="speed benchmarks of this backend only (numpy, cupy, "
                                     "torch-cpu, ...) and memory benchmarks on it")
    p.add_argument("--machine", help="machine name (default: host name, GPU model first on a "
                                     "GPU machine)")
    p.add_argument("--launch-method", choices=("forkserver", "spawn"),
                   help="how asv starts benchmark processes (default: asv.conf.json's, forkserver)")
    p.add_argument("--config", help="asv.conf.json (default: found from the current directory)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the machine info and the asv command, run nothing")
    p.set_defaults(profile=None)
    return p


def main(argv=None):
    """Entry point of ``python -m gpulstm.benchrun`` and ``gpulstm bench``; returns asv's
    exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    profile = args.profile or os.environ.get("GPULSTM_BENCH_PROFILE") or "quick"
    if profile not in PROFILES:
        raise SystemExit(f"GPULSTM_BENCH_PROFILE must be one of {PROFILES}; got {profile!r}")
    try:
        import asv  # noqa: F401
    except ImportError:
        print("benchrun: asv is not installed here; install the bench extra: "
              "pip install -e '.[bench]'", file=sys.stderr)
        return 2
    config = find_config(args.config)
    root = os.path.dirname(config)
    head, changed = git_state(root)

    gpu = gpu_info()
    info = machine_info(args.machine or default_machine_name(gpu), gpu, library_versions())
    cmd = [sys.executable, "-m", "asv", "run", "--config", config, "-E", "existing:same",
           "--set-commit-hash", head, "--machine", info["machine"], "--show-stderr"]
    if args.launch_method:
        cmd += ["--launch-method", args.launch_method]
    for regex in args.bench or ():
        cmd += ["--bench", regex]
    cmd += extra
    env = dict(os.environ, GPULSTM_BENCH_PROFILE=profile)
    if args.backend:
        env["GPULSTM_BENCH_BACKENDS"] = env["GPULSTM_BENCH_BACKEND"] = args.backend
    elif gpu and "GPULSTM_BENCH_BACKEND" not in env:
        env["GPULSTM_BENCH_BACKEND"] = "cupy"
    shown = {k: env[k] for k in ("GPULSTM_BENCH_PROFILE", "GPULSTM_BENCH_BACKENDS",
                                 "GPULSTM_BENCH_BACKEND") if k in env}

    dirty = (f"the working tree has uncommitted changes ({len(changed)} paths, e.g. "
             f"{', '.join(changed[:3])}): results are labelled {head[:8]} (HEAD) but measure "
             "the working tree") if changed else None
    print(f"benchrun: profile {profile}, machine {info['machine']}, commit {head[:8]}")
    print("benchrun: machine info " + json.dumps(info, sort_keys=True))
    if dirty:
        print(f"benchrun: WARNING {dirty}")
    print("benchrun: " + " ".join(f"{k}={v}" for k, v in shown.items()) + " " + shlex.join(cmd),
          flush=True)
    if args.dry_run:
        return 0

    register_machine(info)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=root, env=env)
    minutes = (time.perf_counter() - t0) / 60
    results = os.path.join(root, "results", info["machine"])
    print(f"benchrun: asv exited {rc} after {minutes:.1f} min; results in {results}")
    if dirty:
        print(f"benchrun: WARNING {dirty}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
