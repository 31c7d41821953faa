#!/usr/bin/env bash
# `make setup-slurm` (run by `make test`): Debian's slurm-wlm + munge for the Slurm tests
# (tests/harness/slurm_local.py starts a throw-away single-node cluster from these binaries; it installs nothing).
# Idempotent: the check is the binaries themselves, so nothing happens when they are all there.
# As root it installs them with apt-get; as another user it says so and exits 0 (the Slurm tests then
# skip, naming this step). `make test` sets DENSEPOLICY_REQUIRE_SLURM=1 as root, so there they fail instead.
set -euo pipefail
BINARIES=(munged slurmctld slurmd sbatch squeue scancel sinfo srun)
missing=()
for b in "${BINARIES[@]}"; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || [ -x "/sbin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -eq 0 ]; then echo "[setup-slurm] slurm-wlm + munge up to date"; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "[setup-slurm] slurm-wlm/munge missing (${missing[*]}) and installing them needs root:"
  echo "[setup-slurm]   sudo make setup-slurm   (until then the Slurm tests skip)"
  exit 0
fi
echo "[setup-slurm] installing slurm-wlm + munge (apt-get; missing: ${missing[*]})"
START=$SECONDS
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "[setup-slurm] done ($((SECONDS - START)) s)"
