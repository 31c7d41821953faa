"""The LLaMA-Factory plugin `densepolicy.training.lf_fast`: its fast DPO and SFT paths compute what stock
LLaMA-Factory computes (log-probabilities, loss, gradients), the reference model runs once per pair, and
train.py launches through it only when a config asks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from densepolicy.config import ConfigError
from densepolicy.paths import embedded_model_dir
from densepolicy.training import lf_fast
from densepolicy.training.train import build_train_args, check_servable, train, train_command
from tests.harness.treedpo_helpers import TINY_DPO_OVERRIDES, write_dataset

REL = 1e-5


@pytest.fixture(autouse=True)
def stock_llamafactory():
    """Every test starts and ends with LLaMA-Factory's own trainer methods."""
    yield
    try:
        lf_fast.uninstall()
    except ImportError:
        pass


# ------------------------------------------------------------------------------ settings


def test_lever_values():
    assert lf_fast.levers(True) == lf_fast.LEVERS and lf_fast.levers("all") == lf_fast.LEVERS
    assert lf_fast.levers(False) == () and lf_fast.levers(None) == ()
    assert lf_fast.levers(["reference_cache", "scored_logits"]) == ("scored_logits", "reference_cache")
    assert lf_fast.levers("shared_prefix,scored_logits") == ("shared_prefix", "scored_logits")
    with pytest.raises(ConfigError, match="unknown lever 'prefix'"):
        lf_fast.levers(["prefix"])


def test_shared_prefix_refuses_gradient_checkpointing():
    with pytest.raises(ConfigError, match="disable_gradient_checkpointing"):
        lf_fast.check_args({"stage": "dpo", "densepolicy_fast": True})
    assert lf_fast.check_args({"stage": "dpo", "densepolicy_fast": True, "disable_gradient_checkpointing": True})
    assert lf_fast.check_args({"stage": "sft", "densepolicy_fast": True}) == lf_fast.LEVERS  # no cache in SFT


def test_train_launches_through_the_plugin_only_when_asked(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, "tiny_tree_dpo")
    known = {"model_name_or_path", "stage", "do_train", "finetuning_type", "pref_beta", "pref_loss", "pref_ftx",
             "dataset_dir", "template", "default_system", "cutoff_len", "max_samples", "overwrite_cache",
             "preprocessing_num_workers", "dataloader_num_workers", "logging_steps", "save_strategy", "plot_loss",
             "report_to", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
             "max_steps", "lr_scheduler_type", "bf16", "fp16", "seed", "dataset", "output_dir",
             "disable_gradient_checkpointing"}

    def build(*overrides):
        return build_train_args("cpu_tiny", dataset="tiny_tree_dpo", model=embedded_model_dir(), dataset_dir=data,
                                overrides=list(overrides), known_keys=known)

    fast = build("densepolicy_fast=[scored_logits]")
    assert fast["densepolicy_fast"] == ["scored_logits"]
    command = train_command(fast, tmp_path / "train_config.yaml", {})
    assert command[1:] == ["-m", "densepolicy.training.lf_fast", "train", str(tmp_path / "train_config.yaml")]
    stock = build("densepolicy_fast=false")
    assert "densepolicy_fast" not in stock  # llamafactory-cli would refuse the key
    assert train_command(stock, tmp_path / "t.yaml", {})[1:] == ["train", str(tmp_path / "t.yaml")]
    with pytest.raises(ConfigError, match="runs one process only"):
        train_command(fast, tmp_path / "t.yaml", {"FORCE_TORCHRUN": "1"})
    with pytest.raises(ConfigError, match="disable_gradient_checkpointing"):
        build("densepolicy_fast=true", "disable_gradient_checkpointing=false")


# ------------------------------------------------------------------------------ equivalence with stock


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama (policy) and a perturbed copy (reference), the embedded model's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from densepolicy.testing.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("lf_fast") / "tiny")
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return {"path": path, "policy": policy, "ref": ref, "tokenizer": AutoTokenizer.from_pretrained(path)}


