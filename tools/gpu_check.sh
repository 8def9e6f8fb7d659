#!/usr/bin/env bash
# tools/gpu_check.sh [OUT_DIR]  (make gpu-check)
#
# The GPU check for a machine with an NVIDIA GPU and no network:
#   setup     install what is missing (asv, CuPy, pytest) from the local wheel folder wheels/
#             (filled beforehand by tools/download_wheels.sh, i.e. make wheels)
#   env       nvidia-smi -q and the versions of everything involved
#   tests     pytest -m gpu (cupy vs numpy for every cell/option, vs cuDNN, DLPack)
#   memcheck  compute-sanitizer --tool memcheck on tools/gpu_sanitize_case.py
#   racecheck compute-sanitizer --tool racecheck on the same case
#   asv       the asv suite's GPU part (tools/gpu_asv.py): speed benchmarks of cupy, torch-cudnn
#             and torch-cudnn-tf32 (quick grid), then the gradient-flow memory track on cupy, in
#             chunks that fit the step's time; asv results (benchmarks.json,
#             <machine>/machine.json, <machine>/<commit>-*.json) in OUT_DIR/asv-results
#   speed     LSTM forward and forward+backward, gpulstm cupy vs cuDNN (TF32 off/on)
#   algos     every time-loop algorithm (stepwise, fused, fused+graphs, persistent) vs cuDNN (TF32 off/on)
#             with the performance model's prediction alongside (tools/gpu_algos.py)
# Every step logs to OUT_DIR/<step>.log; OUT_DIR/steps.tsv records status and seconds. A
# failing step does not stop the others; the exit status is 1 if any step failed.
# The whole run keeps to a time budget (GPULSTM_CHECK_BUDGET_S, default 420 s): each step runs
# under `timeout` with at most the time left, and a step that cannot start is logged as skipped.
#
# A step may also reserve time (STEPS entry <name>:<limit>:<reserve>): the steps before it
# end by the time only the reserves of the steps still to come are left (asv keeps 150 s).
#
# Adding a step: write a function step_<name> and append <name>:<seconds> to STEPS; a step
# that does not apply here prints a line starting with STEP-SKIPPED: and its reason, exits 0.
#
# Environment: GPULSTM_OUT (output folder; default results/gpu-check/<UTC timestamp>),
# PYTHON (interpreter; default .venv/bin/python if present, else python3),
# GPULSTM_WHEELS (wheel folder; default wheels/), GPULSTM_CHECK_BUDGET_S,
# GPULSTM_COMMIT (commit hash for the asv results where the tree is a copy without .git;
# else git HEAD, else the file GPULSTM_COMMIT_FILE or .gpulstm-commit; see tools/gpu_asv.py).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-${GPULSTM_OUT:-$ROOT/results/gpu-check/$(date -u +%Y%m%dT%H%M%SZ)}}
WHEELS=${GPULSTM_WHEELS:-$ROOT/wheels}
BUDGET=${GPULSTM_CHECK_BUDGET_S:-420}
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
cd "$ROOT" || exit 1
DEADLINE=$((SECONDS + BUDGET))
FAILED=0

log() { echo "[gpu-check $(date -u +%H:%M:%S)] $*"; }

# steps ------------------------------------------------------------------------------------
step_setup() {
  local extra want
  extra=$("$PY" gpulstm/backends/cuda_driver.py 2>/dev/null)  # cuda12 / cuda13 from the driver
  want="cupy-${extra:-cuda12}x"
  ensure() {  # ensure MODULE PACKAGE...: pip-install PACKAGEs from $WHEELS if MODULE is missing
    local mod=$1; shift
    if "$PY" -c "import $mod" 2>/dev/null; then echo "$mod: present"; return 0; fi
    if [[ ! -d $WHEELS ]]; then echo "$mod: missing and no wheel folder $WHEELS (run make wheels)"; return 1; fi
    echo "$mod: missing, installing $* from $WHEELS"
    "$PY" -m pip install --no-index --find-links "$WHEELS" "$@"
  }
  local rc=0
  ensure numpy numpy || rc=1
  ensure pytest pytest || rc=1
  ensure asv "asv>=0.6.4,<0.7" || rc=1
  ensure cupy "$want" || ensure cupy cupy-cuda12x || ensure cupy cupy-cuda13x || rc=1
  "$PY" -c "import torch" 2>/dev/null || echo "torch: missing (cuDNN comparisons will skip)"
  return $rc
}

