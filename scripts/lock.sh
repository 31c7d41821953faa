#!/usr/bin/env bash
# `make lock`: compile every venv's lock file (exact versions + sha256 of every file) from its requirements.
# `make setup` installs the locks exactly (uv pip sync) and refuses a lock whose inputs changed since.
#   requirements.lock            .venv (CPU: torch 2.13.0+cpu from the pip find-links folder)  <- requirements.txt
#   requirements-serve-cpu.lock  .venv-serve, SERVE=cpu                                       <- requirements-serve-cpu.txt
#   requirements-serve-gpu.lock  .venv-serve, SERVE=gpu (CUDA wheels from the index)          <- requirements-serve-gpu.txt
#   requirements-train-gpu.lock  .venv, TRAIN=gpu (CUDA torch + DeepSpeed)       <- requirements.txt + requirements-train-gpu.txt
# All resolved for CPython 3.11 on linux x86_64 (manylinux_2_28), from this machine's pip indexes
# (scripts/uv_common.sh reads pip's configuration). `scripts/lock.sh NAME.lock ...` compiles only those.
# Versions already in a lock are kept unless the requirements need others; UPGRADE=1 resolves afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
CACHE=$ROOT/.cache
mkdir -p "$CACHE"
source scripts/uv_common.sh
ensure_uv

# lock name -> "inputs|sources|packages left out (installed by no one: see below)"
# torchvision / torchcodec from PyPI are CUDA-linked and break `import transformers` beside torch+cpu.
declare -A LOCKS=(
  [requirements.lock]="requirements.txt|all|torchvision"
  [requirements-serve-cpu.lock]="requirements-serve-cpu.txt|all|torchvision torchcodec"
  [requirements-serve-gpu.lock]="requirements-serve-gpu.txt|indexes|"
  [requirements-train-gpu.lock]="requirements.txt requirements-train-gpu.txt|indexes|"
)

inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }

# uv takes a package's hashes from the first source that has it (or from the lock it updates), so a package
# with a vendored wheel would get the wheel's hash or the sdist's: the lock gets both, so that
# DENSEPOLICY_VENDOR_WHEELS=0 (build from the sdist) installs the same lock.
add_sdist_hashes() {  # LOCK all|indexes
  local pins
  pins=$(for w in vendor/wheels/*.whl; do
           b=$(basename "$w"); n=${b%%-*}; v=${b#*-}; v=${v%%-*}
           grep -qi "^${n//_/[-_]}==$v " "$1" && echo "${n//_/-}==$v"
         done) || true
  [ -n "$pins" ] || return 0
  # shellcheck disable=SC2046
  DENSEPOLICY_VENDOR_WHEELS=0 "$UV" pip compile --quiet --no-deps - $(DENSEPOLICY_VENDOR_WHEELS=0 pip_sources "$2") \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header --no-annotate \
    -o "$1.sdist" <<<"$pins"
  for w in vendor/wheels/*.whl; do  # and the vendored wheels' own hashes (uv keeps a lock's old hashes)
    b=$(basename "$w"); v=${b#*-}
    printf '%s==%s \\\n    --hash=sha256:%s\n' "${b%%-*}" "${v%%-*}" "$(sha256sum "$w" | cut -d' ' -f1)"
  done | sed 's/_/-/g' >>"$1.sdist"
  "$PYTHON" - "$1" "$1.sdist" <<'PY'
import re, sys
lock, extra = (open(p).read() for p in sys.argv[1:])
for block in re.findall(r"^(\S+==\S+) \\\n((?:    --hash=\S+(?: \\)?\n)+)", extra, re.M):
    pin, hashes = block
    m = re.search(rf"^{re.escape(pin)} \\\n((?:    --hash=\S+(?: \\)?\n)+)", lock, re.M | re.I)
    have = re.findall(r"--hash=(\S+?)(?: \\)?\n", m.group(1))
    every = have + [h for h in re.findall(r"--hash=(\S+?)(?: \\)?\n", hashes) if h not in have]
    lines = " \\\n".join(f"    --hash={h}" for h in every) + "\n"
    lock = lock[:m.start(1)] + lines + lock[m.end(1):]
open(sys.argv[1], "w").write(lock)
PY
  rm -f "$1.sdist"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(requirements.lock requirements-serve-cpu.lock requirements-serve-gpu.lock
                                 requirements-train-gpu.lock)
for name in "${names[@]}"; do
  spec=${LOCKS[$name]:?"unknown lock $name (known: ${!LOCKS[*]})"}
  IFS='|' read -r inputs sources skip <<<"$spec"
  no_emit=()
  for pkg in $skip; do no_emit+=(--no-emit-package "$pkg"); done
  echo "[lock] $name <- $inputs"
  rm -f "$name.tmp"
  if [ "${UPGRADE:-0}" = 1 ]; then upgrade=(--upgrade); else upgrade=(); [ ! -f "$name" ] || cp "$name" "$name.tmp"; fi
  # shellcheck disable=SC2046,SC2086
  "$UV" pip compile --quiet $inputs $(pip_sources "$sources") --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header "${no_emit[@]}" "${upgrade[@]}" -o "$name.tmp"
  add_sdist_hashes "$name.tmp" "$sources"
  {
    echo "# Lock file for $inputs: every package, exact version and sha256 hashes. Do not edit: \`make lock\`."
    echo "# Resolved by uv $UV_VERSION for CPython 3.11, linux x86_64 (manylinux_2_28); installed by scripts/setup.sh."
    [ -z "$skip" ] || echo "# Left out on purpose (CUDA-linked builds that break torch+cpu): $skip"
    echo "# inputs-sha256: $(inputs_hash $inputs)"
    cat "$name.tmp"
  } >"$name"
  rm -f "$name.tmp"
done