def pairwise_batch(shapes, seed=1):
    """A batch as LLaMA-Factory's PairwiseDataCollatorWithPadding makes it: chosen rows then rejected rows,
    right padding to a multiple of 8, prompt labels masked. `shapes`: (prompt, shared answer start, chosen
    tail, rejected tail) token counts per pair."""
    import torch

    chosen, rejected = [], []
    for prompt, shared, c, r in shapes:  # the same shape gives the same tokens in any batch
        gen = torch.Generator().manual_seed(seed + 7919 * prompt + 104729 * shared + 31 * c + r)
        head = torch.randint(5, 2000, (prompt + shared,), generator=gen)
        for rows, tail in ((chosen, c), (rejected, r)):
            ids = torch.cat([head, torch.randint(5, 2000, (tail,), generator=gen)])
            labels = ids.clone()
            labels[:prompt] = -100
            rows.append((ids, labels))
    rows = chosen + rejected
    width = -(-max(len(ids) for ids, _ in rows) // 8) * 8
    batch = {"input_ids": torch.zeros(len(rows), width, dtype=torch.long),
             "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
             "labels": torch.full((len(rows), width), -100, dtype=torch.long)}
    for i, (ids, labels) in enumerate(rows):
        batch["input_ids"][i, :len(ids)] = ids
        batch["attention_mask"][i, :len(ids)] = 1
        batch["labels"][i, :len(ids)] = labels
    return batch


def dpo_trainer(tiny, tmp_path, **finetuning):
    from llamafactory.hparams import FinetuningArguments
    from llamafactory.train.dpo.trainer import CustomDPOTrainer
    from transformers import Seq2SeqTrainingArguments

    args = dict(stage="dpo", finetuning_type="full", pref_beta=0.1, pref_loss="sigmoid", pref_ftx=0.0)
    args.update(finetuning)
    return CustomDPOTrainer(model=tiny["policy"], ref_model=tiny["ref"], finetuning_args=FinetuningArguments(**args),
                            processor=None, tokenizer=tiny["tokenizer"],
                            args=Seq2SeqTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none",
                                                          use_cpu=True))


def loss_and_grads(trainer, model, batch):
    import torch

    model.zero_grad(set_to_none=True)
    loss, metrics = trainer.get_batch_loss_metrics(model, {k: v.clone() for k, v in batch.items()})
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    with torch.no_grad():
        out = trainer.concatenated_forward(model, {k: v.clone() for k, v in batch.items()})
    return loss.detach(), metrics, grads, out


# (prompt, shared answer start, chosen tail, rejected tail): different prompt lengths, padding in every row,
# one pair whose common prefix runs into the scored answer, one chosen longer and one shorter than rejected
SHAPES = [(37, 0, 6, 12), (22, 3, 9, 4)]


@pytest.mark.parametrize("chosen", [("scored_logits",), ("shared_prefix",), lf_fast.LEVERS])
@pytest.mark.parametrize("loss", [{"pref_loss": "sigmoid", "pref_ftx": 0.0},
                                  {"pref_loss": "sigmoid", "pref_ftx": 0.5},
                                  {"pref_loss": "ipo"}])
def test_dpo_fast_paths_equal_stock_llamafactory(tiny, tmp_path, chosen, loss):
    import torch

    batch = pairwise_batch(SHAPES)
    assert (batch["attention_mask"] == 0).any(dim=1).all()  # every row padded
    trainer = dpo_trainer(tiny, tmp_path, **loss)
    stock = loss_and_grads(trainer, tiny["policy"], batch)
    assert lf_fast.install(chosen) == chosen
    fast = loss_and_grads(trainer, tiny["policy"], batch)
    for key in ("chosen_logps", "rejected_logps", "chosen_logps_avg"):
        torch.testing.assert_close(fast[3][key], stock[3][key], rtol=REL, atol=0)
    assert float((fast[0] - stock[0]).abs() / stock[0].abs()) < REL
    assert float((fast[2] - stock[2]).norm() / stock[2].norm()) < REL
    assert stock[2].norm() > 0
    for key in ("logps/chosen", "logps/rejected"):
        assert fast[1][key] == pytest.approx(stock[1][key], rel=REL)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):  # beta x a difference of ~-100 logps
        assert fast[1][key] == pytest.approx(stock[1][key], abs=REL)


def test_shared_prefix_runs_the_prompt_once(tiny):
    """The policy sees prompt + both answers once, not the prompt twice: count the tokens its layers get."""
    import torch

    batch = pairwise_batch([(60, 0, 5, 7)])
    seen = []

    def count(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.shape[0] * hidden.shape[1])

    hook = tiny["policy"].model.layers[0].register_forward_hook(count, with_kwargs=True)
    try:
        lf_fast.shared_prefix_logps(tiny["policy"], batch["input_ids"][0, :65], batch["labels"][0, :65],
                                    batch["input_ids"][1, :67], batch["labels"][1, :67])
    finally:
        hook.remove()
    assert seen == [60, 2 * 7]  # prefix once; the two suffixes (padded to the longer) as a batch of two
    with torch.no_grad():
        lp, n, *_ = lf_fast.shared_prefix_logps(tiny["policy"], batch["input_ids"][0, :65], batch["labels"][0, :65],
                                                batch["input_ids"][1, :67], batch["labels"][1, :67])
    assert n.tolist() == [5, 7]


