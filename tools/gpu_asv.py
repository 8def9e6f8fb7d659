"""tools/gpu_asv.py RESULTS_DIR [--budget-s S] [...]  (the asv step of tools/gpu_check.sh)

Runs the GPU part of the asv suite (bench/) in the current environment, in chunks that each fit
what is left of a time budget, and writes asv's normal result layout into RESULTS_DIR:

    RESULTS_DIR/benchmarks.json
    RESULTS_DIR/<machine>/machine.json
    RESULTS_DIR/<machine>/<commit[:8]>-existing-<python>.json

Same machine registration as ``python -m gpulstm.benchrun`` (its helpers: the GPU model, driver,
CUDA, CuPy, PyTorch and cuDNN versions go into machine.json), but made for a copied working
tree on a machine without network access:

- the commit need not be known to git there (a copy of the tree usually has no ``.git``): the
  hash comes from ``--commit``, else ``$GPULSTM_COMMIT``, else ``git rev-parse HEAD``, else the
  file ``$GPULSTM_COMMIT_FILE`` (default ``<repo>/.gpulstm-commit``), else forty zeros (with a
  warning); the date from ``$GPULSTM_COMMIT_DATE`` (Unix seconds), else git, else now. asv is
  run in a child process of this script with a stand-in repository class that answers every
  name with that hash, so asv never calls git;
- a generated asv.conf.json (a copy of the project's, with absolute ``benchmark_dir`` and
  ``results_dir`` = RESULTS_DIR) in a temporary folder; the machine file is a temporary one
  too (``~/.asv-machine.json`` is left alone);
- the repository root goes to the benchmark processes through ``ASV_PYTHONPATH`` (asv drops
  ``PYTHONPATH``), so gpulstm needs no installation;
- chunks, most important first, each its own ``asv run`` (asv saves results at the end of a run
  and merges runs of the same commit and machine into one file): a chunk starts only when at
  least ``--min-chunk-s`` seconds are left and is stopped (its process group killed) when the
  budget runs out; what earlier chunks saved stays.

Default grid (GPULSTM_BENCH_PROFILE=quick): speed benchmarks of the backends
``cupy,torch-cudnn,torch-cudnn-tf32`` (``--backends``; GPULSTM_BENCH_BACKENDS), then the
gradient-flow memory track on ``cupy`` (GPULSTM_BENCH_BACKEND). On a machine without a GPU every
benchmark skips (asv records them as not run) and the result files are still written.

Exit status: 0 when every started chunk ended with asv's status 0 or 2 (2: some benchmark
failed, e.g. a timeout, which is in the results), 1 otherwise; 3 when asv is not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZERO_HASH = "0" * 40
DVCS = "gpulstm-fixed"

# (label, asv --bench regexes, extra environment); in order of importance.
CHUNKS = [
    ("speed-tracks", [r"speed\.(Throughput|Ratio)"], {}),  # us/step, GFLOP/s, ratio vs cuDNN
    ("speed-sequence-length", [r"speed\.SequenceLength\.time_"], {}),
    ("speed-batch-hidden", [r"speed\.BatchHidden\.time_", r"speed\.SequenceLength\.peakmem_"], {}),
    ("memory-gradflow", [r"memory\.TrackGradFlow\."], {}),
]

# -- the asv child: a repository that knows one commit -----------------------------------------

def _asv_child(argv):
    """``gpu_asv.py --asv-child -- ASV-ARGS``: asv's main with the stand-in repository class
    (hash and date from GPULSTM_ASV_COMMIT / GPULSTM_ASV_DATE) and the machine file
    GPULSTM_ASV_MACHINE_FILE."""
    from asv import repo as asv_repo
    from asv.machine import MachineCollection

    commit = os.environ["GPULSTM_ASV_COMMIT"]
    date_ms = int(os.environ["GPULSTM_ASV_DATE"]) * 1000

    class FixedCommitRepo(asv_repo.Repo):  # found by asv.repo.get_repo through "dvcs"
        dvcs = DVCS
        _default_branch = "main"

        def __init__(self, url=None, mirror_path=None):
            self.url, self.path = url, url

        @classmethod
        def url_match(cls, url):
            return False

        def pull(self):
            pass

        def checkout(self, path, commit_hash):
            raise asv_repo.util.UserError("gpu_asv: no checkout (existing environment only)")

        def get_branch_name(self, branch=None):
            return branch or self._default_branch

        def get_date(self, hash):
            return date_ms

        def get_date_from_name(self, name):
            return date_ms

        def get_hashes_from_range(self, range):
            return [commit]

        def get_hash_from_name(self, name):
            return commit

        def get_hash_from_parent(self, name):
            return commit

        def get_name_from_hash(self, commit_hash):
            return None

        def get_tags(self):
            return {}

        def get_branch_commits(self, branch):
            return [commit]

        def get_new_branch_commits(self, branches, existing):
            return [] if commit in existing else [commit]

    machine_file = os.environ["GPULSTM_ASV_MACHINE_FILE"]
    MachineCollection.get_machine_file_path = staticmethod(lambda: machine_file)
    sys.argv = ["asv"] + argv
    from asv.main import main
    main()


# -- the parent ---------------------------------------------------------------------------------

def _git(*args):
    try:
        r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def commit_and_date(explicit=None):
    """(hash, Unix seconds, where the hash came from, [changed paths] or None if unknown)."""
    head = (_git("rev-parse", "--verify", "HEAD^{commit}") or "").strip() or None
    file_ = os.environ.get("GPULSTM_COMMIT_FILE") or os.path.join(ROOT, ".gpulstm-commit")
    source, commit = None, None
    for src, val in (("--commit", explicit), ("$GPULSTM_COMMIT", os.environ.get("GPULSTM_COMMIT")),
                     ("git HEAD", head)):
        if val and val.strip():
            source, commit = src, val.strip()
            break
    if commit is None and os.path.isfile(file_):
        with open(file_) as f:
            words = f.read().split()
        if words:
            source, commit = file_, words[0]
    if commit is None:
        source, commit = "none found (placeholder)", ZERO_HASH
    if not re.fullmatch(r"[0-9a-fA-F]{7,40}", commit):
        raise SystemExit(f"gpu_asv: commit {commit!r} (from {source}) is not a hex hash")
    commit = commit.lower()
    date = os.environ.get("GPULSTM_COMMIT_DATE")
    if not date and head and head.startswith(commit):
        date = (_git("log", "-1", "--format=%ct", commit) or "").strip()
    try:
        date = int(date)
    except (TypeError, ValueError):
        date = int(time.time())
    changed = None
    if head:
        status = _git("status", "--porcelain", "--untracked-files=all")
        if status is not None:
            changed = [ln[3:] for ln in status.splitlines()
                       if ln[3:] and not ln[3:].startswith(("results/", "html/", '"results/'))]
    return commit, date, source, changed


def write_config(results_dir, tmp):
    """A copy of the project's asv.conf.json with absolute paths, results in results_dir."""
    from gpulstm import benchrun

    return benchrun.write_config(os.path.join(ROOT, "asv.conf.json"), results_dir, tmp,
                                 dvcs=DVCS, branches=["main"], env_dir=os.path.join(tmp, "env"))


