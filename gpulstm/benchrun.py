"""Run the asv benchmark suite (``bench/``) in the current environment, in one command.

    python -m gpulstm.benchrun [--quick | --full] [--bench REGEX] [--backend NAME]
                               [--machine NAME] [--launch-method {forkserver,spawn}]
                               [--results PATH | --commit-results] [--config PATH]
                               [--verbose] [--dry-run] [-- ASV-RUN-ARGS]

Steps:

1. the machine: its name is the host name on a CPU machine and ``<gpu model>-<host name>`` on a
   GPU machine (``h100-80gb-hbm3-node7``); it is registered in asv's machine file
   (``~/.asv-machine.json``) with asv's own fields plus ``gpu``, ``gpu_count``,
   ``gpu_memory``, ``driver``, ``cuda`` (the driver's CUDA version), ``cuda_runtime`` and
   ``cupy`` (CuPy's), ``torch``, ``torch_cuda``, ``cudnn``, ``numpy``, the CPU facts of the
   FMA peak model (``cpu_vendor``, ``cpu_family``, ``cpu_mhz``, ``cpu_simd``) and the kernels
   the cpu execution's OpenBLAS runs (``openblas_kernels``, e.g. SkylakeX or Haswell, and
   ``openblas_coretype``: the ``OPENBLAS_CORETYPE`` that forced them, or auto); ``asv run`` copies
   them into ``results/<machine>/machine.json`` (``gpu`` is ``none`` on a CPU machine);
2. ``asv run -E existing:same --set-commit-hash <HEAD> --machine NAME --show-stderr`` with
   ``GPULSTM_BENCH_PROFILE`` set, on a copy of the project's ``asv.conf.json`` (the one beside
   this package in the source checkout, or ``--config``; never one found in a parent folder)
   whose ``results_dir`` is the results folder: ``.gpulstm/results`` of the checkout by
   default, or ``--results PATH`` (``benchmarks.json``, ``<machine>/machine.json``,
   ``<machine>/<commit>-*.json``). A user's run never writes into the tracked ``results/``;
3. one progress display over the run (:class:`AsvProgress`: asv's percentage, the benchmark
   being set up or run, elapsed time and an estimate of the time left, redrawn every second on
   a terminal and printed every 10 s otherwise); asv's full output goes to
   ``<results>/../logs/asv-<UTC time>.log`` (``--verbose`` prints it too), and the reasons
   benchmarks were skipped are summarised once at the end.

``--commit-results`` (the maintainer's ``make bench-commit``) writes into the project's
``results/`` instead: it refuses a working tree with uncommitted changes outside ``results/``
and a machine name whose ``results/<name>/machine.json`` describes a different machine
(another CPU, core count, memory size or GPU): pass ``--machine`` with a name of this machine.

``--backend NAME`` restricts the speed benchmarks to one backend (``GPULSTM_BENCH_BACKENDS``;
the speed ratios still time its PyTorch reference) and runs the long-range memory benchmarks
on it (``GPULSTM_BENCH_BACKEND``). Without it, on a GPU machine the memory benchmarks run on
``cupy`` (unless GPULSTM_BENCH_BACKEND is set), elsewhere on ``numpy``.

A run on a working tree with uncommitted changes (outside ``results/``) still runs, labelled
with HEAD's hash, and says so before and after (except ``--commit-results``, which refuses
it). Used by ``gpulstm bench`` and ``gpulstm main`` (``main(argv)``).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from . import cpuinfo

PROFILES = ("quick", "full")
# The source checkout this package lives in (an editable install): its asv.conf.json, bench/
# and the committed reference results/.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = ".gpulstm"  # a user's own results, logs and reports, inside the checkout, ignored
# machine.json fields that tell machines apart (asv's own names, and benchrun's gpu).
IDENTITY_KEYS = ("arch", "cpu", "num_cpu", "ram", "gpu", "gpu_count")


class UserError(Exception):
    """A problem the person running the command can fix; the message says how."""

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
import os
# OpenBLAS's kernels: OPENBLAS_CORETYPE (when set) forces them, whatever the CPU can do
out["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE") or "auto"
try:
    import ctypes, glob, threadpoolctl, scipy_openblas32 as ob
    for f in glob.glob(os.path.join(ob.get_lib_dir(), "lib" + ob.get_library() + ".*")):
        ctypes.CDLL(f)
        break
    for lib in threadpoolctl.threadpool_info():
        if lib.get("internal_api") == "openblas" and "scipy_openblas32" in lib.get("filepath", ""):
            out["openblas_kernels"] = str(lib.get("architecture"))
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
    """asv's machine fields (its own defaults) for ``name`` plus the CPU facts of the FMA peak
    model (:func:`gpulstm.cpuinfo.machine_fields`: vendor, family, clock, SIMD flags), the GPU
    and the library keys."""
    from asv.machine import Machine

    info = Machine.get_defaults()
    info["machine"] = name
    info.update(cpuinfo.machine_fields())
    info.update(gpu or {"gpu": "none"})
    info.update(versions or {})
    return {k: str(v) for k, v in info.items()}


def register_machine(info):
    """Store ``info`` in asv's machine file (``~/.asv-machine.json``), replacing the entry of
    the same name. (``asv machine --yes --machine NAME`` would store the name alone.)"""
    from asv.machine import MachineCollection

    MachineCollection.save(info["machine"], info)


def find_config(path=None):
    """The asv.conf.json to use: ``path`` when given, else the project's own (beside this
    package in the source checkout). Never one found by walking up from the current directory:
    a planted config in a parent folder would decide what runs."""
    if path:
        path = os.path.abspath(path)
        if not os.path.isfile(path):
            raise UserError(f"--config {path}: no such file")
        return path
    here = os.path.join(ROOT, "asv.conf.json")
    if os.path.isfile(here):
        return here
    raise UserError(f"no asv.conf.json beside the gpulstm package ({ROOT}): the benchmarks "
                    "run from a source checkout (pip install -e .), or pass --config PATH")


def write_config(config, results_dir, work_dir, **overrides):
    """A copy of ``config`` with absolute paths (its folder's ``bench/`` and repository) and
    ``results_dir``; asv's environments and HTML go under ``work_dir``. Returns its path."""
    from asv import util as asv_util

    root = os.path.dirname(os.path.abspath(config))
    conf = asv_util.load_json(config, js_comments=True)

    def absolute(key, default):
        value = conf.get(key, default)
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(root, value))

    conf.update({"repo": absolute("repo", "."), "benchmark_dir": absolute("benchmark_dir", "bench"),
                 "results_dir": os.path.abspath(results_dir),
                 "html_dir": os.path.join(work_dir, "html"),
                 "env_dir": absolute("env_dir", ".asv/env")})
    conf.update(overrides)
    path = os.path.join(work_dir, "asv.conf.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(conf, f, indent=1)
    return path


def machine_differences(results_dir, info):
    """The identity fields (:data:`IDENTITY_KEYS`) in which ``<results_dir>/<name>/machine.json``
    differs from ``info`` ("cpu: 'A' there, 'B' here"); empty when there is no such file."""
    path = os.path.join(results_dir, info["machine"], "machine.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as fd:
            known = json.load(fd)
        if not isinstance(known, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); choose another --machine name") from None
    return [f"{k}: {known.get(k)!r} there, {info.get(k)!r} here" for k in IDENTITY_KEYS
            if k in known and k in info and str(known[k]) != str(info[k])]


def check_machine_name(results_dir, info):
    """Refuse (UserError) a machine name whose ``<results_dir>/<name>/machine.json`` exists and
    differs from ``info`` in an identity field (:data:`IDENTITY_KEYS`)."""
    diff = machine_differences(results_dir, info)
    if diff:
        raise UserError(f"the machine name {info['machine']!r} belongs to a different machine "
                        f"({'; '.join(diff)}); pass --machine NAME with a name for this one")


def git_state(root):
    """(HEAD's hash, [changed paths outside results/ and html/])."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    changed = [line[3:] for line in status.splitlines()
               if line[3:] and not line[3:].startswith(("results/", "html/", '"results/'))]
    return head, changed


class AsvProgress:
    """One progress display over an ``asv run``, fed asv's output line by line.

    asv prints ``[ 12.50%] ··· <step>`` lines (the percentage counts benchmarks); this keeps the
    latest percentage and step (``Setting up memory:177``, ``Running speed.X.time_y``) and
    shows them with the elapsed time and an estimate of the time left: a ``rich`` progress bar
    redrawn every second on a terminal, else one plain line every ``every`` seconds (also while
    asv prints nothing, e.g. during a long ``setup_cache``). Skip notices (``NotImplementedError``
    raised in a benchmark's ``setup``, asv's skip) are counted by reason, never printed one by
    one; :meth:`skip_summary` says them once."""

    _LINE = re.compile(r"^\[\s*([0-9.]+)%\]\s*(·*)\s*(.*?)\s*$")
    # asv_runner's skip notice: `asv: skipped: NotImplementedError("reason")`
    _SKIP = re.compile(r"asv: skipped: (\w+)\((.*)\)\s*$")

    def __init__(self, stream=None, every=10.0, console=None):
        self.stream = stream or sys.stdout
        self.every = every
        self.percent = 0.0
        self.total = None  # benchmarks asv will run ("Running 25 total benchmarks ...")
        self.step = "starting asv"
        self.skips = collections.Counter()
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = None
        self._thread = None
        is_tty = console is not None or (hasattr(self.stream, "isatty") and self.stream.isatty())
        if is_tty:
            try:
                from rich.console import Console
                from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                           TimeRemainingColumn)
            except ImportError:
                pass
            else:
                self._bar = Progress(
                    TextColumn("[bold]asv[/bold]"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                    TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                    # asv's text is data: never parsed as rich markup ([/] would raise)
                    TextColumn("{task.fields[done]}", markup=False),
                    TextColumn("{task.description}", markup=False),
                    console=console or Console(file=self.stream), refresh_per_second=1,
                    transient=False)
                self._task = self._bar.add_task(self.step, total=100.0, done="")

    def __enter__(self):
        if self._bar is not None:
            self._bar.start()
        else:
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._bar is not None:
            self._bar.stop()
        elif self._thread is not None:
            self._thread.join()
            self._print_line()

    def feed(self, line):
        """Take one line of asv's output."""
        skip = self._SKIP.search(line)
        if skip:
            with self._lock:
                reason = skip.group(2)
                if len(reason) >= 2 and reason[0] == reason[-1] and reason[0] in "'\"":
                    reason = reason[1:-1]
                self.skips[printable(reason[:200])] += 1
            return
        m = self._LINE.match(line)
        if not m:
            total = re.search(r"Running (\d+) total benchmarks", line)
            if total:
                self.total = int(total.group(1))
            return
        percent, dots, text = float(m.group(1)), m.group(2), m.group(3)
        step = self._step(printable(text), len(dots))
        with self._lock:
            self.percent = max(self.percent, percent)
            if step:
                self.step = step
        if self._bar is not None:
            done = (f"{round(self.percent * self.total / 100)}/{self.total}"
                    if self.total else "")
            self._bar.update(self._task, completed=self.percent, description=self.step,
                             done=done)

    @staticmethod
    def _step(text, depth):
        """The step a progress line announces, or None for result tables and the like."""
        if depth <= 3 and text.startswith(("Setting up", "Running", "Benchmarking")):
            text = re.sub(r"\s+(ok|failed)$", "", text.rstrip("."))
            text = text.replace("(", " ").replace("--)", "").replace(")", "")
            return re.sub(r"\s+", " ", text).strip()[:100]
        if depth == 3 and re.match(r"^[\w.]+\s+(ok|failed|skipped)$", text):
            return "done " + text.split()[0][:100]
        return None

    def status_line(self):
        with self._lock:
            elapsed = time.monotonic() - self.t0
            percent, step = self.percent, self.step
        left = (f", about {_minutes(elapsed * (100 - percent) / percent)} left"
                if 1.0 <= percent < 100 else "")
        done = (f" {round(percent * self.total / 100)}/{self.total} benchmarks,"
                if self.total else "")
        return f"asv [{percent:5.1f}%]{done} {_minutes(elapsed)} elapsed{left}: {step}"

    def _print_line(self):
        print(self.status_line(), file=self.stream, flush=True)

    def _heartbeat(self):
        while not self._stop.wait(self.every):
            self._print_line()

    def skip_summary(self):
        """``["124 points skipped: backend 'cupy' unavailable: ...", ...]``, most first."""
        return [f"{n} point{'s' if n > 1 else ''} skipped: {reason}"
                for reason, n in self.skips.most_common()]


def printable(text):
    """``text`` safe for the terminal (:func:`gpulstm.report.escape.printable`; imported on
    first use: the report package brings pandas, which ``--help`` must not load)."""
    from .report.escape import printable as escape
    return escape(text)


def _minutes(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_asv(cmd, cwd, env, log_path, verbose=False, stream=None):
    """Run asv's command ``cmd`` with one :class:`AsvProgress` display; its whole output goes to
    ``log_path`` (and, with ``verbose``, to ``stream`` too). Returns (exit status, progress)."""
    stream = stream or sys.stdout
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(env, PYTHONUNBUFFERED="1")  # asv's lines as they happen, not per 8 KB
    # asv in a process group of its own: stopping this command (Ctrl-C, SIGTERM) stops asv's
    # benchmark processes too instead of leaving them running
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with open(log_path, "w", encoding="utf-8") as log, AsvProgress(stream) as progress:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace",
                                    bufsize=1, start_new_session=True)
            try:
                for line in proc.stdout:
                    log.write(line)
                    if verbose:
                        stream.write(line)
                    progress.feed(line.rstrip("\n"))
            except BaseException:
                _stop_group(proc)
                raise
            rc = proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return rc, progress


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_group(proc):
    """SIGTERM, then SIGKILL, to the process group of ``proc``."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def default_results_dir():
    """Where a user's runs go: ``<checkout>/.gpulstm/results`` (ignored by git)."""
    return os.path.join(ROOT, USER_DIR, "results")


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m gpulstm.benchrun",
        description="Run gpulstm's asv benchmark suite in the current environment; results "
                    "go to .gpulstm/results (or --results). Extra arguments after -- are "
                    "passed to `asv run`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p):
    """The options of ``benchrun`` (shared with ``gpulstm bench`` and ``gpulstm main``)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="profile", action="store_const", const="quick",
                   help="the quick grid (the default, or GPULSTM_BENCH_PROFILE; about 30 "
                        "minutes on 2 CPU cores, speed and memory)")
    g.add_argument("--full", dest="profile", action="store_const", const="full",
                   help="the full grid (GPU machines)")
    p.add_argument("--bench", "-b", action="append", metavar="REGEX",
                   help="only benchmarks matching REGEX (repeatable; asv searches the name "
                        "with and without its parameters), e.g. 'speed\\.' or "
                        "'SequenceLength.time_forward(?!_)'; default: all")
    p.add_argument("--backend", help="speed benchmarks of this backend only (numpy, cupy, "
                                     "torch-cpu, ...) and memory benchmarks on it; default: "
                                     "every backend, memory on cupy with a GPU, else numpy")
    p.add_argument("--machine", help="machine name; default: the host name, GPU model first "
                                     "on a GPU machine")
    p.add_argument("--launch-method", choices=("forkserver", "spawn"),
                   help="how asv starts benchmark processes; default: asv.conf.json's "
                        "(forkserver)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--results", metavar="PATH",
                       help="results folder of this run; default: .gpulstm/results in the "
                            "checkout")
    where.add_argument("--commit-results", action="store_true",
                       help="maintainers: write into the project's tracked results/ "
                            "(refuses uncommitted changes and a machine name of another machine)")
    p.add_argument("--config", metavar="PATH",
                   help="asv.conf.json to use; default: the project's own")
    p.add_argument("--verbose", action="store_true", help="print asv's whole output too")
    p.add_argument("--dry-run", action="store_true",
                   help="print the machine info and the asv command, run nothing")
    p.set_defaults(profile=None)


def main(argv=None):
    """Entry point of ``python -m gpulstm.benchrun``; returns asv's exit status, 2 for a user
    error (one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    try:
        return run(args, extra)
    except UserError as exc:
        print(f"benchrun: error: {exc}", file=sys.stderr)
        return 2


_MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_machine_syntax(name):
    """A machine name is a folder name under results/: letters, digits, '.', '_', '-' (no
    path parts, no '..'), at most 64 characters; anything else is a UserError."""
    if not isinstance(name, str) or not _MACHINE_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"machine name {name!r} is not usable: use letters, digits, '.', '_' "
                        "and '-' (at most 64, starting with a letter or digit; no '/' or '..')")
    return name


def check_bench_regexes(regexes):
    """Each ``--bench`` value must be a Python regular expression (what asv compiles)."""
    for regex in regexes or ():
        try:
            re.compile(regex)
        except re.error as exc:
            raise UserError(f"--bench {regex!r} is not a regular expression: {exc}") from None


def run(args, extra=()):
    """Run asv as ``args`` (from :func:`add_arguments`) say; raises :class:`UserError`."""
    profile = args.profile or os.environ.get("GPULSTM_BENCH_PROFILE") or "quick"
    if profile not in PROFILES:
        raise UserError(f"GPULSTM_BENCH_PROFILE must be one of {PROFILES}; got {profile!r}")
    if args.machine is not None:
        check_machine_syntax(args.machine)
    check_bench_regexes(args.bench)
    try:
        import asv  # noqa: F401
    except ImportError:
        raise UserError("asv is not installed here; install the bench extra: "
                        "pip install -e '.[bench]'") from None
    config = find_config(args.config)
    root = os.path.dirname(config)
    try:
        head, changed = git_state(root)
    except (OSError, subprocess.CalledProcessError):
        raise UserError(f"{root} is not a git checkout: asv labels results with a commit") from None

    gpu = gpu_info()
    info = machine_info(args.machine or default_machine_name(gpu), gpu, library_versions())
    if args.machine is None and machine_differences(os.path.join(root, "results"), info):
        # the host name of a committed reference machine of other hardware (every VM is
        # "vm"): this run gets a name of its own instead of being compared as that machine
        info["machine"] = check_machine_syntax(
            f"{info['machine']}-{_slug(str(info.get('cpu') or info.get('arch') or 'other'))}"[:64]
            .rstrip("-."))
    if args.commit_results:
        results = os.path.join(root, "results")
        if changed:
            raise UserError(f"--commit-results needs a clean working tree; {len(changed)} "
                            f"paths have uncommitted changes (e.g. {', '.join(changed[:3])}): "
                            "commit or stash them first")
        check_machine_name(results, info)
    else:
        results = os.path.abspath(args.results or default_results_dir())
    log_path = os.path.join(ROOT, USER_DIR, "logs",
                            time.strftime("asv-%Y%m%dT%H%M%SZ.log", time.gmtime()))

    work = tempfile.mkdtemp(prefix="gpulstm-asv-")
    try:
        run_config = write_config(config, results, work)
        cmd = [sys.executable, "-m", "asv", "run", "--config", run_config, "-E", "existing:same",
               "--set-commit-hash", head, "--machine", info["machine"], "--show-stderr"]
        if args.launch_method:
            cmd += ["--launch-method", args.launch_method]
        for regex in args.bench or ():
            cmd += ["--bench", regex]
        cmd += list(extra)
        # the benchmarks import the gpulstm of the checkout they belong to (the one the results
        # are labelled with), not whichever one the environment has installed
        paths = [root] + (os.environ.get("ASV_PYTHONPATH") or "").split(os.pathsep)
        env = dict(os.environ, GPULSTM_BENCH_PROFILE=profile,
                   ASV_PYTHONPATH=os.pathsep.join(dict.fromkeys(p for p in paths if p)))
        if args.backend:
            env["GPULSTM_BENCH_BACKENDS"] = env["GPULSTM_BENCH_BACKEND"] = args.backend
        elif gpu and "GPULSTM_BENCH_BACKEND" not in env:
            env["GPULSTM_BENCH_BACKEND"] = "cupy"
        shown = {k: env[k] for k in ("GPULSTM_BENCH_PROFILE", "GPULSTM_BENCH_BACKENDS",
                                     "GPULSTM_BENCH_BACKEND") if k in env}

        dirty = (f"the working tree has uncommitted changes ({len(changed)} paths, e.g. "
                 f"{', '.join(changed[:3])}): results are labelled {head[:8]} (HEAD) but "
                 "measure the working tree") if changed else None
        print(f"benchrun: profile {profile}, machine {info['machine']}, commit {head[:8]}, "
              f"results in {results}")
        print("benchrun: machine info " + json.dumps(info, sort_keys=True))
        if dirty:
            print(f"benchrun: WARNING {dirty}")
        print("benchrun: " + " ".join(f"{k}={v}" for k, v in shown.items()) + " "
              + shlex.join(cmd), flush=True)
        if args.dry_run:
            return 0

        register_machine(info)
        t0 = time.perf_counter()
        rc, progress = run_asv(cmd, root, env, log_path, verbose=args.verbose)
        minutes = (time.perf_counter() - t0) / 60
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for line in progress.skip_summary():
        print(f"benchrun: {line}")
    print(f"benchrun: asv exited {rc} after {minutes:.1f} min; results in "
          f"{os.path.join(results, info['machine'])}; asv's log in {log_path}")
    if rc:
        print(f"benchrun: asv's last lines (whole log in {log_path}):", file=sys.stderr)
        with open(log_path, encoding="utf-8", errors="replace") as fd:
            sys.stderr.writelines(collections.deque(fd, maxlen=15))
    if dirty:
        print(f"benchrun: WARNING {dirty}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
