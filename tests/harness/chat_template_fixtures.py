"""Tokenizers with the published chat templates of Llama-3-Instruct, Qwen2.5-Instruct and SmolLM2 (test helper).

`tests/fixtures/chat_templates/<model>.json` holds what the model's published tokenizer_config.json says
(chat_template, bos/eos, special tokens), the pre-tokenizer of its tokenizer.json, its generation_config.json
and the LLaMA-Factory template its training config names. `fixture_tokenizer_dir` puts that on a stand-in
vocabulary (the embedded SmolLM2's BPE, the model's special tokens added, its pre-tokenizer swapped in), so
rendering and token boundaries behave like the real tokenizer's without a model hub.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parents[1] / "fixtures" / "chat_templates"
MODELS = ("Meta-Llama-3-8B-Instruct", "Qwen2.5-7B-Instruct", "SmolLM2-135M-Instruct")


def fixture(name: str) -> dict[str, Any]:
    """The fixture of one published model (see the module docstring)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def fixture_tokenizer_dir(name: str, out_dir: Path, vocabulary_dir: Path) -> Path:
    """A tokenizer directory (tokenizer.json, tokenizer_config.json, chat template, generation_config.json)
    for the published model `name` on the vocabulary of `vocabulary_dir`; returns `out_dir`."""
    from transformers import AutoTokenizer

    data = fixture(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = AutoTokenizer.from_pretrained(str(vocabulary_dir))
    if data.get("pre_tokenizer"):
        spec = json.loads(base.backend_tokenizer.to_str())
        spec["pre_tokenizer"] = data["pre_tokenizer"]
        from tokenizers import Tokenizer

        base.backend_tokenizer.pre_tokenizer = Tokenizer.from_str(json.dumps(spec)).pre_tokenizer
    base.add_tokens([token for token in data["special_tokens"] if token not in base.get_vocab()], special_tokens=True)
    if data.get("bos_token"):
        base.bos_token = data["bos_token"]
    base.eos_token = data["eos_token"]
    base.chat_template = data["chat_template"]
    base.save_pretrained(str(out_dir))
    (out_dir / "generation_config.json").write_text(json.dumps(data["generation_config"], indent=1))
    return out_dir