def run_chunk(cmd, env, limit_s):
    """Run cmd in its own process group; kill the group after limit_s. Returns (rc, seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        rc = p.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = "timeout"
    return rc, time.monotonic() - t0


def build_parser():
    p = argparse.ArgumentParser(prog="tools/gpu_asv.py", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results_dir", help="asv results_dir (created)")
    p.add_argument("--budget-s", type=float, default=190, help="time for all chunks (190)")
    p.add_argument("--min-chunk-s", type=float, default=25,
                   help="start no chunk with less time left (25)")
    p.add_argument("--profile", default=os.environ.get("GPULSTM_BENCH_PROFILE", "quick"),
                   choices=("quick", "full"))
    p.add_argument("--backends", default=os.environ.get("GPULSTM_BENCH_BACKENDS")
                   or "cupy,torch-cudnn,torch-cudnn-tf32",
                   help="speed backends (GPULSTM_BENCH_BACKENDS)")
    p.add_argument("--memory-backend", default=os.environ.get("GPULSTM_BENCH_BACKEND") or "cupy",
                   help="backend of the memory tracks (GPULSTM_BENCH_BACKEND)")
    p.add_argument("--chunks", help="comma-separated chunk labels to run, of: "
                   + ", ".join(c[0] for c in CHUNKS))
    p.add_argument("--commit", help="commit hash to label the results with")
    p.add_argument("--machine", help="machine name (default as benchrun: <gpu model>-<host>)")
    p.add_argument("--quick-asv", action="store_true",
                   help="asv run --quick (one sample per benchmark; a smoke test)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--asv-child"]:
        return _asv_child(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    args = build_parser().parse_args(argv)
    t_start = time.monotonic()
    try:
        import asv
    except ImportError:
        print("gpu_asv: asv is not installed for " + sys.executable + " (make wheels, then the "
              "setup step installs it from wheels/)", file=sys.stderr)
        return 3
    sys.path.insert(0, ROOT)
    from gpulstm import benchrun

    commit, date, source, changed = commit_and_date(args.commit)
    print(f"gpu_asv: asv {asv.__version__}, python {sys.executable}")
    print(f"gpu_asv: commit {commit} from {source}, date "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(date))} UTC")
    if commit == ZERO_HASH:
        print("gpu_asv: WARNING no commit hash (no git repository, GPULSTM_COMMIT or "
              ".gpulstm-commit): results are labelled 00000000")
    if changed:
        print(f"gpu_asv: WARNING the working tree has uncommitted changes ({len(changed)} paths, "
              f"e.g. {', '.join(changed[:3])}): results are labelled {commit[:8]} but measure "
              "the working tree")

    gpu = benchrun.gpu_info()
    info = benchrun.machine_info(args.machine or benchrun.default_machine_name(gpu), gpu,
                                 benchrun.library_versions())
    print("gpu_asv: machine info " + json.dumps(info, sort_keys=True))

    os.makedirs(args.results_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="gpulstm-asv-")
    config = write_config(args.results_dir, tmp)
    machine_file = os.path.join(tmp, "asv-machine.json")
    from asv.machine import MachineCollection
    MachineCollection.get_machine_file_path = staticmethod(lambda: machine_file)
    benchrun.register_machine(info)

    paths = [ROOT] + (os.environ.get("PYTHONPATH") or "").split(os.pathsep)
    pythonpath = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    env = dict(os.environ, GPULSTM_BENCH_PROFILE=args.profile,
               GPULSTM_BENCH_BACKENDS=args.backends, GPULSTM_BENCH_BACKEND=args.memory_backend,
               ASV_PYTHONPATH=pythonpath, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1",
               GPULSTM_ASV_COMMIT=commit, GPULSTM_ASV_DATE=str(date),
               GPULSTM_ASV_MACHINE_FILE=machine_file)
    print("gpu_asv: " + " ".join(f"{k}={env[k]}" for k in (
        "GPULSTM_BENCH_PROFILE", "GPULSTM_BENCH_BACKENDS", "GPULSTM_BENCH_BACKEND",
        "ASV_PYTHONPATH")) + f"; config {config}; results in {os.path.abspath(args.results_dir)}")

    try:
        return _run_chunks(args, t_start, config, info, commit, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_chunks(args, t_start, config, info, commit, env):
    wanted = args.chunks.split(",") if args.chunks else [c[0] for c in CHUNKS]
    unknown = set(wanted) - {c[0] for c in CHUNKS}
    if unknown:
        raise SystemExit(f"gpu_asv: unknown chunks {sorted(unknown)}")
    base = [sys.executable, os.path.abspath(__file__), "--asv-child", "--", "run",
            "--config", config, "-E", "existing:same", "--set-commit-hash", commit,
            "--machine", info["machine"], "--show-stderr"]
    if args.quick_asv:
        base.append("--quick")
    summary, ok = [], True
    for label, regexes, extra in CHUNKS:
        if label not in wanted:
            continue
        left = args.budget_s - (time.monotonic() - t_start)
        if left < args.min_chunk_s:
            print(f"gpu_asv: {label}: SKIPPED, {left:.0f} s left (< {args.min_chunk_s:.0f} s)")
            summary.append((label, "skipped-budget", 0.0))
            continue
        cmd = base + [a for r in regexes for a in ("--bench", r)]
        print(f"\ngpu_asv: {label} (at most {left:.0f} s): {' '.join(cmd[2:])}", flush=True)
        if args.dry_run:
            summary.append((label, "dry-run", 0.0))
            continue
        rc, secs = run_chunk(cmd, dict(env, **extra), left)
        # asv run: 0 all ran, 2 some benchmark failed (recorded), 1 asv's own error
        if rc not in (0, 2):
            ok = False
        summary.append((label, f"asv rc {rc}", secs))
        print(f"gpu_asv: {label}: asv rc {rc} after {secs:.0f} s", flush=True)

    print("\ngpu_asv: chunk\tstatus\tseconds")
    for label, status, secs in summary:
        print(f"gpu_asv: {label}\t{status}\t{secs:.0f}")
    files = []
    for d, _, names in os.walk(args.results_dir):
        files += [os.path.relpath(os.path.join(d, n), args.results_dir) for n in names]
    print("gpu_asv: result files: " + (", ".join(sorted(files)) or "none"))
    if not args.dry_run and not any(f.endswith(".json") and os.sep in f
                                    and not f.endswith("machine.json") for f in files):
        print("gpu_asv: no asv result file was written")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
