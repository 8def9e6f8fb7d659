#!/usr/bin/env bash
# tools/download_wheels.sh [DEST]  (make wheels)
#
# Fill a local wheel folder (default: wheels/) for tools/gpu_check.sh, which runs on GPU
# machines without network access and installs from that folder only what is missing there.
# Downloads CuPy for the CUDA major version and its dependencies, plus pytest, as binary
# wheels for CPython on manylinux x86_64.
#
# Environment:
#   GPULSTM_WHEEL_PY      CPython version of the GPU machine, e.g. 311 or 312   (default 311)
#   GPULSTM_CUDA_MAJOR    12 or 13: cupy-cuda12x or cupy-cuda13x                 (default 12)
#   GPULSTM_WHEEL_CTK=1   also fetch the CUDA libraries as wheels (cupy's "ctk" extra: NVRTC,
#                         cuBLAS, ...; about 1 GB) for machines without a CUDA toolkit
#   PYTHON                the interpreter whose pip downloads              (default python3)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/wheels}
PY=${PYTHON:-python3}
PYVER=${GPULSTM_WHEEL_PY:-311}
CUDA=${GPULSTM_CUDA_MAJOR:-12}
CUPY="cupy-cuda${CUDA}x>=13"
[[ ${GPULSTM_WHEEL_CTK:-0} == 1 ]] && CUPY="cupy-cuda${CUDA}x[ctk]>=13"
mkdir -p "$DEST"
"$PY" -m pip download --only-binary=:all: --implementation cp --python-version "$PYVER" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$DEST" "$CUPY" "pytest>=8"
echo "wheels for cp$PYVER / CUDA $CUDA in $DEST:"
ls -1 "$DEST"
