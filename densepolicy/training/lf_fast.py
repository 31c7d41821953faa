"""A LLaMA-Factory plugin that makes CPU training cheaper without changing what is computed.

DensePolicy's DPO pairs are sibling agent steps: chosen and rejected share a ~1,500-token prompt (task +
history) and differ in the last ~30 tokens. Stock LLaMA-Factory (0.9.5) runs the policy forward+backward and
the frozen reference forward over both whole sequences, computes logits over the 49,152-word vocabulary at
every position although only the answer tokens are scored, and runs the reference again every epoch. Three
levers, each exact (same log-probabilities, loss and gradients up to float rounding):

``shared_prefix``   DPO: for each pair, run the longest common token prefix of chosen and rejected once
                    (``use_cache=True``), then both suffixes as a batch of two on that key/value cache;
                    gradients flow through the cache into the prefix. Needs gradient checkpointing off
                    (``disable_gradient_checkpointing: true``: transformers drops the cache under it).
``scored_logits``   DPO and SFT: apply ``lm_head`` only at positions whose next-token label is scored
                    (transformers' own ``logits_to_keep`` with a tensor of positions; SFT also passes
                    ``shift_labels``), instead of at every position.
``reference_cache`` DPO: the reference model's log-probabilities of a pair are computed on first use and
                    kept (keyed by the pair's token and label ids), so later epochs do not run it again.
                    LLaMA-Factory's trainer hard-codes TRL's ``precompute_ref_log_probs`` off.

Enabled by the DensePolicy key ``densepolicy_fast`` of a TreeDPO config (``true`` = all levers, or a list of
lever names; `densepolicy.training.train` launches ``python -m densepolicy.training.lf_fast train <yaml>``
instead of ``llamafactory-cli train <yaml>``). The launcher pops the key, patches three methods of
LLaMA-Factory's trainers (`install`) and calls LLaMA-Factory's own ``run_exp``. Anything the fast paths do
not cover falls back to the stock method: ``ld_alpha``, multimodal or packed batches, left padding,
encoder-decoder models, evaluation-mode SFT. Single process only (no torchrun / DeepSpeed).

One metric differs from stock: ``logits/chosen`` and ``logits/rejected`` average the logits of the scored
positions only (stock averages over every position, padding included).
"""
from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from densepolicy.config import ConfigError

if TYPE_CHECKING:  # for the annotations only; the functions that compute import torch themselves
    import torch

log = logging.getLogger(__name__)

KEY = "densepolicy_fast"
"""The TreeDPO config key (DensePolicy's own; LLaMA-Factory never sees it)."""
LEVERS = ("shared_prefix", "scored_logits", "reference_cache")
IGNORE_INDEX = -100
_DPO_BATCH_KEYS = {"input_ids", "attention_mask", "labels"}
_SFT_BATCH_KEYS = {"input_ids", "attention_mask", "labels"}


def levers(value: Any, source: str = "config") -> tuple[str, ...]:
    """The levers a ``densepolicy_fast`` value asks for: true → all, false/None → none, or a list (or
    comma-separated text) of names from `LEVERS`. Raises `ConfigError` naming an unknown lever."""
    if value is None or value is False:
        return ()
    if value is True:
        return LEVERS
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "yes", "on", "1", "all"):
            return LEVERS
        if low in ("false", "no", "off", "0", "", "none"):
            return ()
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{source}: key {KEY!r} expects true/false or a list of {', '.join(LEVERS)}, got {value!r}")
    unknown = [v for v in value if v not in LEVERS]
    if unknown:
        raise ConfigError(f"{source}: key {KEY!r}: unknown lever {unknown[0]!r} (known: {', '.join(LEVERS)})")
    return tuple(v for v in LEVERS if v in value)


def check_args(args: dict[str, Any], source: str = "config") -> tuple[str, ...]:
    """Validate ``densepolicy_fast`` against the rest of a LLaMA-Factory config; returns the levers.

    ``shared_prefix`` in a DPO run needs ``disable_gradient_checkpointing: true`` (gradient checkpointing
    makes transformers drop the key/value cache the suffixes are run on).
    """
    chosen = levers(args.get(KEY), source)
    stage = str(args.get("stage", "sft"))
    if "shared_prefix" in chosen and stage == "dpo" and not args.get("disable_gradient_checkpointing"):
        raise ConfigError(f"{source}: {KEY} lever 'shared_prefix' needs disable_gradient_checkpointing: true "
                          f"(under gradient checkpointing transformers drops the prompt's key/value cache)")
    return chosen