def test_reference_model_runs_once_per_pair(tiny, tmp_path):
    import torch

    calls = []
    hook = tiny["ref"].register_forward_hook(lambda m, a, kw, o: calls.append(1), with_kwargs=True)
    try:
        trainer = dpo_trainer(tiny, tmp_path)
        lf_fast.install(["reference_cache"])
        first = trainer.compute_reference_log_probs(tiny["policy"], pairwise_batch(SHAPES))
        after_first = len(calls)
        again = trainer.compute_reference_log_probs(tiny["policy"], pairwise_batch(SHAPES))
        assert len(calls) == after_first > 0
        # a batch with one known pair and one new pair runs the reference on the new pair only
        mixed = pairwise_batch([SHAPES[1], (30, 0, 5, 5)])
        lf_fast.uninstall()
        expected = trainer.compute_reference_log_probs(tiny["policy"], mixed)
        lf_fast.install(["reference_cache"])
        calls.clear()
        got = trainer.compute_reference_log_probs(tiny["policy"], mixed)
    finally:
        hook.remove()
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert len(calls) == 1
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=REL, atol=0)


def test_sft_scored_logits_equal_stock_loss_and_gradients(tiny, tmp_path):
    import torch
    from llamafactory.hparams import FinetuningArguments, TrainingArguments
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

    model = tiny["policy"]
    trainer = CustomSeq2SeqTrainer(model=model, finetuning_args=FinetuningArguments(stage="sft"), processor=None,
                                   tokenizer=tiny["tokenizer"],
                                   args=TrainingArguments(output_dir=str(tmp_path / "sft"), report_to="none",
                                                          use_cpu=True))
    batch = pairwise_batch([(30, 0, 6, 12)])  # two rows of different lengths, padded
    batch["labels"][0, 10:20] = batch["input_ids"][0, 10:20]  # a second trained turn inside the "prompt"
    model.train()

    def run(num_items):
        model.zero_grad(set_to_none=True)
        loss, outputs = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()}, return_outputs=True,
                                             num_items_in_batch=num_items)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]), outputs.logits.shape

    scored = int((batch["labels"][:, 1:] != -100).sum())
    for num_items in (None, torch.tensor(scored)):
        stock = run(num_items)
        lf_fast.install(["scored_logits"])
        fast = run(num_items)
        lf_fast.uninstall()
        assert float((fast[0] - stock[0]).abs() / stock[0].abs()) < REL
        assert float((fast[1] - stock[1]).norm() / stock[1].norm()) < REL
        assert stock[2][1] == batch["input_ids"].shape[1]
        assert fast[2][1] == int((batch["labels"][:, 1:] != -100).any(0).sum())  # logits only where scored


# ------------------------------------------------------------------------------ real LLaMA-Factory runs


@pytest.mark.integration
def test_cpu_tiny_with_the_plugin_trains_like_stock_and_exports_a_servable_model(tiny_dpo_run, tiny_llama, tmp_path):
    """cpu_tiny through the plugin (the shared run, its default) and through llamafactory-cli, same data, seed
    and settings: same losses, and the plugin's output is a servable model."""
    from densepolicy.training.train import metric_series, read_log_history

    plugin = tiny_dpo_run
    stock = train("cpu_tiny", dataset="tiny_tree_dpo", dataset_dir=plugin.model_dir.parent / "data",
                  model=tiny_llama, output_dir=tmp_path / "stock", progress=False,
                  overrides=[*TINY_DPO_OVERRIDES, "densepolicy_fast=false"])
    runs = {"plugin": plugin, "stock": stock}
    check_servable(plugin.model_dir)
    log_text = plugin.log_path.read_text()
    assert "-m densepolicy.training.lf_fast train" in log_text
    assert "levers shared_prefix, scored_logits, reference_cache" in log_text
    assert "densepolicy.training.lf_fast" not in stock.log_path.read_text()
    losses = {n: metric_series(read_log_history(r.model_dir / "trainer_state.json"), "loss")[1] for n, r in runs.items()}
    assert len(losses["plugin"]) == 3
    assert losses["plugin"] == pytest.approx(losses["stock"], rel=1e-4)
    assert plugin.metrics["eval_loss"] == pytest.approx(stock.metrics["eval_loss"], rel=1e-4)
    assert json.loads((plugin.model_dir / "densepolicy_train.json").read_text())["fast_levers"] == list(lf_fast.LEVERS)
    assert Path(plugin.model_dir / "model.safetensors").is_file()
