#!/usr/bin/env bash
# tools/download_wheels.sh [DEST]  (make wheels)
#
# Fill a local wheel folder (default: wheels/) for tools/gpu_check.sh, which runs on GPU
# machines without network access and installs from that folder only what is missing there.
# By default it fetches only what the lent GPU machines lack (their image has Python 3.12 with
# CuPy 14 for CUDA 13, PyTorch, numpy, pytest and hypothesis, but no asv): asv and the
# packages it needs (asv-runner, json5, tabulate, virtualenv, ...; about 8 MB), as binary
# wheels for CPython on manylinux x86_64. The folder travels to the GPU machine with the
# working tree (the device tool's `carry`, 64 MiB in all), so keep it small: the total size
# is printed at the end, with a warning over 48 MiB (wheels left from an earlier download
# count too; empty the folder first if in doubt).
#
# Environment:
#   GPULSTM_WHEEL_PY      CPython version of the GPU machine, e.g. 312 or 3.12     (default 312)
#   GPULSTM_WHEEL_CUPY=1  also fetch CuPy for GPULSTM_CUDA_MAJOR (about 100 MB: too big to
#                         carry to the lent machines, which have CuPy; for other machines)
#   GPULSTM_CUDA_MAJOR    12 or 13: cupy-cuda12x or cupy-cuda13x                   (default 13)
#   GPULSTM_WHEEL_CTK=1   with GPULSTM_WHEEL_CUPY=1: also the CUDA libraries as wheels (cupy's
#                         "ctk" extra: NVRTC, cuBLAS, ...; about 1 GB) for machines without a
#                         CUDA toolkit
#   GPULSTM_WHEEL_TEST=1  also fetch pytest and hypothesis (the test step's needs)
#   GPULSTM_WHEELS        the wheel folder when DEST is not given                 (default wheels/)
#   PYTHON                the interpreter whose pip downloads                    (default python3)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-${GPULSTM_WHEELS:-$ROOT/wheels}}
PY=${PYTHON:-python3}
PYVER=${GPULSTM_WHEEL_PY:-312}
CUDA=${GPULSTM_CUDA_MAJOR:-13}
PKGS=("asv>=0.6.4,<0.7")
[[ ${GPULSTM_WHEEL_TEST:-0} == 1 ]] && PKGS+=("pytest>=8" "hypothesis>=6.100")
if [[ ${GPULSTM_WHEEL_CUPY:-0} == 1 ]]; then
  if [[ ${GPULSTM_WHEEL_CTK:-0} == 1 ]]; then PKGS+=("cupy-cuda${CUDA}x[ctk]>=13")
  else PKGS+=("cupy-cuda${CUDA}x>=13"); fi
elif [[ ${GPULSTM_WHEEL_CTK:-0} == 1 ]]; then
  echo "download_wheels: GPULSTM_WHEEL_CTK=1 needs GPULSTM_WHEEL_CUPY=1; ignored" >&2
fi
mkdir -p "$DEST"
echo "download_wheels: ${PKGS[*]} for cp$PYVER manylinux x86_64 into $DEST"
"$PY" -m pip download --only-binary=:all: --implementation cp --python-version "$PYVER" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "${PKGS[@]}"
echo "wheels for cp$PYVER in $DEST:"
ls -1 "$DEST"
kib=$(du -sk "$DEST" | cut -f1)
echo "download_wheels: total $(( (kib + 1023) / 1024 )) MiB (${kib} KiB) in $DEST"
if (( kib > 48 * 1024 )); then
  echo "download_wheels: WARNING over 48 MiB: the device tool carries at most 64 MiB with the" \
       "working tree; remove what the GPU machine has (CuPy, nvidia-*) or old wheels" >&2
fi
