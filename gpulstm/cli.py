"""The ``gpulstm`` command line (``gpulstm COMMAND --help`` for every option and its default).

    gpulstm info                       backends usable here, GPU, CUDA/CuPy/NVRTC versions
    gpulstm main [--quick|--full]      the main job (``make run``): the benchmark suite on this
                                       machine, then the report comparing this run with the
                                       committed reference machines
    gpulstm bench [--quick|--full]     the asv suite only; results in .gpulstm/results
    gpulstm report [RESULTS]           tables (terminal), report.md, report.html and plots
    gpulstm html                       asv's own web site of the results (asv publish)
    gpulstm memory --task adding --cell lstm_fb1,rnn_tanh --T 50,100
                                       a long-range memory sweep (updates to criterion)

A user's runs write into ``.gpulstm/`` of the checkout (or ``--results``/``--out``), never into
the tracked ``results/``; maintainers add reference results with ``make bench-commit``
(``gpulstm bench --commit-results``). Errors a user can fix are one line on stderr with exit
status 2; ``--debug`` shows the traceback. Heavy imports (NumPy, pandas, asv, PyTorch) happen
inside the commands, so ``gpulstm --help`` answers at once.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

from . import benchrun  # stdlib only: cheap to import
from ._files import atomic_write
from .benchrun import ROOT, UserError

# The source checkout (editable install): committed reference results and the user's folder.
REFERENCE_RESULTS = os.path.join(ROOT, "results")
USER_DIR = os.path.join(ROOT, benchrun.USER_DIR)
USER_RESULTS = benchrun.default_results_dir()
USER_REPORT = os.path.join(USER_DIR, "report")


def _rel(path):
    """``path`` relative to the current directory when that is shorter (for messages)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if len(rel) < len(path) else path


# -- info --------------------------------------------------------------------------------------

