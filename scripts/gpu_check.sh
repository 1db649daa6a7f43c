#!/usr/bin/env bash
# The first GPU's measurements in one command (issue 20): SD-1.5 at 512 px, learning speed per method,
# generation speed and memory per phase of learning, written as gpu_check.json (lifelong/bench/gpu_check.py).
#
# The GPU machine has torch with CUDA, transformers, accelerate and safetensors, but no diffusers and no
# network: what it lacks travels as wheels in the git-ignored folder wheels/. Fill it once, here:
#   scripts/gpu_check.sh --download
# Then, on the GPU machine, in the repository root (with the device tool: carry ["wheels"], OUT=$OUT):
#   scripts/gpu_check.sh "$OUT"                    # < 8 min on an H100/H200; later items skip past 390 s
# Dry run on any machine, on the tiny test pipeline (PYTHON: the interpreter that has the packages):
#   PYTHON=.venv/bin/python scripts/gpu_check.sh /tmp/gpu-check --tiny
# Then: python -m lifelong.bench.gpu_check --report OUT/gpu_check.json   (the tables for docs/BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=wheels

if [ "${1:-}" = "--download" ]; then
  # pure-Python wheels, pinned as requirements.txt pins them; importlib_metadata is a need of diffusers
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
    diffusers==0.42.1 peft==0.21.2 importlib_metadata==10.2.0
  exit 0
fi

OUT_DIR=${1:-runs/gpu-check}
shift || true
if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "diffusers is missing and $WHEELS/ holds no wheels: run scripts/gpu_check.sh --download first" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/lifelong-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/lifelong-site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$OUT_DIR"
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
PYTHONUNBUFFERED=1 "$PYTHON" -m lifelong.bench.gpu_check --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/log.txt"
