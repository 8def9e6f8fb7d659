"""The prepared GPU check (``make gpu-check``): one run of at most about 5 minutes on a machine
with an NVIDIA GPU and no network, whose evidence is at most 8 files in one folder.

    python -m gpulstm.gpucheck run OUT [--dry] [--budget-s 285] [--commit SHA]
    python -m gpulstm.gpucheck import FROM [--results results] [--commit SHA]

``run`` executes the sections below in priority order, each in a child process under a time
limit (a crash or a hung kernel costs that section only; what it wrote row by row stays),
then prints the summary. Everything goes into ``OUT`` (which must be empty or new), as the
files of :data:`FILES` and nothing else:

``manifest.json``    commit, source digest, budget, each section's status, seconds and error
``env.json``         card (name, SMs, clocks, shared memory, L2), driver, CUDA, CuPy, torch,
                     cuDNN, TF32 flags as read back, the performance model's device
``correctness.json`` every cell x algorithm on small shapes: y, h_n, c_n, dx, dh0, dc0 and
                     every weight gradient against cuDNN (TF32 off) and a float64 reference,
                     relative errors and thresholds; engine buffers start NaN
``algos.json``       speed: the two target shapes and a small one, every algorithm and cuDNN
                     (TF32 off and on), median and spread of >= 10 repetitions, the
                     performance model's µs per step beside each row (a MODEL)
``launches.json``    the kernel launches each case really issued (grid, block, dynamic shared
                     bytes, cooperative) and the algorithm that ran
``sanitizer.txt``    compute-sanitizer memcheck of a small fused and a small persistent case
``summary.txt``      the table printed last
``log.txt``          every section's output

A missing CuPy, no visible GPU or no compute-sanitizer is a FAILURE of the check, never a
skip; the exit status is 0 only when every section passed. The commit comes from ``--commit``
or ``GPULSTM_COMMIT`` (the device's copy of the tree may have no ``.git``), else git.

``--dry`` runs the same sections on the ``emulated`` execution (the CUDA kernels compiled for
the CPU) with small shapes, torch on the CPU in place of cuDNN and the sanitizer's cases run
without the sanitizer: the test suite runs it, so the first GPU run cannot fail on a bug of
this script.

``import`` copies a returned folder into ``results/gpu/<card>-<commit>/`` (never over an
existing one), where the report's GPU section reads ``algos.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .lowp import is_bf16

#: the only files a run writes into OUT (at most 8 come back from the device)
FILES = ("manifest.json", "env.json", "correctness.json", "algos.json", "launches.json",
         "sanitizer.txt", "summary.txt", "log.txt")
#: (section, time cap in seconds, seconds reserved for it against the sections before it)
SECTIONS = (("env", 40, 10), ("correctness", 100, 0), ("speed", 150, 0), ("sanitizer", 60, 30))
BUDGET_S = 285
#: largest size of a returned text file (the device returns 16 MiB at most)
MAX_FILE_BYTES = 15 * 2**20

# correctness: (case id, class, kwargs, T, B, I, H, lengths?)
CASES = (
    ("lstm", "LSTM", {}, 9, 5, 6, 37, True),
    ("lstm-2layer-bidir", "LSTM", {"num_layers": 2, "bidirectional": True}, 6, 3, 5, 64, False),
    ("gru", "GRU", {}, 9, 5, 6, 37, True),
    ("rnn-tanh", "RNN", {"nonlinearity": "tanh"}, 9, 5, 6, 37, True),
    ("rnn-relu", "RNN", {"nonlinearity": "relu"}, 9, 5, 6, 37, True),
    # cells brought through the plug-in: their kernels are the templates instantiated for
    # their headers; torch.nn has no twin, so float32 is judged against float64 alone
    ("cifg", "CIFG", {}, 9, 5, 6, 37, True),
    ("indrnn", "IndRNN", {}, 9, 5, 6, 37, True),
)
#: classes of CASES without a torch.nn twin (no cuDNN reference)
NO_TORCH_TWIN = ("CIFG", "IndRNN")
#: classes whose fused loop is not captured into graphs (no dense W_hh for the arenas)
NO_GRAPHS = ("IndRNN",)
DRY_CASES = tuple(c[:3] + (4, 3, 5, 11, c[7]) for c in CASES)
#: the algorithms checked ("+graphs": the fused loop captured into CUDA graphs and replayed)
ALGOS = ("stepwise", "fused", "fused+graphs", "persistent", "auto")
#: recompute on the device (the engine's checkpointed BPTT): outputs and every gradient the
#: same bits as without it, with the execution's windows shrunk to 2 steps so that a small
#: problem has several windows and several 4-step segments
RECOMPUTE_CASES = (("lstm-2layer-bidir", "LSTM", {"num_layers": 2, "bidirectional": True}),
                   ("gru", "GRU", {}), ("cifg", "CIFG", {}))
RECOMPUTE_IMPLS = ("stepwise", "fused", "persistent")
#: max |ours - ref| / max(1, max |ref|) allowed, per dtype of ours
THRESHOLD = {"float32": 1e-4, "float64": 1e-10}

# speed: (T, B, H) in priority order: the two target shapes, then a small one; I = H
SPEED_SHAPES = ((1000, 8, 512), (100, 64, 512), (100, 1, 128))
DRY_SPEED_SHAPES = ((6, 2, 8), (4, 3, 16))
SPEED_IMPLS = ("stepwise", "stepwise+tf32", "fused", "fused+graphs", "persistent", "auto",
               "cudnn", "cudnn-tf32")
SPEED_REPS = 10


# -- small helpers -------------------------------------------------------------------------
def _write_json(out, name, doc):
    """OUT/name = doc as JSON, replaced whole (a reader never sees half a file)."""
    tmp = Path(out) / (name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_jsonable))
    os.replace(tmp, Path(out) / name)


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _finite(x):
    """x, or None where it is NaN/inf (JSON has no NaN)."""
    return float(x) if x is not None and np.isfinite(x) else None


def source_digest(root=None):
    """sha256 (16 hex digits) of gpulstm/**/*.py and kernels/** of the tree: which code ran."""
    root = Path(root or Path(__file__).resolve().parent.parent)
    h = hashlib.sha256()
    files = sorted(list((root / "gpulstm").rglob("*.py")) + [
        p for p in (root / "kernels").rglob("*") if p.is_file()])
    for p in files:
        if "__pycache__" in p.parts:
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def detect_commit(explicit=None):
    """(commit, note): ``explicit``, else $GPULSTM_COMMIT, else git HEAD (+ "-dirty"), else
    "unknown"."""
    for c, src in ((explicit, "--commit"), (os.environ.get("GPULSTM_COMMIT"), "GPULSTM_COMMIT")):
        if c:
            return str(c), src
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            return sha + ("-dirty" if dirty else ""), "git"
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown", "no --commit, GPULSTM_COMMIT or git"


class Context:
    """What a section needs: the output folder, dry or not, its deadline (time.time())."""

    def __init__(self, out, dry, deadline):
        self.out, self.dry, self.deadline = Path(out), bool(dry), float(deadline)
        self.backend = "emulated" if dry else "cupy"

    def left(self):
        return self.deadline - time.time()


# -- the launch recorder -------------------------------------------------------------------
class _Recorded:
    """A kernel launcher that records each launch into ``log`` and then launches."""

    def __init__(self, k, name, log):
        self._k, self._name, self._log = k, name, log

    def __getattr__(self, attr):  # prepare(), ... of the real launcher
        return getattr(self._k, attr)

    def __call__(self, grid, block, args, **kw):
        self._log.append((self._name, tuple(int(g) for g in grid), tuple(int(b) for b in block),
                          int(kw.get("shared_mem", 0)), bool(kw.get("cooperative", False))))
        return self._k(grid, block, args, **kw)


class PoisonXP:
    """The array module with ``empty`` returning NaN-filled float arrays (bfloat16 ones too):
    an element the kernels never write shows as NaN."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        return getattr(self._xp, name)

    def empty(self, shape, dtype=float):
        a = self._xp.empty(shape, dtype)
        if a.dtype.kind == "f" or is_bf16(a.dtype):
            a.fill(float("nan"))
        return a


def instrument(m, poison=True):
    """Give module ``m`` a copy of its execution whose kernel launches and graph replays are
    recorded (and whose engine buffers start NaN with ``poison``). Returns the record: a dict
    with list "launches" and int "graph_replays"."""
    import copy
    ex = copy.copy(m.ex)
    rec = {"launches": [], "graph_replays": 0, "fallbacks": []}
    pw = ex.pw = copy.copy(ex.pw)
    orig = type(pw).kernel

    def kernel(name, dtype, cell=None):
        label = name if cell is None else f"{name}<{cell}>"
        return _Recorded(orig(pw, name, dtype, cell), label, rec["launches"])
    pw.kernel = kernel
    ex._fallback = lambda name, plan, per_sm: rec["fallbacks"].append(
        dict(kernel=name, blocks=plan["blocks"], blocks_per_sm=per_sm))
    if poison:
        ex.xp = PoisonXP(ex.xp)
    if getattr(ex, "graphs", False):
        launch_graph = ex._launch_graph

        def counted(graph):
            rec["graph_replays"] += 1
            return launch_graph(graph)
        ex._launch_graph = counted
    object.__setattr__(m, "ex", ex)  # past the modules' fixed-attribute guard
    return rec


def summarize_launches(rec):
    """{algo_ran, kernels: [{kernel, grid, block, shared, cooperative, count}], graph_replays}."""
    counts = {}
    for key in rec["launches"]:
        counts[key] = counts.get(key, 0) + 1
    names = {k[0] for k in counts}
    if any(n.startswith("persistent_") for n in names):
        ran = "persistent"
    elif rec["graph_replays"] or any(n.startswith("fused_") for n in names):
        ran = "fused+graphs" if rec["graph_replays"] else "fused"
    else:
        ran = "stepwise"
    return {"algo_ran": ran, "graph_replays": rec["graph_replays"],
            "persistent_fallbacks": rec.get("fallbacks", []),
            "kernels": [dict(kernel=k[0], grid=k[1], block=k[2], shared=k[3], cooperative=k[4],
                             count=n) for k, n in counts.items()]}


def _build(cls, I, H, kw, backend, dtype, impl, seed=0):
    import gpulstm as gl
    algo, *opts = impl.split("+")
    extra = {}
    if backend != "numpy":
        extra = dict(algo=algo, cuda_graphs="graphs" in opts, allow_tf32="tf32" in opts)
    return getattr(gl, cls)(I, H, **kw, backend=backend, dtype=dtype, seed=seed, **extra)


def _cuda_env():
    """Card, CUDA and CuPy facts of device 0 (raises without CuPy or a visible device)."""
    import cupy as cp
    from .backends import get_backend
    rt = cp.cuda.runtime
    n = rt.getDeviceCount()
    if n < 1:
        raise RuntimeError("no CUDA device visible")
    p = rt.getDeviceProperties(0)
    env = {"card": {
        "name": p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"]),
        "count": n, "compute_capability": f"{p['major']}.{p['minor']}",
        "sm_count": p["multiProcessorCount"], "clock_khz": p.get("clockRate"),
        "memory_clock_khz": p.get("memoryClockRate"), "l2_bytes": p.get("l2CacheSize"),
        "smem_per_block_optin": p.get("sharedMemPerBlockOptin"),
        "smem_per_sm": p.get("sharedMemPerMultiprocessor"),
        "memory_bytes": p.get("totalGlobalMem"),
        "cooperative_launch": p.get("cooperativeLaunch")}}
    env["cuda"] = {"cupy": cp.__version__, "runtime": rt.runtimeGetVersion(),
                   "driver": rt.driverGetVersion(), "nvrtc": list(cp.cuda.nvrtc.getVersion())}
    env["gpulstm_device_limits"] = list(get_backend("cupy").device_limits())
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,"
                            "clocks.max.sm,clocks.mem,temperature.gpu,power.draw",
                            "--format=csv"], capture_output=True, text=True, timeout=20)
        env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
        print(subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True,
                             timeout=20).stdout)
    except (OSError, subprocess.SubprocessError) as e:
        env["nvidia_smi"] = f"unavailable: {e}"
    return env


# -- section: env --------------------------------------------------------------------------
def section_env(ctx):
    import platform

    import gpulstm
    from . import perfmodel
    from .backends import get_backend
    commit, commit_src = detect_commit()
    env = {"dry": ctx.dry, "backend": ctx.backend, "commit": commit, "commit_source": commit_src,
           "source_digest": source_digest(), "python": sys.version, "executable": sys.executable,
           "platform": platform.platform(), "numpy": np.__version__,
           "gpulstm_backends": gpulstm.available_backends()}
    problems = []
    if ctx.dry:
        ex = get_backend("emulated")
        sm, smem = ex.device_limits()
        env["card"] = {"name": "emulated (CPU)", "sm_count": sm, "smem_per_block_optin": smem}
    else:
        try:
            env.update(_cuda_env())
        except Exception as e:  # no CuPy, no driver, no device: a failure, recorded
            env["card"] = {"name": "none"}
            problems.append(f"no GPU through CuPy: {type(e).__name__}: {e}")
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        env["torch"] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                        "cuda_available": torch.cuda.is_available(),
                        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available()
                        else None,
                        "tf32_read_back": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                           "cudnn": torch.backends.cudnn.allow_tf32,
                                           "float32_matmul_precision":
                                               torch.get_float32_matmul_precision()}}
        if not ctx.dry and not torch.cuda.is_available():
            problems.append("torch sees no CUDA device: no cuDNN reference")
    except ImportError as e:
        problems.append(f"torch missing: {e}")
    name = env["card"]["name"]
    model = (perfmodel.device_for(name, env["card"].get("sm_count")) if not ctx.dry
             else "H100")
    env["model_device"] = model or f"unknown card {name!r}: no model figures"
    if commit == "unknown":
        problems.append("commit unknown: pass GPULSTM_COMMIT=<sha>")
    env["problems"] = problems
    _write_json(ctx.out, "env.json", env)
    print(json.dumps(env, indent=1, default=_jsonable))
    return 1 if problems else 0


# -- section: correctness ------------------------------------------------------------------
def _problem(rng, m, T, B, I, with_lengths):
    LD, H = m.num_layers * m.num_directions, m.hidden_size
    p = {"x": rng.standard_normal((T, B, I)), "h0": rng.standard_normal((LD, B, H)) * 0.5,
         "gy": rng.standard_normal((T, B, m.num_directions * H)),
         "gh": rng.standard_normal((LD, B, H))}
    if m._has_cell_state:
        p["c0"], p["gc"] = rng.standard_normal((LD, B, H)) * 0.5, rng.standard_normal((LD, B, H))
    if with_lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
        if B > 1:
            lengths[1] = 1
        p["lengths"] = lengths.astype(np.int64)
    return p


def run_ours(m, p, dtype):
    """Forward + backward of gpulstm module ``m`` on problem ``p``: {name: NumPy array}."""
    ex = m.ex
    c = {k: ex.asarray(np.asarray(v, dtype), dtype) for k, v in p.items() if k != "lengths"}
    kw = {"lengths": p["lengths"]} if "lengths" in p else {}
    if "c0" in p:
        y, (hn, cn) = m(c["x"], (c["h0"], c["c0"]), **kw)
        dx = m.backward(c["gy"], c["gh"], c["gc"])
        out = {"y": y, "h_n": hn, "c_n": cn, "dx": dx, "dh0": m.grad_hx[0], "dc0": m.grad_hx[1]}
    else:
        y, hn = m(c["x"], c["h0"], **kw)
        dx = m.backward(c["gy"], c["gh"])
        out = {"y": y, "h_n": hn, "dx": dx, "dh0": m.grad_hx}
    out.update({"grad." + k: v for k, v in m.grads.items()})
    return {k: np.asarray(ex.to_numpy(v), np.float64) for k, v in out.items()}


def run_torch(cls, kw, state, p, device, tf32=False):
    """The same forward + backward through torch.nn (cuDNN on "cuda"), float32."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    ref = getattr(torch.nn, cls)(p["x"].shape[2], state_hidden(state), **kw).to(device)
    ref.load_state_dict({k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in state.items()})
    t = {k: torch.tensor(np.asarray(v, np.float32), device=device) for k, v in p.items()
         if k != "lengths"}
    for k in ("x", "h0", "c0"):
        if k in t:
            t[k].requires_grad_(True)
    hx = (t["h0"], t["c0"]) if "c0" in t else t["h0"]
    if "lengths" in p:
        T = p["x"].shape[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            t["x"], torch.as_tensor(p["lengths"]), enforce_sorted=False)
        yp, st = ref(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, total_length=T)
    else:
        y, st = ref(t["x"], hx)
    hn, cn = st if "c0" in t else (st, None)
    loss = (y * t["gy"]).sum() + (hn * t["gh"]).sum()
    if cn is not None:
        loss = loss + (cn * t["gc"]).sum()
    loss.backward()
    out = {"y": y, "h_n": hn, "dx": t["x"].grad, "dh0": t["h0"].grad}
    if cn is not None:
        out.update(c_n=cn, dc0=t["c0"].grad)
    out.update({"grad." + k: q.grad for k, q in ref.named_parameters()})
    return {k: v.detach().cpu().double().numpy() for k, v in out.items()}


def state_hidden(state):
    """hidden_size from a state dict (weight_hh_l0 is [G H, H])."""
    return int(np.asarray(state["weight_hh_l0"]).shape[1])


def compare(ours, ref):
    """{name: max|ours - ref| / max(1, max|ref|)} (inf where ours has NaN or a name lacks)."""
    errs = {}
    for k, r in ref.items():
        o = ours.get(k)
        if o is None or o.shape != r.shape:
            errs[k] = float("inf")
            continue
        d = np.abs(o - r)
        errs[k] = float("inf") if not np.all(np.isfinite(o)) else float(
            d.max(initial=0.0) / max(1.0, float(np.abs(r).max(initial=0.0))))
    for k in ours:
        if k not in ref:
            errs[k] = float("inf")
    return errs


#: (dtype, impl) in the order run: the persistent kernels (grid barriers: the one place a
#: kernel can hang) after everything else, so that a hang costs the fewest rows
CORRECTNESS_RUNS = tuple([("float32", a) for a in ALGOS if a not in ("persistent", "auto")]
                         + [("float64", "fused"), ("float32", "persistent+limited"),
                            ("float32", "persistent"), ("float32", "auto"),
                            ("float64", "persistent")])
#: the algorithm each run must have run (small shapes: the persistent grid fits);
#: "persistent+limited": persistent on a simulated device whose SMs hold no block (4 KiB of
#: shared memory per SM), which the occupancy guard must send to fused
EXPECTED_RAN = {"stepwise": "stepwise", "fused": "fused", "fused+graphs": "fused+graphs",
                "persistent": "persistent", "auto": "persistent", "persistent+limited": "fused"}


def _references(cases, device):
    """Per case: (problem, weights, float64 reference, cuDNN result or None, its error)."""
    import gpulstm as gl
    rng = np.random.default_rng(20261207)
    refs = {}
    for cid, cls, kw, T, B, I, H, with_lengths in cases:
        probe = getattr(gl, cls)(I, H, **kw, backend="numpy", dtype="float64", seed=1)
        p = _problem(rng, probe, T, B, I, with_lengths)
        state = probe.state_dict()
        want64 = run_ours(probe, p, "float64")  # the float64 reference (numpy execution)
        try:
            cudnn = err = None
            if cls not in NO_TORCH_TWIN:
                cudnn = run_torch(cls, kw, state, p, device)
        except Exception as e:  # no cuDNN reference: every float32 row of the case fails
            cudnn, err = None, f"reference torch.nn on {device}: {type(e).__name__}: {e}"
        refs[cid] = (p, state, want64, cudnn, err)
    return refs


def _check_case(ctx, case, dtype, impl, ref):
    """One correctness row: ``impl`` of ``case`` in ``dtype`` against the references."""
    cid, cls, kw, T, B, I, H, _ = case
    p, state, want64, cudnn, cudnn_error = ref
    row = dict(case=cid, cls=cls, kw=kw, T=T, B=B, I=I, H=H, dtype=dtype, impl=impl,
               threshold=THRESHOLD[dtype])
    launches = None
    try:
        m = _build(cls, I, H, kw, ctx.backend, dtype, impl)
        m.load_state_dict({k: np.asarray(v, dtype) for k, v in state.items()})
        if impl.endswith("+limited"):
            object.__setattr__(m, "ex", m.ex.with_device_limits(smem_per_sm=4096))
        rec = instrument(m)
        got = run_ours(m, p, dtype)
        if "graphs" in impl:  # the replay of the captured graphs, poisoned again
            got = run_ours(m, p, dtype)
        launches = summarize_launches(rec)
        row["algo_ran"] = launches["algo_ran"]
        row["vs_float64"] = compare(got, want64)
        if dtype == "float32" and cudnn is not None:
            row["vs_cudnn"] = compare(got, cudnn)
        elif dtype == "float32" and cudnn_error is not None:
            row["vs_cudnn"] = {"reference": float("inf")}
            row["error"] = cudnn_error
        worst = max(max(e.values()) for k, e in row.items() if k.startswith("vs_"))
        row["worst"] = _finite(worst)
        expected = "fused" if impl == "fused+graphs" and cls in NO_GRAPHS else EXPECTED_RAN[impl]
        row["expected_ran"] = expected
        row["ok"] = bool(worst <= THRESHOLD[dtype]) and row["algo_ran"] == expected
        if row["algo_ran"] != expected:
            row["error"] = f"ran {row['algo_ran']}, expected {expected}"
    except Exception as e:  # recorded, and the next case runs
        row.update(ok=False, error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc()[-4000:])
    for k in ("vs_float64", "vs_cudnn"):
        if k in row:
            row[k] = {q: _finite(e) for q, e in row[k].items()}
    return row, launches


def _check_recompute(ctx, cid, cls, kw, impl):
    """One recompute row: ``impl`` of ``cls`` trained with recompute=4 and without, float32,
    windows of 2 steps (several windows and segments on a small problem): every output and
    gradient must be the same bits (the engine's claim, tests/test_recompute.py)."""
    import copy
    T, B, I, H = (12, 3, 4, 8) if ctx.dry else (64, 8, 32, 64)
    row = dict(case=cid, cls=cls, kw=kw, T=T, B=B, I=I, H=H, dtype="float32", impl=impl,
               check="recompute=4 vs recompute=False, bitwise (windows of 2 steps)")
    try:
        got = {}
        for rc in (False, 4):
            m = _build(cls, I, H, kw, ctx.backend, "float32", impl, seed=5)
            ex = copy.copy(m.ex)
            ex.window_rows = 2 * B  # windows of 2 steps
            object.__setattr__(m, "ex", ex)
            m.recompute = rc
            p = _problem(np.random.default_rng(11), m, T, B, I, True)
            got[rc] = run_ours(m, p, "float32")
        differ = sorted(k for k in got[False]
                        if not np.array_equal(got[False][k], got[4][k], equal_nan=True))
        row.update(ok=not differ, differ=differ, worst=0.0 if not differ else None)
        if differ:
            row["error"] = f"recompute changed the bits of {differ}"
    except Exception as e:  # recorded, and the next case runs
        row.update(ok=False, error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc()[-4000:])
    return row


def section_correctness(ctx):
    rows, launches = [], {}
    cases = DRY_CASES if ctx.dry else CASES
    refs = _references(cases, "cpu" if ctx.dry else "cuda")
    for dtype, impl in CORRECTNESS_RUNS:
        for case in cases:
            key = f"{case[0]}/{dtype}/{impl}"
            if ctx.left() < 3:
                row, rec = dict(case=case[0], dtype=dtype, impl=impl, ok=False,
                                error="section time spent before this case"), None
            else:
                row, rec = _check_case(ctx, case, dtype, impl, refs[case[0]])
            rows.append(row)
            if rec is not None:
                launches[key] = rec
            print(f"{key:36s} {'ok' if row['ok'] else 'FAILED'} ran={row.get('algo_ran')} "
                  f"worst={row.get('worst')} {row.get('error', '')}")
            _write_json(ctx.out, "correctness.json", {
                "reference": "float64 numpy execution; " + (
                    "torch CPU float32 in place of cuDNN (dry run)" if ctx.dry else
                    "cuDNN float32 through torch.nn, TF32 off"),
                "error": "max|ours - ref| / max(1, max|ref|), per output; null = NaN/inf",
                "poisoned": True, "rows": rows})
            _write_json(ctx.out, "launches.json", launches)
    for cid, cls, kw in RECOMPUTE_CASES:  # after every algorithm's numbers
        for impl in RECOMPUTE_IMPLS:
            if ctx.left() < 3:
                row = dict(case=cid, dtype="float32", impl=impl, check="recompute", ok=False,
                           error="section time spent before this case")
            else:
                row = _check_recompute(ctx, cid, cls, kw, impl)
            rows.append(row)
            print(f"recompute/{cid}/{impl:26s} {'ok' if row['ok'] else 'FAILED'} "
                  f"{row.get('error', '')}")
            doc = _read_json(Path(ctx.out) / "correctness.json") or {}
            _write_json(ctx.out, "correctness.json", {**doc, "rows": rows})
    return 0 if rows and all(r["ok"] for r in rows) else 1


# -- section: speed ------------------------------------------------------------------------
def _timer(ctx, impl):
    """time(fn, reps) -> list of milliseconds, on the device's clock (events) or wall."""
    if not ctx.dry and impl.startswith("cudnn"):
        import torch

        def events():
            return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync, elapsed = torch.cuda.synchronize, lambda a, b: a.elapsed_time(b)
    elif not ctx.dry:
        import cupy as cp

        def events():
            return cp.cuda.Event(), cp.cuda.Event()
        sync = cp.cuda.get_current_stream().synchronize
        elapsed = cp.cuda.get_elapsed_time
    else:
        return _wall

    def time_it(fn, reps):
        fn()  # warm-up (graph capture, kernel load)
        sync()
        ms = []
        for _ in range(reps):
            a, b = events()
            a.record()
            fn()
            b.record()
            b.synchronize()
            ms.append(float(elapsed(a, b)))
        return ms
    return time_it


def _wall(fn, reps):
    fn()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t0))
    return ms


def _speed_row(ctx, impl, T, B, H, reps, model, ref_y, state):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, H), dtype=np.float32)
    gy = rng.standard_normal((T, B, H), dtype=np.float32)
    time_it = _timer(ctx, impl)
    row = dict(T=T, B=B, H=H, impl=impl, reps=reps)
    if impl.startswith("cudnn"):
        import torch
        tf32 = impl.endswith("tf32")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        dev = "cpu" if ctx.dry else "cuda"
        if ctx.dry:
            torch.set_num_threads(1)  # a shared CI machine: no thread-pool stalls
        lstm = torch.nn.LSTM(H, H)
        lstm.load_state_dict({k: torch.as_tensor(np.asarray(v, np.float32))
                              for k, v in state.items()})
        lstm = lstm.to(dev)
        xt = torch.tensor(x, device=dev, requires_grad=True)
        gyt = torch.tensor(gy, device=dev)

        def fwd():
            with torch.no_grad():
                return lstm(xt)[0]

        def fb():
            y, _ = lstm(xt)
            y.backward(gyt)
        y = fwd().cpu().numpy()
        row["ran"] = "torch-cpu" if ctx.dry else "cudnn"
        row["tf32_read_back"] = bool(torch.backends.cudnn.allow_tf32)
    else:
        m = _build("LSTM", H, H, {}, ctx.backend, "float32", impl)
        m.load_state_dict({k: np.asarray(v, np.float32) for k, v in state.items()})
        rec = instrument(m, poison=False)
        xs, gys = m.ex.asarray(x, np.float32), m.ex.asarray(gy, np.float32)

        def fwd():
            return m(xs)[0]

        def fb():
            m(xs)
            m.backward(gys)
        y = m.ex.to_numpy(fwd())
        rec["launches"].clear()
        rec["fallbacks"].clear()
        rec["graph_replays"] = 0
        fb()
        row["launches"] = summarize_launches(rec)
        row["ran"] = row["launches"]["algo_ran"]
    fw, fbm = time_it(fwd, reps), time_it(fb, reps)
    row.update(forward_ms=float(np.median(fw)), forward_backward_ms=float(np.median(fbm)),
               forward_backward_min_ms=min(fbm), forward_backward_max_ms=max(fbm),
               forward_backward_q25_ms=float(np.percentile(fbm, 25)),
               forward_backward_q75_ms=float(np.percentile(fbm, 75)), samples_ms=fbm)
    row["us_per_step"] = 1e3 * row["forward_backward_ms"] / T
    key = impl.split("+tf32")[0] if impl != "stepwise+tf32" else None
    mp = model.get(key) if model and key else None
    if isinstance(mp, str):  # "auto": the algorithm the rule picks
        mp = model.get(mp)
    row["model_us_per_step"] = _finite(mp["us_per_step"]) if isinstance(mp, dict) else None
    row["measured_over_model"] = (row["us_per_step"] / row["model_us_per_step"]
                                  if row["model_us_per_step"] else None)
    if ref_y is not None:
        row["max_abs_diff_vs_cudnn"] = _finite(np.abs(np.asarray(y, np.float64) - ref_y).max())
    return row, np.asarray(y, np.float64)


def speed_order(shapes):
    """((T, B, H), impl) in the order timed: cuDNN first per shape (the reference of the
    others' outputs), the persistent kernels (the one place a kernel can hang) after all the
    rest, shapes in priority order within each group."""
    late = ("persistent", "auto")
    first = [(s, i) for s in shapes for i in ("cudnn",) + tuple(
        i for i in SPEED_IMPLS if i != "cudnn" and i not in late)]
    return first + [(s, i) for s in shapes for i in late]


def section_speed(ctx):
    import gpulstm as gl
    from .perfmodel import device_for, predict
    env = _read_json(ctx.out / "env.json") or {}
    card = (env.get("card") or {}).get("name", "")
    model_dev = "H100" if ctx.dry else device_for(card, (env.get("card") or {}).get("sm_count"))
    shapes = DRY_SPEED_SHAPES if ctx.dry else SPEED_SHAPES
    reps = 3 if ctx.dry else SPEED_REPS
    rows, skipped, failed = [], [], 0
    per_shape = {}
    for T, B, H in shapes:
        probe = gl.LSTM(H, H, backend="numpy", seed=0)
        model = (predict(probe, np.zeros((T, B, H), np.float32), model_dev) if model_dev
                 else None)
        per_shape[T, B, H] = [model, probe.state_dict(), None]  # the same weights for all
    for (T, B, H), impl in speed_order(shapes):
        model, state, ref_y = per_shape[T, B, H]
        if ctx.left() < 5:
            skipped.append(dict(T=T, B=B, H=H, impl=impl))
            continue
        try:
            row, y = _speed_row(ctx, impl, T, B, H, reps, model, ref_y, state)
            if impl == "cudnn":
                per_shape[T, B, H][2] = y
        except Exception as e:
            row = dict(T=T, B=B, H=H, impl=impl, error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc()[-4000:])
            failed += 1
        rows.append(row)
        print(f"{T:5d} {B:3d} {H:5d} {impl:14s} ran={row.get('ran')} "
              f"fwd+bwd {row.get('forward_backward_ms', float('nan')):9.3f} ms "
              f"model {row.get('model_us_per_step')} us/step {row.get('error', '')}")
        _write_json(ctx.out, "algos.json", {
            "backend": ctx.backend, "card": card, "dry": ctx.dry,
            "model": (f"gpulstm.perfmodel {model_dev}: a MODEL, not a measurement"
                      if model_dev else f"no model figures for {card!r}"),
            "timing": "wall clock (dry run)" if ctx.dry else "CUDA events, after one warm-up",
            "rows": rows, "skipped": skipped})
    return 1 if failed or skipped else 0


# -- section: sanitizer --------------------------------------------------------------------
SANITIZE_CASES = (("LSTM", "fused"), ("LSTM", "persistent"), ("GRU", "persistent"))


def sanitize_case(backend):
    """The small cases compute-sanitizer watches: forward + backward, one per line printed."""
    import gpulstm as gl
    if backend == "cupy":
        import cupy as cp
        cp.cuda.set_allocator(None)  # every array its own cudaMalloc: memcheck sees overruns
    rng = np.random.default_rng(1)
    for cls, algo in SANITIZE_CASES:
        m = getattr(gl, cls)(5, 37, backend=backend, dtype="float32", algo=algo)
        rec = instrument(m, poison=False)
        x = m.ex.asarray(rng.standard_normal((4, 3, 5)), np.float32)
        y = m(x, lengths=np.array([4, 1, 3]))[0]
        m.backward(m.ex.asarray(rng.standard_normal(y.shape), np.float32))
        ran = summarize_launches(rec)["algo_ran"]
        print(f"sanitize-case {cls} {algo}: ran {ran}")
        if ran != algo:
            raise RuntimeError(f"{cls} algo={algo} ran {ran}: the sanitizer would watch the "
                               "wrong kernels")


def find_sanitizer():
    c = shutil.which("compute-sanitizer")
    if c:
        return c
    for pat in ("/usr/local/cuda*/bin/compute-sanitizer",
                "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                "/opt/nvidia/*/compute-sanitizer/compute-sanitizer"):
        for p in sorted(Path("/").glob(pat.lstrip("/"))):
            if os.access(p, os.X_OK):
                return str(p)
    return None


def section_sanitizer(ctx):
    path = ctx.out / "sanitizer.txt"
    if ctx.dry:
        sanitize_case("emulated")
        path.write_text("dry run: compute-sanitizer NOT run; its cases ran on the emulated "
                        f"execution: {', '.join(f'{c} {a}' for c, a in SANITIZE_CASES)}: ok\n")
        return 0
    cs = find_sanitizer()
    if cs is None:
        path.write_text("FAILED: compute-sanitizer not found (PATH, /usr/local/cuda*/bin)\n")
        return 1
    cmd = [cs, "--tool", "memcheck", "--error-exitcode", "99", "--print-limit", "100",
           sys.executable, "-m", "gpulstm.gpucheck", "--section", "sanitize-case",
           "--out", str(ctx.out)]
    with open(path, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                timeout=max(5, ctx.left() - 3)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        f.write(f"\nexit status: {rc}\n")
    _cap(path)
    return 0 if rc == 0 else 1


# -- the driver ----------------------------------------------------------------------------
RUNNERS = {"env": section_env, "correctness": section_correctness, "speed": section_speed,
           "sanitizer": section_sanitizer}


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _cap(path, limit=MAX_FILE_BYTES):
    """Keep a text file under ``limit`` bytes: its head and tail, the middle cut out."""
    p = Path(path)
    if p.exists() and p.stat().st_size > limit:
        data = p.read_bytes()
        half = limit // 2 - 100
        p.write_bytes(data[:half] + b"\n[... cut to fit the size limit ...]\n" + data[-half:])


def _run_child(name, out, dry, deadline, timeout, log):
    """Section ``name`` in a child process (its own process group, killed at ``timeout``)."""
    cmd = [sys.executable, "-m", "gpulstm.gpucheck", "--section", name, "--out", str(out),
           "--deadline", repr(deadline)] + (["--dry"] if dry else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout"


def run_check(out, dry=False, budget_s=BUDGET_S, commit=None):
    """The whole check into folder ``out``; returns the exit status (0: every section ok)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"gpu-check: OUT={out} must be a new or empty folder (a run writes "
                         f"only {', '.join(FILES)})")
    out.mkdir(parents=True, exist_ok=True)
    if commit:
        os.environ["GPULSTM_COMMIT"] = str(commit)
    t0 = time.time()
    deadline = t0 + float(budget_s)
    commit, commit_src = detect_commit()
    manifest = {"what": "gpulstm gpu-check" + (" (DRY RUN on the CPU)" if dry else ""),
                "dry": dry, "commit": commit, "commit_source": commit_src,
                "source_digest": source_digest(), "budget_s": budget_s,
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                "sections": {}, "files": list(FILES)}
    _write_json(out, "manifest.json", manifest)
    logpath = out / "log.txt"
    for i, (name, cap, _) in enumerate(SECTIONS):
        reserve = sum(r for _, _, r in SECTIONS[i + 1:])
        limit = min(cap, deadline - time.time() - reserve)
        if limit < 5:
            manifest["sections"][name] = {"status": "skipped: time budget spent", "seconds": 0}
            _write_json(out, "manifest.json", manifest)
            continue
        with open(logpath, "a") as log:
            log.write(f"\n===== {name} (limit {limit:.0f} s) "
                      f"{time.strftime('%H:%M:%S', time.gmtime())} UTC =====\n")
            log.flush()
            start = log.tell()
            s0 = time.time()
            print(f"[gpu-check] {name} (limit {limit:.0f} s)", flush=True)
            rc = _run_child(name, out, dry, time.time() + limit - 2, limit, log)
        secs = time.time() - s0
        status = "ok" if rc == 0 else "timeout" if rc == "timeout" else (
            "failed" if rc == 1 else f"crashed (exit {rc})")
        with open(logpath, "rb") as log:
            log.seek(start)
            tail = log.read().decode(errors="replace")[-1500:]
        manifest["sections"][name] = {"status": status, "seconds": round(secs, 1),
                                      **({"log_tail": tail} if status != "ok" else {})}
        _write_json(out, "manifest.json", manifest)
        print(f"[gpu-check] {name}: {status} in {secs:.0f} s", flush=True)
    for p in out.iterdir():  # half-written temporaries of a killed section
        if p.name not in FILES:
            p.unlink()
    summary = summarize(out, manifest)
    (out / "summary.txt").write_text(summary)
    _cap(logpath)
    ok = all(s["status"] == "ok" for s in manifest["sections"].values())
    manifest.update(finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    seconds=round(time.time() - t0, 1), passed=ok,
                    files={p.name: p.stat().st_size for p in sorted(out.iterdir())})
    _write_json(out, "manifest.json", manifest)
    print(summary)
    return 0 if ok else 1


def summarize(out, manifest):
    """The short table of a run (summary.txt)."""
    lines = [f"{manifest['what']}: commit {manifest['commit']} ({manifest['commit_source']}), "
             f"source {manifest['source_digest']}"]
    env = _read_json(Path(out) / "env.json") or {}
    card = env.get("card") or {}
    lines.append(f"card: {card.get('name', '?')}, {card.get('sm_count', '?')} SMs; model: "
                 f"{env.get('model_device', '?')}")
    for p in env.get("problems", []):
        lines.append(f"  PROBLEM: {p}")
    lines.append("sections: " + ", ".join(f"{k} {v['status']} ({v['seconds']} s)"
                                          for k, v in manifest["sections"].items()))
    corr = _read_json(Path(out) / "correctness.json")
    if corr:
        rows = corr["rows"]
        bad = [r for r in rows if not r.get("ok")]
        worst = max((r["worst"] for r in rows if r.get("worst") is not None), default=None)
        lines.append(f"correctness: {len(rows) - len(bad)}/{len(rows)} ok, worst relative "
                     f"error {worst}")
        for r in bad[:12]:
            lines.append(f"  FAILED {r['case']} {r['dtype']} {r['impl']}: worst "
                         f"{r.get('worst')} {r.get('error', '')}")
    speed = _read_json(Path(out) / "algos.json")
    if speed:
        lines.append(f"speed (LSTM fp32 fwd+bwd, {speed['timing']}; {speed['model']}):")
        lines.append(f"  {'T':>5} {'B':>3} {'H':>5} {'impl':14} {'ran':14} {'median ms':>10} "
                     f"{'min-max ms':>17} {'us/step':>9} {'model':>9} {'meas/model':>10}")
        for r in speed["rows"]:
            if "error" in r:
                lines.append(f"  {r['T']:5d} {r['B']:3d} {r['H']:5d} {r['impl']:14} ERROR "
                             f"{r['error']}")
                continue
            mdl = r.get("model_us_per_step")
            ratio = r.get("measured_over_model")
            lines.append(
                f"  {r['T']:5d} {r['B']:3d} {r['H']:5d} {r['impl']:14} {str(r.get('ran')):14} "
                f"{r['forward_backward_ms']:10.3f} "
                f"{r['forward_backward_min_ms']:8.3f}-{r['forward_backward_max_ms']:<8.3f} "
                f"{r['us_per_step']:9.2f} {mdl if mdl is None else round(mdl, 2)!s:>9} "
                f"{ratio if ratio is None else round(ratio, 2)!s:>10}")
        if speed.get("skipped"):
            lines.append(f"  skipped (time): {len(speed['skipped'])} rows")
    san = Path(out) / "sanitizer.txt"
    if san.exists():
        text = san.read_text(errors="replace")
        m = re.search(r"ERROR SUMMARY: .*", text)
        lines.append("sanitizer: " + (m.group(0) if m else text.strip().splitlines()[-1]))
    ok = all(s["status"] == "ok" for s in manifest["sections"].values())
    lines.append("RESULT: " + ("PASSED" if ok else "FAILED"))
    return "\n".join(lines) + "\n"


# -- import --------------------------------------------------------------------------------
def card_slug(name):
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (letters, digits and '-')."""
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower().replace("nvidia", "")).strip("-")
    return s or "unknown-card"


def import_run(src, results="results", commit=None, allow_dry=False):
    """Copy the check's folder ``src`` into ``results/gpu/<card>-<commit>/``; returns it."""
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"gpu-import: FROM={src} is not a folder")
    names = {p.name for p in src.iterdir()}
    unknown = sorted(names - set(FILES))
    if unknown:
        raise ValueError(f"gpu-import: {src} holds files a gpu-check does not write: {unknown}")
    manifest = _read_json(src / "manifest.json")
    env = _read_json(src / "env.json") or {}
    if manifest is None:
        raise ValueError(f"gpu-import: {src}/manifest.json is missing or not JSON")
    if manifest.get("dry") and not allow_dry:
        raise ValueError(f"gpu-import: {src} is a dry run on the CPU, not GPU evidence")
    commit = commit or manifest.get("commit")
    if not commit or commit == "unknown":
        raise ValueError("gpu-import: the run's commit is unknown: pass COMMIT=<sha>")
    commit = re.sub(r"[^A-Za-z0-9_.-]", "-", str(commit))
    dest = Path(results) / "gpu" / f"{card_slug((env.get('card') or {}).get('name'))}-{commit}"
    if dest.exists():
        raise ValueError(f"gpu-import: {dest} exists already (a result is never overwritten)")
    dest.mkdir(parents=True)
    for name in sorted(names):
        p = src / name
        if p.is_symlink() or not p.is_file():
            raise ValueError(f"gpu-import: {p} is not a regular file")
        shutil.copyfile(p, dest / name)
    return dest


# -- command line --------------------------------------------------------------------------
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--section"] or "--section" in argv[:1]:
        return _child(argv)
    ap = argparse.ArgumentParser(prog="python -m gpulstm.gpucheck",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the check into OUT")
    r.add_argument("out")
    r.add_argument("--dry", action="store_true", help="on the CPU (emulated), small shapes")
    r.add_argument("--budget-s", type=float, default=BUDGET_S)
    r.add_argument("--commit")
    i = sub.add_parser("import", help="copy a returned folder into results/gpu/")
    i.add_argument("src")
    i.add_argument("--results", default="results")
    i.add_argument("--commit")
    i.add_argument("--allow-dry", action="store_true")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "run":
            return run_check(a.out, a.dry, a.budget_s, a.commit)
        print(import_run(a.src, a.results, a.commit, a.allow_dry).resolve())
        return 0
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2


def _child(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--section", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=time.time() + 60)
    ap.add_argument("--dry", action="store_true")
    a = ap.parse_args(argv)
    if a.section == "sanitize-case":
        sanitize_case("emulated" if a.dry else "cupy")
        return 0
    ctx = Context(a.out, a.dry, a.deadline)
    try:
        return RUNNERS[a.section](ctx)
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