def _dist_version(name):
    """A package's installed version without importing it (importing PyTorch takes seconds)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _nvrtc_version():
    try:
        from cuda.bindings import nvrtc
        err, major, minor = nvrtc.nvrtcVersion()
        return f"{major}.{minor} (cuda-bindings)"
    except Exception as e:
        return f"not available ({type(e).__name__}: {e})"


def _gpu_lines():
    try:
        import cupy
    except Exception as e:
        return [f"CuPy: not importable ({type(e).__name__}: {e})"]
    lines = [f"CuPy: {cupy.__version__}"]
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        rt = cupy.cuda.runtime.runtimeGetVersion()
        drv = cupy.cuda.runtime.driverGetVersion()
        lines.append(f"CUDA runtime {rt // 1000}.{rt % 1000 // 10}, driver API {drv // 1000}.{drv % 1000 // 10}")
        for i in range(n):
            p = cupy.cuda.runtime.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            lines.append(f"GPU {i}: {name}, sm_{p['major']}{p['minor']}, "
                         f"{p['totalGlobalMem'] / 2**30:.1f} GiB, {p['multiProcessorCount']} SMs")
    except Exception as e:
        lines.append(f"no usable CUDA device ({type(e).__name__}: {e})")
    return lines


def cmd_info(args):
    print(f"gpulstm {_dist_version('gpulstm')} on Python {platform.python_version()} "
          f"({platform.machine()})", flush=True)
    print(", ".join(f"{name} {_dist_version(name)}" for name in ("numpy", "torch", "asv",
                                                                  "pandas")), flush=True)
    print(f"NVRTC: {_nvrtc_version()}", flush=True)
    for line in _gpu_lines():
        print(line)
    import gpulstm as gl
    print("backends:")
    for name, why in gl.available_backends().items():
        print(f"  {name:9s} {'usable' if why is None else 'unavailable: ' + why}")
    from .backends import explain_auto
    name, why = explain_auto()
    print(f"  auto   -> {name} (the main job's backend): {why}")
    return 0


# -- bench, report, html, main -----------------------------------------------------------------

def cmd_bench(args):
    return benchrun.run(args)


def _load(path, what):
    from .report import load_results
    try:
        return load_results(path, errors=_ERRORS.mode)
    except FileNotFoundError:
        raise UserError(f"{what} folder {_rel(path)} does not exist: run `gpulstm main` (or "
                        "`gpulstm bench`) first, or pass the folder") from None
    except (ValueError, OSError) as exc:  # a file given, an unreadable folder, a bad file
        raise UserError(f"{what} folder {_rel(path)}: {exc}") from None


class _ERRORS:  # how report/main treat unreadable result files (--strict sets "raise")
    mode = "warn"


def _machines_of(df):
    return sorted(map(str, df["machine"].unique())) if len(df) else []


def report_frame(results, reference):
    """(frame, name of this run's machine or None): the results of this run (``results``,
    machines renamed ``<name> (this run)`` when a reference machine has the same name) and the
    committed reference machines (``reference``), in one frame for the report."""
    import warnings

    import pandas as pd

    from .report.results import ResultsFileWarning

    frames, this, skipped, notes = [], None, [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsFileWarning)
        ref = None
        if reference and os.path.isdir(reference) and (
                not results or os.path.abspath(reference) != os.path.abspath(results)):
            ref = _load(reference, "reference results")
            frames.append(ref)
        if results:
            run = _load(results, "results")
            machines = _machines_of(run)
            committed = os.path.abspath(results) == os.path.abspath(REFERENCE_RESULTS)
            if len(machines) == 1 and not committed:  # the committed folder is no "run"
                this = machines[0]
                if ref is not None and this in set(ref["machine"]):
                    notes += _hardware_differences(run, ref[ref["machine"] == this], this)
                    this = f"{this} (this run)"
                    run = run.assign(machine=this)
            frames.append(run)
    from .report.escape import printable
    for w in caught:  # the messages quote results files: no raw escape sequences
        print(f"gpulstm: warning: {printable(w.message)}", file=sys.stderr)
    if not frames:
        raise UserError("no results to report: run `gpulstm main` first, or pass a results "
                        "folder")
    attrs = {}
    for f in frames:
        skipped += f.attrs.get("skipped_files", [])
        for key in ("param_columns", "machine_columns"):
            attrs[key] = list(dict.fromkeys(attrs.get(key, []) + f.attrs.get(key, [])))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df.attrs.update(attrs, skipped_files=skipped, notes=notes)
    for note in notes:
        print(f"gpulstm: warning: {printable(note)}", file=sys.stderr)
    if skipped:
        print(f"gpulstm: {len(skipped)} unreadable result file(s) skipped (warnings above)",
              file=sys.stderr)
    return df, this


def _hardware_differences(run, ref, name):
    """A note when this run and the reference machine of the same name differ in hardware
    (benchrun.IDENTITY_KEYS of their machine.json), else nothing."""
    diff = [f"{k} {ref[k].iloc[0]!r} there, {run[k].iloc[0]!r} here"
            for k in benchrun.IDENTITY_KEYS if k in run and k in ref and len(run) and len(ref)
            and str(run[k].iloc[0]) != str(ref[k].iloc[0])]
    if not diff:
        return []
    return [f"this run and the reference machine {name!r} share a name but not their hardware "
            f"({'; '.join(diff)}): their times compare different machines"]


def cmd_report(args):
    results = args.results
    if results is None and os.path.isdir(USER_RESULTS):
        results = USER_RESULTS
    reference = None if args.no_reference else args.reference
    _ERRORS.mode = "raise" if args.strict else "warn"
    df, this = report_frame(results, reference)
    import matplotlib
    matplotlib.use("Agg")
    from .report.gpu import load_algo_runs
    from .report.markdown import build_report, print_report, write_report

    try:
        gpu_runs = load_algo_runs(results, reference)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _check_output_folder(args.out)
    report = build_report(df, args.out, this_machine=this, gpu_runs=gpu_runs)
    print_report(report)
    _, md_path, html_path = write_report(report)
    print()
    print(f"report: {_rel(md_path)} and {_rel(html_path)} (open it in a browser)")
    print("plots:  " + (", ".join(_rel(os.path.join(args.out, name))
                                  for _, name in report.plots) or "none"))
    return 0


def _check_output_folder(path):
    """Create the output folder ``path``; a file in the way or no permission is a UserError."""
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UserError(f"cannot write into the output folder {_rel(path)}: "
                        f"{exc.strerror or exc} (pass --out with a writable folder)") from None


def cmd_html(args):
    """asv's own site of a results folder: ``asv publish`` into --out; ``asv preview`` serves it."""
    import subprocess
    import tempfile

    results = os.path.abspath(args.results)
    if not os.path.isdir(results):
        raise UserError(f"results folder {_rel(results)} does not exist: run `gpulstm main` "
                        "first, or pass --results")
    config = benchrun.find_config(args.config)
    out = os.path.abspath(args.out)
    _check_output_folder(out)
    with tempfile.TemporaryDirectory(prefix="gpulstm-asv-") as work:
        finite = _finite_copy(results, os.path.join(work, "results"))
        cfg = benchrun.write_config(config, finite, work, html_dir=out)
        rc = subprocess.call([sys.executable, "-m", "asv", "publish", "--config", cfg],
                             cwd=os.path.dirname(config))
    if rc:
        return rc
    print(f"asv's site written to {_rel(out)}; browse it with: "
          f"{_rel(sys.executable)} -m asv preview --html-dir {_rel(out)}  "
          "(from the checkout; it serves http://127.0.0.1:8080 — asv's pages need a web server, "
          "not file://)")
    return 0


