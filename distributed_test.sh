#!/usr/bin/env bash
# Launcher: ./distributed_test.sh MODEL DATASET METHOD PROC_PER_GPU TMUX_START_ID [key=value ...]
#           ./distributed_test.sh status [TMUX_START_ID] | stop [TMUX_START_ID] | --help
# All logic lives in densepolicy/launcher/ (python -m densepolicy.launcher).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${DENSEPOLICY_MAIN_PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "error: $PY not found; run 'make setup' first" >&2
  exit 4
fi
cd "$ROOT"
exec "$PY" -m densepolicy.launcher "$@"
