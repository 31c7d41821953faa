"""A tiny random-weight Llama with the embedded model's tokenizer and chat template, built on the spot.

For checks that need a real training run but not a real model (the GPU self-check, the learning-rate
schedule test): the architecture and tokenizer come from models/SmolLM2-135M-Instruct, the sizes are
shrunk (hidden 128, 2 layers, 4 heads, 2 KV heads by default) and the weights are random (seeded).

    build_tiny_model(tmp / "tiny")            # -> a model directory LLaMA-Factory and vLLM can load
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from densepolicy.paths import embedded_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def build_tiny_model(out_dir: str | Path, base_dir: str | Path | None = None, hidden_size: int = 128,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, dtype: str = "float32",
                     seed: int = 0) -> Path:
    """Write a random-weight Llama of the given sizes to `out_dir` (which must not exist) and return it.

    `base_dir` (default: the embedded model) gives config.json, the tokenizer and the chat template.
    `dtype` is "float32" (CPU training) or "bfloat16" (GPU).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = Path(base_dir) if base_dir is not None else embedded_model_dir()
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; build_tiny_model never overwrites")
    config = AutoConfig.from_pretrained(str(base))
    config.hidden_size = hidden_size
    config.intermediate_size = hidden_size * 2
    config.num_hidden_layers = layers
    config.num_attention_heads = heads
    config.num_key_value_heads = kv_heads
    if hasattr(config, "head_dim"):
        config.head_dim = hidden_size // heads
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one tiny shard: no "Writing model shards" bar in reports
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, out / name)
    (out / "densepolicy_tiny_model.json").write_text(json.dumps(
        {"base": str(base), "hidden_size": hidden_size, "layers": layers, "heads": heads, "kv_heads": kv_heads,
         "dtype": dtype, "seed": seed, "weights": "random"}, indent=2) + "\n")
    return out