def _finite_copy(results, dst):
    """A copy of an asv results folder whose infinite results are missing (null) instead:
    asv publish's step detection fails on a series with an infinite point (e.g. log10 of a
    gradient that underflowed to 0). The report itself reads the originals."""
    import json
    import math
    import shutil

    def not_regular(folder, names):  # links could lead out, FIFOs/devices never end
        import stat
        skip = [n for n in names if not (stat.S_ISREG(os.lstat(os.path.join(folder, n)).st_mode)
                                         or stat.S_ISDIR(os.lstat(os.path.join(folder, n)).st_mode))]
        for n in skip:
            print(f"gpulstm: warning: {_rel(os.path.join(folder, n))} is a symbolic link or "
                  "special file: not copied (results are read only from regular files)",
                  file=sys.stderr)
        return skip

    shutil.copytree(results, dst, ignore=not_regular)
    for machine in os.listdir(dst):
        mdir = os.path.join(dst, machine)
        if not os.path.isdir(mdir):
            continue
        for name in os.listdir(mdir):
            path = os.path.join(mdir, name)
            if not name.endswith(".json") or name == "machine.json":
                continue
            try:
                with open(path, encoding="utf-8") as fd:
                    data = json.load(fd)
                at = data["result_columns"].index("result")
                for row in data["results"].values():
                    if isinstance(row, list) and len(row) > at and isinstance(row[at], list):
                        row[at] = [None if isinstance(v, float) and math.isinf(v) else v
                                   for v in row[at]]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # asv reports what it cannot read itself
            with atomic_write(path) as fd:
                json.dump(data, fd)
    return dst


def run_memory_sweep(args):
    """The main job's long-range memory sweep (gpulstm.sweep), run before asv with its own
    progress bar into the per-point cache GPULSTM_SWEEP_CACHE, which asv's memory suite then
    reads (same profile, backend and settings, so the same points). Skipped when the asv run
    is restricted to benchmarks that are not memory ones."""
    from .sweep import PROFILES, default_memory_backend, memory_profile_name, run_sweep

    if args.dry_run or (args.bench and not any("memory" in b for b in args.bench)):
        return None
    backend = os.environ.get("GPULSTM_BENCH_BACKEND") or args.backend or \
        default_memory_backend(bool(benchrun.gpu_info()))
    name = memory_profile_name(args.profile, backend)
    print(f"gpulstm: long-range memory sweep, profile {name}, backend {backend} "
          f"(points cached in {os.environ['GPULSTM_SWEEP_CACHE']})", flush=True)
    workers = os.environ.get("GPULSTM_BENCH_WORKERS")
    return run_sweep(PROFILES[name], backend=backend, cache=os.environ["GPULSTM_SWEEP_CACHE"],
                     workers=None if workers is None else int(workers), progress=True)


def cmd_main(args):
    # one cache folder per commit: a later commit never reuses points trained by older code
    # (uncommitted changes: a folder of its own, never reused)
    try:
        head, changed = benchrun.git_state(ROOT)
        tag = head[:12] + (time.strftime("-dirty-%Y%m%dT%H%M%S") if changed else "")
    except (OSError, subprocess.CalledProcessError):
        tag = time.strftime("nogit-%Y%m%dT%H%M%S")
    os.environ.setdefault("GPULSTM_SWEEP_CACHE", os.path.join(USER_DIR, "sweep-cache", tag))
    run_memory_sweep(args)
    rc = cmd_bench(args)
    if args.dry_run:
        return rc
    if rc:
        print(f"gpulstm: the benchmarks exited with status {rc}; reporting what was measured",
              file=sys.stderr)
    args.results = benchrun_results(args)
    rc_report = cmd_report(args)
    return rc or rc_report