step_env() {
  nvidia-smi -q > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed"
  "$PY" - "$OUT/versions.json" <<'PY'
import json, platform, subprocess, sys
v = {"python": sys.version, "platform": platform.platform()}
def probe(name, fn):
    try:
        v[name] = fn()
    except Exception as e:
        v[name] = f"unavailable: {type(e).__name__}: {e}"
import numpy; v["numpy"] = numpy.__version__
def cupy_info():
    import cupy as cp
    rt = cp.cuda.runtime
    return {"cupy": cp.__version__, "cuda_runtime": rt.runtimeGetVersion(),
            "cuda_driver": rt.driverGetVersion(), "nvrtc": list(cp.cuda.nvrtc.getVersion()),
            "device": rt.getDeviceProperties(0)["name"].decode()}
probe("cupy", cupy_info)
def torch_info():
    import torch
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
probe("torch", torch_info)
probe("gpulstm_git", lambda: subprocess.run(["git", "describe", "--always", "--dirty"],
      capture_output=True, text=True).stdout.strip() or "unknown")
v["gpulstm_commit_env"] = __import__("os").environ.get("GPULSTM_COMMIT", "unset")
probe("backends", lambda: __import__("gpulstm").available_backends())
json.dump(v, open(sys.argv[1], "w"), indent=1, default=str)
print(json.dumps(v, indent=1, default=str))
PY
}

step_tests() {
  "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml "$OUT/pytest-gpu.xml" tests
}

find_sanitizer() {
  local c
  c=$(command -v compute-sanitizer 2>/dev/null) && { echo "$c"; return 0; }
  for c in /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer \
           /opt/nvidia/*/compute-sanitizer/compute-sanitizer /opt/cuda*/bin/compute-sanitizer; do
    [[ -x $c ]] && { echo "$c"; return 0; }
  done
  return 1
}

sanitize() {
  local tool=$1 cs
  if ! cs=$(find_sanitizer); then
    echo "STEP-SKIPPED: compute-sanitizer not found (PATH, /usr/local/cuda*/bin, /opt/nvidia)"
    return 0
  fi
  echo "$cs --tool $tool"
  "$cs" --tool "$tool" --error-exitcode 1 "$PY" tools/gpu_sanitize_case.py
}
step_memcheck() { sanitize memcheck; }
step_racecheck() { sanitize racecheck; }

step_asv() {
  local t=$(( STEP_LIMIT - 10 )); (( t < 20 )) && t=20
  "$PY" tools/gpu_asv.py "$OUT/asv-results" --budget-s "$t"
}

step_speed() {
  local t=$(( STEP_LIMIT - 40 )); (( t > 150 )) && t=150; (( t < 10 )) && t=10
  "$PY" tools/gpu_speed.py "$OUT" --budget-s "$t" --reps 3
}

step_algos() {
  local t=$(( STEP_LIMIT - 20 )); (( t < 10 )) && t=10
  "$PY" tools/gpu_algos.py "$OUT" --budget-s "$t" --reps 3
}

# name:time limit in seconds[:seconds reserved against the steps before it], in order
STEPS=(setup:120 env:60 tests:200 memcheck:100 racecheck:100 asv:200:150 speed:200:30 algos:150:60)

# driver -----------------------------------------------------------------------------------
printf "step\tstatus\tseconds\n" > "$OUT/steps.tsv"
log "output in $OUT; python $PY; budget ${BUDGET}s"
reserve_after() {  # reserve_after I: the seconds reserved by the steps after STEPS[I]
  local j r=0 f
  for (( j = $1 + 1; j < ${#STEPS[@]}; j++ )); do
    IFS=: read -r _ _ f <<< "${STEPS[j]}"; r=$(( r + ${f:-0} ))
  done
  echo $r
}
for i in "${!STEPS[@]}"; do
  IFS=: read -r name limit _ <<< "${STEPS[i]}"
  left=$(( DEADLINE - SECONDS - $(reserve_after "$i") ))
  if (( left < 20 )); then
    log "$name: SKIPPED (time budget spent)"; printf "%s\tskipped-budget\t0\n" "$name" >> "$OUT/steps.tsv"; continue
  fi
  (( limit > left )) && limit=$left
  log "$name (limit ${limit}s)"
  start=$SECONDS
  export -f "step_$name" log find_sanitizer sanitize 2>/dev/null
  export ROOT OUT WHEELS PY STEP_LIMIT=$limit
  timeout --kill-after=10 "$limit" bash -c "step_$name" > "$OUT/$name.log" 2>&1
  rc=$?
  secs=$(( SECONDS - start ))
  if (( rc == 0 )); then status=ok; elif (( rc == 124 || rc == 137 )); then status=timeout; else status="failed($rc)"; fi
  [[ $status == ok ]] || FAILED=1
  grep -q "^STEP-SKIPPED" "$OUT/$name.log" && status="skipped: $(grep -m1 "^STEP-SKIPPED" "$OUT/$name.log" | cut -c15-)"
  printf "%s\t%s\t%s\n" "$name" "$status" "$secs" >> "$OUT/steps.tsv"
  tail -n 15 "$OUT/$name.log"
  log "$name: $status in ${secs}s"
done
echo
column -t -s $'\t' "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
exit $FAILED
