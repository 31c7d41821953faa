# Sourced by scripts/setup.sh and scripts/lock.sh: the pinned uv and the package sources it uses.
#   ensure_uv            installs uv==$UV_VERSION into .cache/uv-$UV_VERSION (pip, once) and sets $UV
#   pip_sources [all|indexes]  prints uv options for the index / extra indexes / find-links of this
#                        machine's pip configuration (uv does not read pip.conf); `indexes` leaves out
#                        pip's find-links (the GPU locks: a find-links folder may hold the CPU build of torch)
# Needs ROOT, CACHE and PYTHON set by the caller.
UV_VERSION=0.13.9
# pip's choice among all indexes (best version wins), not uv's default "first index that has the name";
# the lock files pin every version and hash, so this only matters to `make lock`.
UV_INDEX_STRATEGY=${UV_INDEX_STRATEGY:-unsafe-best-match}
export UV_INDEX_STRATEGY

ensure_uv() {
  local dir="$CACHE/uv-$UV_VERSION"
  UV="$dir/bin/uv"
  if [ -x "$UV" ] && [ "$("$UV" --version 2>/dev/null | cut -d' ' -f2)" = "$UV_VERSION" ]; then return; fi
  echo "[setup] installing uv==$UV_VERSION into $dir"
  rm -rf "$dir"
  # uv's wheel is one static binary: unpacked into $dir (bin/uv), no venv needed; a venv if pip refuses --target
  "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" \
      "uv==$UV_VERSION" 2>&1 | grep -v "^WARNING: Location .* is ignored" || true
  if [ ! -x "$UV" ]; then
    rm -rf "$dir" && "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" 2>&1 \
      | grep -v "^WARNING: Location .* is ignored" || true
  fi
  [ -x "$UV" ] || { echo "[setup] ERROR: uv==$UV_VERSION did not install into $dir" >&2; exit 1; }
}

# vendor/wheels: wheels built here from the PyPI sdists that only come as sdists and take minutes of C/C++
# (fast-downward-textworld, jericho); the locks hold both hashes, so DENSEPOLICY_VENDOR_WHEELS=0 builds them.
pip_sources() {
  if [ "${DENSEPOLICY_VENDOR_WHEELS:-1}" != 0 ]; then
    printf -- '--find-links %s ' "$ROOT/vendor/wheels"
    # uv would take the index's sdist of the same version; wheels only for these, so the vendored one is used
    for w in "$ROOT"/vendor/wheels/*.whl; do b=$(basename "$w"); printf -- '--only-binary %s ' "${b%%-*}"; done
  fi
  "$PYTHON" - "${1:-all}" <<'PY'
import subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
index, extra, links = {}, [], []
rank = {":env:": 0, "install": 1, "global": 2}  # pip: environment first, then [install], then [global]
for line in out.splitlines():
    key, _, value = line.partition("=")
    section, _, name = key.rpartition(".")
    if section not in rank or not value:
        continue
    values = value.strip().strip("'\"").split()
    if name == "index-url":
        index.setdefault(rank[section], values[0])
    elif name == "extra-index-url":
        extra += [v for v in values if v not in extra]
    elif name == "find-links":
        links += [v for v in values if v not in links]
args = []
if index:
    args += ["--index-url", index[min(index)]]
for url in extra:
    args += ["--extra-index-url", url]
if sys.argv[1] == "all":
    for link in links:
        args += ["--find-links", link]
print(" ".join(args))
PY
}