def benchrun_results(args):
    return (os.path.join(ROOT, "results") if args.commit_results
            else os.path.abspath(args.results or benchrun.default_results_dir()))


# -- memory ------------------------------------------------------------------------------------

def cmd_memory(args):
    """A long-range memory sweep (gpulstm.sweep): updates to criterion per task, cell and T.
    The sweep validates every argument before anything trains; its ValueError (or an
    unavailable backend) is a user error here."""
    from .backends import BackendUnavailable
    from .sweep import run_from_args
    try:
        return run_from_args(args)
    except (ValueError, BackendUnavailable) as exc:
        raise UserError(str(exc)) from exc


# -- the parser --------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) that point at --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _FMT(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, except where there is none (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    ap = _Parser(prog="gpulstm", formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="gpulstm: LSTM/GRU/RNN on the GPU and CPU, and its benchmarks.",
                 epilog="The main job: `gpulstm main` (what `make run` runs). "
                        "`gpulstm COMMAND --help` lists each command's options and defaults.")
    ap.add_argument("--debug", action="store_true",
                    help="show the Python traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            parser_class=_Parser)

    p = sub.add_parser("info", help="backends usable here, GPU and versions",
                       formatter_class=_FMT, description="Backends usable here, GPU and versions.")
    p.set_defaults(func=cmd_info)

    bench_args = benchrun.add_arguments

    p = sub.add_parser("main", help="the main job: benchmarks on this machine, then the report",
                       formatter_class=_FMT,
                       description="The main job (make run): the asv suite on this machine "
                                   "(results in .gpulstm/results), then the report comparing "
                                   "this run with the committed reference machines.")
    bench_args(p)
    _report_out(p)
    p.set_defaults(func=cmd_main, reference=REFERENCE_RESULTS, no_reference=False,
                   strict=False)

    p = sub.add_parser("bench", help="the asv benchmark suite only", formatter_class=_FMT,
                       description="Run the asv suite in the current environment.")
    bench_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("report", help="tables, report.md, report.html and plots from results",
                       formatter_class=_FMT,
                       description="The report of a results folder beside the committed "
                                   "reference machines: terminal tables, report.md, a "
                                   "self-contained report.html and PNG plots.")
    p.add_argument("results", nargs="?", default=None,
                   help="results folder of this run (default: .gpulstm/results when it exists)")
    p.add_argument("--reference", default=REFERENCE_RESULTS,
                   help="committed reference results to compare with (default: results/ of "
                        "the checkout)")
    p.add_argument("--no-reference", action="store_true",
                   help="report the results folder alone")
    p.add_argument("--strict", action="store_true",
                   help="stop at an unreadable result file instead of skipping it")
    _report_out(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("html", help="asv's own web site of the results (asv publish)",
                       formatter_class=_FMT,
                       description="Build asv's web site of a results folder (asv publish); "
                                   "browse it with asv preview.")
    p.add_argument("--results", default=USER_RESULTS,
                   help="results folder (default: .gpulstm/results of the checkout)")
    p.add_argument("--out", default=os.path.join(USER_DIR, "html"),
                   help="site folder (default: .gpulstm/html of the checkout)")
    p.add_argument("--config", default=None, help="asv.conf.json (default: the project's own)")
    p.set_defaults(func=cmd_html)

    p = sub.add_parser("memory", help="a long-range memory sweep (updates to criterion)",
                       formatter_class=_FMT,
                       description="A long-range memory sweep: Adam updates until each cell "
                                   "meets the task's criterion, per task, cell, T and seed.")
    from .sweep import add_arguments
    add_arguments(p)
    p.set_defaults(func=cmd_memory)
    return ap


def _report_out(p):
    p.add_argument("--out", default=USER_REPORT,
                   help="folder of report.md, report.html and the plots (default: "
                        ".gpulstm/report of the checkout)")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    args = build_parser().parse_args(argv)
    args.debug = debug
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"gpulstm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpulstm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: still one line unless --debug
        if args.debug:
            raise
        print(f"gpulstm {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
