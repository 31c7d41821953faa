"""Convert a GGUF chat model into a Hugging Face safetensors directory.

Usage: python scripts/convert_gguf.py SRC_DIR GGUF_NAME OUT_DIR

Runs in the serving venv (transformers 5.19): transformers 5.6 converts the SmolLM2
tokenizer wrongly (eos becomes <|im_start|>), so the result is checked before it is kept.
"""
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def convert(src_dir: str, gguf_name: str, out_dir: str) -> None:
    """Dequantize `src_dir/gguf_name` to fp32 safetensors + tokenizer + chat template in `out_dir`."""
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # weights are already dequantized; the stale quantizer blocks saving
        quantizer.remove_quantization_config(model)
    # Chat-tuned: generation must stop at the end-of-turn token.
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    check(out_dir)


def check(out_dir: str) -> None:
    """Fail loudly if the saved tokenizer lost its EOS or chat template."""
    tok = AutoTokenizer.from_pretrained(out_dir)
    if tok.eos_token != "<|im_end|>":
        sys.exit(f"convert_gguf: eos_token is {tok.eos_token!r}, expected '<|im_end|>' in {out_dir}")
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    if not text.endswith("<|im_start|>assistant\n"):
        sys.exit(f"convert_gguf: unexpected chat template output {text!r} in {out_dir}")
    print(f"convert_gguf: wrote {out_dir} (eos {tok.eos_token}, {len(tok)} tokens)")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    Path(sys.argv[3]).mkdir(parents=True, exist_ok=True)
    convert(*sys.argv[1:])