# ------------------------------------------------------------------------------------ the maths


def _scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions t (of a 1-D or [B, L] label tensor) whose next-token label is scored, as sorted 1-D
    indices (for [B, L]: the union over rows)."""
    import torch

    nxt = labels[..., 1:] != IGNORE_INDEX
    if nxt.dim() == 2:
        nxt = nxt.any(0)
    return torch.nonzero(nxt, as_tuple=False).flatten()


def _gather_logps(logits: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(sum of log p(label[t+1]) over scored t, number of scored t) per row, from `logits` [B, K, V] computed at
    `positions` [K] of rows whose labels are `labels` [B, L] (unscored positions contribute nothing)."""
    import torch

    targets = labels[:, positions + 1]
    mask = targets != IGNORE_INDEX
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    token_logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(2)).squeeze(2)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.numel(), b.numel())
    if n == 0:
        return 0
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if diff.numel() else n


def _row_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    """Lengths of right-padded rows; None when some row is not a block of ones followed by zeros."""
    lengths = attention_mask.sum(-1)
    import torch

    expected = torch.arange(attention_mask.size(1), device=attention_mask.device)[None, :] < lengths[:, None]
    if not torch.equal(attention_mask.bool(), expected):
        return None
    return [int(n) for n in lengths]


def scored_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 scored_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (sum of label log-probs, scored-token count, logits used) of a padded batch in one forward,
    with logits only at scored positions (`scored_logits`) or at all positions."""
    if scored_logits:
        positions = _scored_positions(labels)
        if positions.numel() == 0:
            positions = positions.new_zeros(1)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=positions, return_dict=True).logits
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=True).logits
        positions = _arange(input_ids.size(1) - 1, input_ids.device)
        logits = logits[:, :-1]
    logps, counts = _gather_logps(logits, positions, labels)
    return logps, counts, logits


def _arange(n: int, device: Any) -> torch.Tensor:
    import torch

    return torch.arange(n, device=device)


def shared_prefix_logps(model: Any, chosen_ids: torch.Tensor, chosen_labels: torch.Tensor,
                        rejected_ids: torch.Tensor, rejected_labels: torch.Tensor,
                        scored_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """(log-prob sums [2], scored-token counts [2], chosen logits used, rejected logits used) of one pair
    (unpadded 1-D ids and labels, chosen first): the common token prefix runs once with a key/value cache, the
    two suffixes as a batch of two on it. Gradients flow through the cache into the prefix."""
    import torch

    p = _common_prefix(chosen_ids, rejected_ids)
    p = min(p, chosen_ids.numel() - 1, rejected_ids.numel() - 1)  # each suffix keeps at least one token
    rows = [(chosen_ids, chosen_labels), (rejected_ids, rejected_labels)]
    device = chosen_ids.device
    width = max(chosen_ids.numel(), rejected_ids.numel())
    labels = torch.full((2, width), IGNORE_INDEX, dtype=chosen_labels.dtype, device=device)
    for i, (_, lab) in enumerate(rows):
        labels[i, :lab.numel()] = lab
    logps = torch.zeros(2, dtype=torch.float32, device=device)
    counts = torch.zeros(2, dtype=torch.long, device=device)
    used: tuple[list, list] = ([], [])
    past = None
    if p > 0:
        prefix_labels = labels[:, :p + 1]  # position p-1 predicts token p (the first that differs)
        if scored_logits:
            positions = _scored_positions(prefix_labels)
            keep: Any = positions if positions.numel() else 1
        else:
            positions, keep = _arange(p, device), 0
        out = model(input_ids=chosen_ids[None, :p], use_cache=True, logits_to_keep=keep, return_dict=True)
        past = out.past_key_values
        if positions.numel():
            lp, n = _gather_logps(out.logits.expand(2, -1, -1), positions, prefix_labels)
            logps, counts = logps + lp, counts + n
            used[0].append(out.logits[0].detach())
            used[1].append(out.logits[0].detach())
        past.batch_repeat_interleave(2)
    suffix_len = width - p
    ids = torch.zeros((2, suffix_len), dtype=chosen_ids.dtype, device=device)
    mask = torch.zeros((2, p + suffix_len), dtype=torch.long, device=device)
    for i, (row_ids, _) in enumerate(rows):
        ids[i, :row_ids.numel() - p] = row_ids[p:]
        mask[i, :row_ids.numel()] = 1
    suffix_labels = labels[:, p:]
    if scored_logits:
        positions = _scored_positions(suffix_labels)
        keep = positions if positions.numel() else 1
    else:
        positions, keep = _arange(suffix_len - 1, device), 0
    out = model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=past is not None,
                logits_to_keep=keep, return_dict=True)
    if positions.numel():
        logits = out.logits if scored_logits else out.logits[:, :-1]
        lp, n = _gather_logps(logits, positions, suffix_labels)
        logps, counts = logps + lp, counts + n
        used[0].append(logits[0].detach())
        used[1].append(logits[1].detach())
    return logps, counts, used[0], used[1]


def pair_key(input_ids: torch.Tensor, labels: torch.Tensor, length: int) -> bytes:
    """A digest of one (unpadded) sequence's token and label ids."""
    h = hashlib.blake2b(digest_size=16)
    h.update(input_ids[:length].cpu().numpy().tobytes())
    h.update(labels[:length].cpu().numpy().tobytes())
    return h.digest()


