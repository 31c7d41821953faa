"""A tiny random-weight Llama with the embedded model's tokenizer and chat template, built on the spot.

For checks that need a real training run but not a real model (the GPU self-check, the learning-rate
schedule test): the architecture and tokenizer come from models/SmolLM2-135M-Instruct, the sizes are
shrunk (hidden 128, 2 layers, 4 heads, 2 KV heads by default) and the weights are random (seeded).

    build_tiny_model(tmp / "tiny")            # -> a model directory LLaMA-Factory and vLLM can load
    build_tiny_model(tmp / "l3", chat_style="llama3")   # the same vocabulary speaking Llama-3-Instruct's chat format

`chat_style="llama3"` adds Llama-3's special tokens to the tokenizer (<|begin_of_text|> as BOS, <|eot_id|> as EOS)
and gives it Meta-Llama-3-8B-Instruct's published chat template (which trims every message), so training with
LLaMA-Factory's `llama3` template and serving with vLLM meet the format the paper's model uses.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from densepolicy.paths import embedded_model_dir

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
"""chat_template of Meta-Llama-3-8B-Instruct's tokenizer_config.json (as published)."""
LLAMA3_PRETOKENIZER_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+")
"""Meta-Llama-3's pre-tokenizer split (tokenizer.json). It keeps a run of newlines in one piece, so "\n\nThought"
tokenizes like "\n\n" + "Thought": a whole conversation (what vLLM renders and encodes) and LLaMA-Factory's
message-by-message encoding then give the same token ids, as they do for the real Llama-3. SmolLM2's GPT-2 split
would cut "\n" + "\nThought" and make the two differ at every turn boundary for a reason no real model has."""
LLAMA3_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                         "<|eot_id|>")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def build_tiny_model(out_dir: str | Path, base_dir: str | Path | None = None, hidden_size: int = 128,
                     layers: int = 2, heads: int = 4, kv_heads: int = 2, dtype: str = "float32",
                     seed: int = 0, chat_style: str = "base") -> Path:
    """Write a random-weight Llama of the given sizes to `out_dir` (which must not exist) and return it.

    `base_dir` (default: the embedded model) gives config.json, the tokenizer and the chat template.
    `dtype` is "float32" (CPU training) or "bfloat16" (GPU). `chat_style` "base" keeps the base model's chat
    format; "llama3" switches to Llama-3-Instruct's (see the module docstring).
    """
    if chat_style not in ("base", "llama3"):
        raise ValueError(f"chat_style must be 'base' or 'llama3', got {chat_style!r}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = Path(base_dir) if base_dir is not None else embedded_model_dir()
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; build_tiny_model never overwrites")
    config = AutoConfig.from_pretrained(str(base))
    tokenizer = None
    if chat_style == "llama3":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(base))
        tokenizer.add_tokens([t for t in LLAMA3_SPECIAL_TOKENS if t not in tokenizer.get_vocab()], special_tokens=True)
        tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
        tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
        _use_llama3_pretokenizer(tokenizer)
        config.vocab_size = max(config.vocab_size, len(tokenizer))
        config.bos_token_id = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
        config.eos_token_id = tokenizer.convert_tokens_to_ids("<|eot_id|>")
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
    if tokenizer is None:
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, out / name)
    else:  # the Llama-3 tokenizer files; generation stops at <|eot_id|> as Llama-3-Instruct's does
        tokenizer.save_pretrained(str(out))
        generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (out / "densepolicy_tiny_model.json").write_text(json.dumps(
        {"base": str(base), "hidden_size": hidden_size, "layers": layers, "heads": heads, "kv_heads": kv_heads,
         "dtype": dtype, "seed": seed, "chat_style": chat_style, "weights": "random"}, indent=2) + "\n")
    return out


def _use_llama3_pretokenizer(tokenizer) -> None:
    """Give a byte-level BPE tokenizer Llama-3's pre-tokenizer split (the vocabulary and merges stay)."""
    from tokenizers import Regex, pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PRETOKENIZER_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