# --------------------------------------------------------------------------------- the patches


def _fast_dpo_supported(trainer: Any, batch: dict[str, Any], is_ref_model: bool) -> list[int] | None:
    """Row lengths when the fast DPO forward applies to this batch, else None (stock path)."""
    if set(batch) - _DPO_BATCH_KEYS or "attention_mask" not in batch:
        return None
    if getattr(trainer, "is_encoder_decoder", False):
        return None
    if getattr(trainer, "ld_alpha", None) is not None and not is_ref_model:
        return None
    return _row_lengths(batch["attention_mask"])


def install(chosen: Iterable[str] = LEVERS) -> tuple[str, ...]:
    """Patch LLaMA-Factory's `CustomDPOTrainer` (concatenated_forward, compute_reference_log_probs) and
    `CustomSeq2SeqTrainer.compute_loss` for the chosen levers; returns them. Idempotent per process."""
    chosen = tuple(v for v in LEVERS if v in set(chosen))
    import torch
    from llamafactory.train.dpo.trainer import CustomDPOTrainer
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer
    from llamafactory.train.trainer_utils import nested_detach

    stock = getattr(CustomDPOTrainer, "_densepolicy_stock", None)
    if stock is None:
        stock = {"forward": CustomDPOTrainer.concatenated_forward,
                 "reference": CustomDPOTrainer.compute_reference_log_probs,
                 "sft_loss": CustomSeq2SeqTrainer.compute_loss}
        CustomDPOTrainer._densepolicy_stock = stock
    shared = "shared_prefix" in chosen
    scored = "scored_logits" in chosen

    def concatenated_forward(self, model, batch, is_ref_model=False):
        """LLaMA-Factory's concatenated_forward with the shared-prefix / scored-logits levers."""
        lengths = _fast_dpo_supported(self, batch, is_ref_model) if (shared or scored) else None
        if lengths is None:
            return stock["forward"](self, model, batch, is_ref_model=is_ref_model)
        if self.finetuning_args.use_ref_model:
            batch = nested_detach(batch, clone=True)
        input_ids, labels = batch["input_ids"], batch["labels"]
        half = input_ids.size(0) // 2
        if shared:
            all_logps, valid, used_c, used_r = [None] * (2 * half), [None] * (2 * half), [], []
            for i in range(half):
                c, r = i, half + i
                lp, n, logits_c, logits_r = shared_prefix_logps(
                    model, input_ids[c, :lengths[c]], labels[c, :lengths[c]],
                    input_ids[r, :lengths[r]], labels[r, :lengths[r]], scored_logits=scored)
                all_logps[c], all_logps[r], valid[c], valid[r] = lp[0], lp[1], n[0], n[1]
                used_c += logits_c
                used_r += logits_r
            all_logps, valid_length = torch.stack(all_logps), torch.stack(valid)
            # metrics only (logits/chosen, logits/rejected): the logits that were computed, flattened
            chosen_logits = torch.cat([u.float().flatten() for u in used_c]) if used_c else torch.zeros(1)
            rejected_logits = torch.cat([u.float().flatten() for u in used_r]) if used_r else torch.zeros(1)
        else:
            all_logps, valid_length, logits = scored_logps(model, input_ids, batch["attention_mask"], labels,
                                                           scored_logits=True)
            chosen_logits, rejected_logits = logits.float().split(half, dim=0)
        if self.loss_type in ["ipo", "orpo", "simpo"]:
            all_logps = all_logps / valid_length
        chosen_logps, rejected_logps = all_logps.split(half, dim=0)
        chosen_length, _ = valid_length.split(half, dim=0)
        chosen_logps_avg = chosen_logps if self.loss_type in ["ipo", "orpo", "simpo"] else chosen_logps / chosen_length
        return {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps, "chosen_logits": chosen_logits,
                "rejected_logits": rejected_logits, "chosen_logps_avg": chosen_logps_avg}

    def compute_reference_log_probs(self, model, batch):
        """LLaMA-Factory's compute_reference_log_probs, computing each pair's reference log-probs once."""
        if not self.finetuning_args.use_ref_model or "attention_mask" not in batch or set(batch) - _DPO_BATCH_KEYS:
            return stock["reference"](self, model, batch)
        cache = self.__dict__.setdefault("_densepolicy_ref_cache", {})
        half = batch["input_ids"].size(0) // 2
        lengths = [int(n) for n in batch["attention_mask"].sum(-1)]
        keys = [pair_key(batch["input_ids"][i], batch["labels"][i], lengths[i])
                + pair_key(batch["input_ids"][half + i], batch["labels"][half + i], lengths[half + i])
                for i in range(half)]
        missing = [i for i, k in enumerate(keys) if k not in cache]
        if missing:
            rows = torch.tensor(missing + [half + i for i in missing], device=batch["input_ids"].device)
            sub = {k: v.index_select(0, rows) for k, v in batch.items()}
            width = int(sub["attention_mask"].sum(-1).max())
            sub = {k: v[:, :width] for k, v in sub.items()}
            ref_chosen, ref_rejected = stock["reference"](self, model, sub)
            for j, i in enumerate(missing):
                cache[keys[i]] = (ref_chosen[j].detach(), ref_rejected[j].detach())
        return (torch.stack([cache[k][0] for k in keys]), torch.stack([cache[k][1] for k in keys]))

    def compute_loss(self, model, inputs, *args, **kwargs):
        """The stock SFT loss with logits only at positions whose next-token label is scored."""
        if (not model.training or self.finetuning_args.use_asft_loss or self.compute_loss_func is not None
                or self.label_smoother is not None or "labels" not in inputs or set(inputs) - _SFT_BATCH_KEYS
                or inputs.get("attention_mask") is None or inputs["attention_mask"].dim() != 2):
            return stock["sft_loss"](self, model, inputs, *args, **kwargs)
        labels = inputs["labels"]
        positions = _scored_positions(labels)
        if positions.numel() == 0:
            return stock["sft_loss"](self, model, inputs, *args, **kwargs)
        inputs = {**inputs, "logits_to_keep": positions, "shift_labels": labels[:, positions + 1].contiguous()}
        return stock["sft_loss"](self, model, inputs, *args, **kwargs)

    CustomDPOTrainer.concatenated_forward = concatenated_forward if (shared or scored) else stock["forward"]
    CustomDPOTrainer.compute_reference_log_probs = (compute_reference_log_probs if "reference_cache" in chosen
                                                    else stock["reference"])
    CustomSeq2SeqTrainer.compute_loss = compute_loss if scored else stock["sft_loss"]
    return chosen


def uninstall() -> None:
    """Restore LLaMA-Factory's own methods (tests)."""
    install(())


# ------------------------------------------------------------------------------------ launcher


def run(config_path: str) -> None:
    """Read a LLaMA-Factory YAML, pop ``densepolicy_fast``, install its levers and run LLaMA-Factory's
    ``run_exp`` on the rest (what ``llamafactory-cli train <yaml>`` does in one process)."""
    import yaml

    args = yaml.safe_load(open(config_path, encoding="utf-8")) or {}
    chosen = check_args(args, config_path)
    args.pop(KEY, None)
    installed = install(chosen)
    print(f"[densepolicy] LLaMA-Factory plugin {__name__}: levers {', '.join(installed) or 'none'}", flush=True)
    from llamafactory.train.tuner import run_exp

    run_exp(args=args)


def main(argv: list[str] | None = None) -> int:
    """``python -m densepolicy.training.lf_fast train <yaml>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2 or argv[0] != "train" or not argv[1].endswith((".yaml", ".yml")):
        print("usage: python -m densepolicy.training.lf_fast train <config.yaml>", file=sys.stderr)
        return 2
    try:
        run(argv[1])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
