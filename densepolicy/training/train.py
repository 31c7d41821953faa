"""TreeDPO training: run LLaMA-Factory DPO on a registered pairwise dataset (or SFT on a multi-turn dataset,
the warm start: configs with `stage: sft`) and produce a servable model.

One call does the whole stage (``TreeDPO/train.py`` is the command-line face of `train`):

1. read a LLaMA-Factory YAML from ``TreeDPO/configs/<name>.yaml``, apply ``key=value`` overrides (every
   key is checked against LLaMA-Factory's own argument dataclasses, so a typo fails before training);
2. check the dataset name against ``<dataset_dir>/dataset_info.json`` and the model directory;
3. check that LLaMA-Factory's chat template and the model's own template (what vLLM renders at serving
   time) give the same token ids on a record of the dataset (every assistant turn of it);
4. write the effective YAML into the output directory and run ``llamafactory-cli train`` from the main
   venv, streaming its output to ``train.log`` and showing a progress bar;
5. for LoRA, merge the adapter with ``llamafactory-cli export``;
6. verify the result is a self-contained model directory vLLM can serve, and draw loss / reward curves.

Output directory layout (default ``TreeDPO/saves/<model>/<full|lora>/<dataset>``)::

    config.json  model.safetensors  generation_config.json  tokenizer.json  tokenizer_config.json
    chat_template.jinja                       the servable model (LoRA: the merged model)
    train_config.yaml  train.log              effective LLaMA-Factory YAML and its full output
    trainer_state.json  trainer_log.jsonl     LLaMA-Factory's logs (LoRA: under adapter/)
    dpo_loss.png  dpo_rewards.png             curves drawn from trainer_state.json (SFT: sft_loss.png)
    densepolicy_train.json                    what produced this model (config, dataset, base, timings)
    adapter/  export_config.yaml              LoRA only: the adapter and the merge YAML
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from densepolicy.config import ConfigError, read_yaml
from densepolicy.paths import PROJECT_ROOT, cache_dir, main_python, resolve
from densepolicy.training.model_record import record_trained_model
from densepolicy.serving.models import (ModelError, model_dir_candidates, model_dir_name,
                                       model_template, resolve_model)
from densepolicy.serving.chat_template import (
    ContentRule,
    content_rules,
    default_system_prompt,
    describe_rules,
    served_messages,
)
from densepolicy.training.launch import (
    NodeGroup,
    check_launchable,
    distributed_env,
    fingerprint_hash,
    free_port,
    is_multinode,
    venv_path,
    visible_gpus,
)
from densepolicy.training import lf_fast
from densepolicy.training.gpu_memory import GpusBusyError, check_gpus_free
from densepolicy.training.lf_fields import llamafactory_fields
from densepolicy.training.lf_args import (
    coerce_args,
    merge_overrides,
    parse_lf_overrides,
    translate_warmup,
)

log = logging.getLogger(__name__)

CONFIG_DIR = PROJECT_ROOT / "TreeDPO" / "configs"
DEFAULT_DATASET_DIR = PROJECT_ROOT / "TreeDPO" / "data"
SAVES_DIR = PROJECT_ROOT / "TreeDPO" / "saves"

# Keys whose values are file-system paths, resolved against the project root in the effective YAML.
PATH_KEYS = ("model_name_or_path", "dataset_dir", "deepspeed", "output_dir", "adapter_name_or_path")

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


class TrainingError(RuntimeError):
    """Training or export failed; the message names the log file to read."""


@dataclasses.dataclass
class TrainResult:
    """What `train` produced."""

    model_dir: Path
    """Self-contained model directory (merged for LoRA) that vLLM / the launcher can serve."""
    config_path: Path
    """The effective LLaMA-Factory YAML."""
    log_path: Path
    plots: list[Path]
    train_seconds: float
    """Wall time of `llamafactory-cli train` (start-up included)."""
    export_seconds: float
    metrics: dict[str, Any]
    """LLaMA-Factory's all_results.json (train_loss, train_runtime, ...)."""
    node_rank: int = 0
    """This node's rank in a multi-node run; only node 0 exports, checks, plots and records the model."""
    nnodes: int = 1


# ----------------------------------------------------------------------------------------- inputs


def config_path(name: str | os.PathLike) -> Path:
    """`cpu_tiny` → TreeDPO/configs/cpu_tiny.yaml; an existing YAML path is used as is."""
    raw = str(name)
    if raw.endswith((".yaml", ".yml")) or os.sep in raw:
        path = resolve(raw)
    else:
        path = CONFIG_DIR / f"{raw}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"TreeDPO config {raw!r} not found ({path}); known configs: {', '.join(known)}")
    return path


def registered_datasets(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The entries of `<dataset_dir>/dataset_info.json` (empty if the file does not exist)."""
    info = Path(dataset_dir) / "dataset_info.json"
    if not info.is_file():
        return {}
    try:
        data = json.loads(info.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON in {info}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{info}: expected a mapping of dataset names")
    return data


def check_dataset(names: str, dataset_dir: str | os.PathLike) -> None:
    """Every comma-separated name must be registered and its file must exist."""
    registry = registered_datasets(dataset_dir)
    info = Path(dataset_dir) / "dataset_info.json"
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name not in registry:
            known = ", ".join(sorted(registry)) or "none"
            raise ConfigError(f"dataset {name!r} is not registered in {info} (registered: {known})")
        entry = registry[name]
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if file_name and not (Path(dataset_dir) / file_name).exists():
            raise ConfigError(f"dataset {name!r}: file {Path(dataset_dir) / file_name} does not exist")


def model_directory(name_or_path: str | os.PathLike) -> Path:
    """The directory of the weights to train: a name from configs/models.yaml, a path, or a name under models/,
    searched in serving's order (`serving.models.model_dir_candidates`; no serving checks:
    `densepolicy.serving.models.resolve_model` is the model as served)."""
    candidates = model_dir_candidates(str(name_or_path))
    for path in candidates:
        if (path / "config.json").is_file():
            return path
    raise ConfigError(
        f"model {str(name_or_path)!r}: no model directory with a config.json at "
        f"{' or '.join(str(c) for c in candidates)}"
    )


def llamafactory_keys() -> set[str]:
    """Every key LLaMA-Factory's `train`/`export` accept (its argument dataclasses), plus a few meta keys."""
    return {"dataset", "eval_dataset"} | set(_llamafactory_fields())


def _llamafactory_fields() -> dict[str, Any]:
    """{key: type} of LLaMA-Factory's argument dataclasses (`lf_fields.llamafactory_fields`: cached per installed
    version), or a clear error."""
    try:  # from the cache; on a miss, importing LLaMA-Factory pulls in transformers (seconds)
        return llamafactory_fields()
    except ImportError as exc:
        raise TrainingError(f"LLaMA-Factory is not importable from {sys.executable} ({exc}); "
                            f"run with the main venv: {main_python()} (make setup)") from None


def check_keys(args: dict[str, Any], source: str, known: set[str] | None = None) -> None:
    """Fail on the first key LLaMA-Factory does not know, naming it and where it came from."""
    known = llamafactory_keys() if known is None else known
    for key in args:
        if key not in known:
            raise ConfigError(f"{source}: unknown LLaMA-Factory key {key!r}")


_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(args: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads `1e-6` (no dot) as a string; LLaMA-Factory would then get a str learning rate."""
    return {k: float(v) if isinstance(v, str) and _EXPONENT_FLOAT.match(v) else v for k, v in args.items()}


def default_output_dir(model: Path, finetuning_type: str, dataset: str) -> Path:
    """The original's layout: TreeDPO/saves/<model name>/<full|lora>/<dataset> (a Hugging Face cache snapshot is
    named after its repository, not its hash: `models.model_dir_name`)."""
    return SAVES_DIR / model_dir_name(model) / finetuning_type / dataset.replace(",", "+")


def resolve_template(args: dict[str, Any], source: str) -> str:
    """`template: auto` -> the model's LLaMA-Factory template (configs/models.yaml entry, else detected from its
    chat template: `models.model_template`); any other value is kept. Raises `ConfigError` when auto finds none."""
    template = str(args.get("template", ""))
    if template != "auto":
        return template
    found = model_template(args["model_name_or_path"])
    if found is None:
        raise ConfigError(f"{source}: key 'template' is auto, but {args['model_name_or_path']} has no template in "
                          f"configs/models.yaml and its chat template is not one DensePolicy recognises (Llama-3, "
                          f"Qwen2.5/3, SmolLM2): set template=NAME (a LLaMA-Factory template) on the command line")
    return found


def build_train_args(
    config: str | os.PathLike,
    dataset: str | None = None,
    model: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    dataset_dir: str | os.PathLike | None = None,
    known_keys: set[str] | None = None,
) -> dict[str, Any]:
    """The effective LLaMA-Factory arguments: YAML < overrides < explicit arguments; paths made absolute.

    Values are converted to the types of LLaMA-Factory's fields (`lf_args.coerce_args`; with `known_keys`,
    a stand-in key set for tests, only numbers written as `1e-6` are), and ``warmup_ratio`` becomes the
    ``warmup_steps`` that means the same fraction of the run (`lf_args.translate_warmup`).
    Raises `ConfigError` for an unknown key or a value of the wrong type (naming the key), an unregistered
    dataset or a missing model directory.
    """
    path = config_path(config)
    args = _numbers(read_yaml(path))
    known = (llamafactory_keys() if known_keys is None else set(known_keys)) | {lf_fast.KEY}
    fields = _llamafactory_fields() if known_keys is None else {}
    check_keys(args, str(path), known)
    args = coerce_args(args, fields, str(path))
    update, typed = parse_lf_overrides(overrides or [])
    update = _numbers(update)
    check_keys(update, "command line", known)
    args = merge_overrides(args, coerce_args(update, fields, "command line", typed))
    args = translate_warmup(args, str(path))
    if dataset is not None:
        args["dataset"] = dataset
    if model is not None:
        args["model_name_or_path"] = str(model)
    if dataset_dir is not None:
        args["dataset_dir"] = str(dataset_dir)
    if output_dir is not None:
        args["output_dir"] = str(output_dir)

    if not args.get("dataset"):
        raise ConfigError(f"{path}: no dataset given (use --dataset NAME or dataset=NAME)")
    if "model_name_or_path" not in args:
        raise ConfigError(f"{path}: no model given (use --model or model_name_or_path=...)")
    args["model_name_or_path"] = str(model_directory(args["model_name_or_path"]))
    if "template" in args:
        args["template"] = resolve_template(args, str(path))
    args["dataset_dir"] = str(resolve(args.get("dataset_dir") or DEFAULT_DATASET_DIR))
    check_dataset(str(args["dataset"]), args["dataset_dir"])
    if not args.get("output_dir"):
        args["output_dir"] = str(default_output_dir(
            Path(args["model_name_or_path"]), args.get("finetuning_type", "lora"), str(args["dataset"])))
    for key in PATH_KEYS:
        if args.get(key):
            args[key] = str(resolve(args[key]))
    if args.get("deepspeed") and not Path(args["deepspeed"]).is_file():
        raise ConfigError(f"{path}: deepspeed config {args['deepspeed']} does not exist")
    if lf_fast.check_args(args, str(path)):
        args[lf_fast.KEY] = list(lf_fast.levers(args[lf_fast.KEY]))
    else:
        args.pop(lf_fast.KEY, None)  # llamafactory-cli would refuse the key
    return args


# --------------------------------------------------------------------------------- chat template


def _dataset_records(dataset: str, dataset_dir: str | os.PathLike, limit: int = 3) -> list[dict[str, Any]]:
    """The first records of the first dataset (JSON list or JSONL), for the template check."""
    entry = registered_datasets(dataset_dir)[dataset.split(",")[0].strip()]
    path = Path(dataset_dir) / entry["file_name"]
    if path.is_dir() or path.suffix not in (".json", ".jsonl"):
        return []
    text = path.read_text()
    if path.suffix == ".jsonl":
        lines = [line for line in text.split("\n") if line.strip()]  # not splitlines(): U+2028 may be raw in a record
        return [json.loads(line) for line in lines[:limit]]
    return json.loads(text)[:limit]


def sharegpt_messages(record: dict[str, Any], entry: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    """(chat messages as role/content, system text) of one ShareGPT record: for a pairwise record the prompt
    + chosen answer; for a (multi-turn) SFT record the whole conversation, ending with an assistant turn."""
    columns = {"messages": "conversations", "chosen": "chosen", "system": "system", **entry.get("columns", {})}
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "observation_tag": "observation", "system_tag": "system", **entry.get("tags", {})}
    role_of = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
               tags["observation_tag"]: "observation"}  # the check then shows how LLaMA-Factory renders it
    raw = list(record[columns["messages"]])
    if entry.get("ranking") or columns["chosen"] in record:
        raw.append(record[columns["chosen"]])
    messages = [{"role": role_of[m[tags["role_tag"]]], "content": m[tags["content_tag"]]} for m in raw]
    system = record.get(columns["system"]) or ""
    if messages and messages[0]["role"] == "system":
        system = messages.pop(0)["content"]
    return messages, system


@dataclasses.dataclass
class TemplateComparison:
    """Token ids of one conversation rendered by LLaMA-Factory (training) and by the tokenizer (serving)."""

    training_prompt_ids: list[int]
    serving_prompt_ids: list[int]
    training_full_ids: list[int]
    serving_full_ids: list[int]

    @property
    def agree(self) -> bool:
        """Same prompt ids, and the answer ids LLaMA-Factory trains on start the served continuation
        (LLaMA-Factory may append a trailing newline after the end-of-turn token)."""
        return (self.training_prompt_ids == self.serving_prompt_ids
                and self.serving_full_ids == self.training_full_ids[:len(self.serving_full_ids)])


class TemplatePair:
    """LLaMA-Factory's `template` and the model's own chat template, loaded once (main venv only)."""

    def __init__(self, model_dir: str | os.PathLike, template: str, default_system: str | None = None):
        import copy

        from llamafactory.data.template import TEMPLATES, get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments
        from transformers import AutoTokenizer

        logging.getLogger("llamafactory").setLevel(logging.WARNING)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        serving_template = self.tokenizer.chat_template  # before LLaMA-Factory may replace it
        registered = TEMPLATES.get(template)
        if registered is not None:  # LLaMA-Factory sets default_system on its global template object
            TEMPLATES[template] = copy.deepcopy(registered)
        try:
            self.template = get_template_and_fix_tokenizer(
                self.tokenizer, DataArguments(template=template, default_system=default_system))
        finally:
            if registered is not None:
                TEMPLATES[template] = registered
        self.tokenizer.chat_template = serving_template

    def compare(self, messages: list[dict[str, str]], system: str = "") -> TemplateComparison:
        """Render `messages` (ending with the assistant answer) both ways; serving = what vLLM does for
        a chat request with all but the last message: chat template + generation prompt, no extra BOS."""
        prompt_ids, answer_ids = self.template.encode_oneturn(self.tokenizer, messages, system or None)
        chat = ([{"role": "system", "content": system}] if system else []) + messages
        serving_prompt = self.tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
        serving_full = self.tokenizer.apply_chat_template(chat, tokenize=False)
        return TemplateComparison(
            training_prompt_ids=prompt_ids,
            serving_prompt_ids=self.tokenizer.encode(serving_prompt, add_special_tokens=False),
            training_full_ids=prompt_ids + answer_ids,
            serving_full_ids=self.tokenizer.encode(serving_full, add_special_tokens=False),
        )

    def compare_turns(self, messages: list[dict[str, str]], system: str = "") -> list[TemplateComparison]:
        """`compare` at every assistant turn of a multi-turn conversation: each turn LLaMA-Factory trains on
        must be preceded by exactly the prompt vLLM renders for the history before it (the agent's request at
        that step)."""
        return [self.compare(messages[:i + 1], system)
                for i, message in enumerate(messages) if message["role"] == "assistant"]

    def agrees(self, messages: list[dict[str, str]], system: str = "") -> bool:
        """True if every assistant turn of `messages` renders the same both ways (`compare_turns`)."""
        return all(turn.agree for turn in self.compare_turns(messages, system))

    @functools.cached_property
    def serving_rules(self) -> dict[str, ContentRule]:
        """What the model's own chat template does to message contents, per role (e.g. Llama-3-Instruct trims
        them); LLaMA-Factory's templates insert contents as they are."""
        return content_rules(self.tokenizer)

    def diagnose(self, messages: list[dict[str, str]], system: str = "") -> TemplateDiagnosis | None:
        """None if the conversation renders the same both ways; else which side has to change, found by
        trying each fix: the data (contents as the served template renders them), `default_system` (both
        sides given the same system prompt), or else `template`."""
        if self.agrees(messages, system):
            return None
        served = served_messages(messages, self.serving_rules)
        served_system = self.serving_rules["system"].apply(system) if system else system
        data_differs = served != messages or served_system != system
        probe = "You are a helpful assistant."
        if data_differs and self.agrees(served, served_system):
            sides: tuple[str, ...] = ("data",)
        elif not system and self.agrees(served, probe):
            sides = ("data", "default_system") if data_differs and not self.agrees(messages, probe) else \
                ("default_system",)
        else:
            sides = ("template",)
        return TemplateDiagnosis(sides, self.first_difference(messages, system))

    def first_difference(self, messages: list[dict[str, str]], system: str = "") -> str:
        """Both renderings around the first token where they differ (first disagreeing turn)."""
        for turn in self.compare_turns(messages, system):
            if turn.agree:
                continue
            if turn.training_prompt_ids != turn.serving_prompt_ids:
                label, training, serving = "prompt", turn.training_prompt_ids, turn.serving_prompt_ids
            else:
                label, training, serving = "answer", turn.training_full_ids, turn.serving_full_ids
            i = next((k for k, (a, b) in enumerate(zip(training, serving)) if a != b), min(len(training), len(serving)))
            window = slice(max(0, i - 6), i + 6)
            return (f"{label} token {i}: LLaMA-Factory ...{self.tokenizer.decode(training[window])!r}... vs "
                    f"served ...{self.tokenizer.decode(serving[window])!r}...")
        return ""


@dataclasses.dataclass(frozen=True)
class TemplateDiagnosis:
    """Why a record renders differently for training and serving: `sides` to change, among "data" (the
    record's contents are not what the served template renders), "default_system" and "template" (the
    training config's keys), and where the token ids first differ."""

    sides: tuple[str, ...]
    first_difference: str


def template_pair(args: dict[str, Any]) -> TemplatePair:
    """The `TemplatePair` of a training config: its tokenizer (or model) directory, template and system."""
    tokenizer_dir = args.get("tokenizer_name_or_path") or args["model_name_or_path"]
    return TemplatePair(tokenizer_dir, args["template"], args.get("default_system"))


def check_chat_template(args: dict[str, Any], records: int = 3, pair: TemplatePair | None = None) -> None:
    """Fail if LLaMA-Factory's template renders the dataset's first records differently from the model's
    own chat template (the one vLLM uses), e.g. because of a different default system prompt. Every
    assistant turn is checked (pairwise: the prompt's turns and the chosen answer; SFT: each trained turn).
    `pair` saves loading the tokenizer and template again when the caller already has them."""
    dataset = str(args["dataset"]).split(",")[0].strip()
    entry = registered_datasets(args["dataset_dir"])[dataset]
    if entry.get("formatting") != "sharegpt":
        log.warning("template check skipped: dataset %s is not in sharegpt format", dataset)
        return
    pair = pair or template_pair(args)
    for record in _dataset_records(dataset, args["dataset_dir"], records):
        messages, system = sharegpt_messages(record, entry)
        diagnosis = pair.diagnose(messages, system)
        if diagnosis is not None:
            raise ConfigError(_mismatch_message(args, dataset, pair, diagnosis))
    check_served_contents(args, pair)


def check_served_contents(args: dict[str, Any], pair: TemplatePair) -> None:
    """Fail if any record (up to `max_samples`) holds a message content that the model's chat template renders
    differently (Llama-3-Instruct trims every content): LLaMA-Factory would train on it as it is, a prompt
    the server never sends. A string check over every record, so it also finds the records the token-level
    check of the first few does not look at."""
    rules = pair.serving_rules
    if not any(rule.changes_contents for rule in rules.values()):
        return
    dataset = str(args["dataset"]).split(",")[0].strip()
    entry = registered_datasets(args["dataset_dir"])[dataset]
    if entry.get("formatting") != "sharegpt":
        return
    records = _dataset_records(dataset, args["dataset_dir"], limit=int(args.get("max_samples") or 10**9))
    for index, record in enumerate(records):
        messages, system = sharegpt_messages(record, entry)
        rejected = record.get(entry.get("columns", {}).get("rejected", "rejected"))
        if isinstance(rejected, dict):
            messages = messages + [{"role": "assistant", "content": rejected.get("value", rejected.get("content", ""))}]
        if system:
            messages = [{"role": "system", "content": system}] + messages
        if served_messages(messages, rules) != messages:
            raise ConfigError(_mismatch_message(args, dataset, pair, TemplateDiagnosis(
                ("data",), f"record {index}: a content with whitespace the served template strips")))


def _mismatch_message(args: dict[str, Any], dataset: str, pair: TemplatePair, diagnosis: TemplateDiagnosis) -> str:
    """The error of a chat-template mismatch: what differs and which side to change."""
    tokenizer_dir = args.get("tokenizer_name_or_path") or args["model_name_or_path"]
    head = (f"chat template mismatch: LLaMA-Factory template {args['template']!r} "
            f"(default_system={args.get('default_system')!r}) and the chat template of {tokenizer_dir} (what vLLM "
            f"renders) render a record of {dataset!r} differently ({diagnosis.first_difference}), so the model would "
            f"be trained on prompts the server never sends.")
    advice = []
    if "data" in diagnosis.sides:
        advice.append(
            f"Change the data, not the config: the model's chat template {describe_rules(pair.serving_rules)}, "
            f"LLaMA-Factory's {args['template']!r} inserts contents as they are, and the dataset was not written for "
            f"this model. Write it again for the served model: `prepare_dataset.py --model {tokenizer_dir}` "
            f"(pairs) or `scripts/build_expert_data.py model={tokenizer_dir}` (expert SFT data); both write every "
            f"content as the model's chat template renders it.")
    if "default_system" in diagnosis.sides:
        served = default_system_prompt(pair.tokenizer)
        advice.append(
            "Change the config: LLaMA-Factory's default system prompt is not the model's; set "
            + (f"default_system={served!r}" if served else "no default_system (the model's chat template has none)")
            + " in the training config.")
    if "template" in diagnosis.sides:
        advice.append(
            "Change the config: LLaMA-Factory's template does not render this model's chat format; set `template` "
            "to the one of the model's family (llama3 for Llama-3-Instruct, qwen for Qwen2.5-Instruct, smollm2 for "
            "SmolLM2, with its default_system).")
    return " ".join([head, *advice, "(Skip the check with --skip-template-check.)"])


def record_length(pair: TemplatePair, record: dict[str, Any], entry: dict[str, Any]) -> int:
    """Tokens LLaMA-Factory would feed for one record: prompt + the longer answer (pairwise), or the whole
    conversation (SFT)."""
    messages, system = sharegpt_messages(record, entry)
    if entry.get("ranking") or "rejected" in record:
        rejected = dict(record[entry.get("columns", {}).get("rejected", "rejected")])
        longest = 0
        for answer in (messages[-1]["content"], rejected.get("value", rejected.get("content", ""))):
            prompt_ids, answer_ids = pair.template.encode_oneturn(
                pair.tokenizer, messages[:-1] + [{"role": "assistant", "content": answer}], system or None)
            longest = max(longest, len(prompt_ids) + len(answer_ids))
        return longest
    turns = pair.template.encode_multiturn(pair.tokenizer, messages, system or None)
    return sum(len(q) + len(a) for q, a in turns)


def check_cutoff(args: dict[str, Any], pair: TemplatePair | None = None) -> None:
    """Refuse to train when records are longer than `cutoff_len`.

    LLaMA-Factory truncates such a record without a word, and for a prompt it keeps the beginning: an agent's
    prompt loses its latest observation, the very context the chosen and rejected steps answer. Raise
    `cutoff_len` (padding is dynamic, so a larger value costs nothing for shorter records) or shorten the data.
    """
    dataset = str(args["dataset"]).split(",")[0].strip()
    entry = registered_datasets(args["dataset_dir"])[dataset]
    cutoff = int(args.get("cutoff_len", 2048))
    if entry.get("formatting") != "sharegpt":
        return
    pair = pair or template_pair(args)
    records = _dataset_records(dataset, args["dataset_dir"], limit=int(args.get("max_samples") or 10**9))
    lengths = [record_length(pair, record, entry) for record in records]
    too_long = [n for n in lengths if n > cutoff]
    if too_long:
        raise ConfigError(
            f"{len(too_long)} of {len(lengths)} records of {dataset!r} are longer than cutoff_len={cutoff} "
            f"tokens (longest {max(too_long)}); LLaMA-Factory would cut them (a prompt loses its end, the latest "
            f"observation). Set cutoff_len={max(too_long)} or more (e.g. as an override: cutoff_len=4096).")


# ------------------------------------------------------------------------------------ running


def subprocess_env() -> dict[str, str]:
    """Environment of LLaMA-Factory runs: offline, no telemetry, a project-local datasets cache, and the
    main venv's bin/ first on PATH (LLaMA-Factory starts `torchrun` by name)."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["PATH"] = venv_path(main_python())
    env.setdefault("HF_DATASETS_CACHE", str(cache_dir() / "hf_datasets"))
    return env


def llamafactory_cli() -> Path:
    """`llamafactory-cli` of the main venv."""
    cli = main_python().parent / "llamafactory-cli"
    if not cli.exists():
        raise TrainingError(f"{cli} not found: build the main venv first (make setup)")
    return cli


def run_logged(
    command: list[str],
    log_path: Path,
    on_poll: Callable[[], None] | None = None,
    poll_seconds: float = 2.0,
    extra_env: dict[str, str] | None = None,
) -> float:
    """Run `command` in the project root with its output appended to `log_path`; returns wall seconds.

    The environment is `subprocess_env()` plus `extra_env`.
    `on_poll` is called every `poll_seconds` while it runs (progress display). Raises `TrainingError`
    with the tail of the log if the command fails.
    """
    start = time.monotonic()
    with open(log_path, "ab") as log_file:
        log_file.write(f"$ {' '.join(command)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**subprocess_env(), **(extra_env or {})}, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                if on_poll:
                    on_poll()
                time.sleep(poll_seconds)
        except BaseException:
            proc.terminate()
            proc.wait(timeout=30)
            raise
    if on_poll:
        on_poll()
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").replace("\r", "\n").splitlines()[-25:])
        raise TrainingError(f"`{' '.join(command[:2])}` failed (exit {proc.returncode}); log: {log_path}\n{tail}")
    return time.monotonic() - start


class _StepProgress:
    """A tqdm bar fed from LLaMA-Factory's trainer_log.jsonl (one line per logged step)."""

    def __init__(self, trainer_log: Path, desc: str):
        from tqdm import tqdm

        self.trainer_log = trainer_log
        self.bar = tqdm(total=None, desc=desc, unit="step")
        self.lock = threading.Lock()

    def __call__(self) -> None:
        if not self.trainer_log.is_file():
            return
        lines = [line for line in self.trainer_log.read_text().splitlines() if line.strip()]
        if not lines:
            return
        try:
            last = json.loads(lines[-1])
        except json.JSONDecodeError:  # line being written
            return
        with self.lock:
            step = last.get("current_steps", 0)
            if step == self.bar.n and self.bar.total is not None:
                return
            self.bar.total = last.get("total_steps")
            self.bar.n = step
            if "loss" in last:
                self.bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def train_command(args: dict[str, Any], train_yaml: Path, launch_env: dict[str, str]) -> list[str]:
    """The training command: ``llamafactory-cli train <yaml>``, or, when the config turns on
    ``densepolicy_fast`` (`lf_fast`), LLaMA-Factory run in one process through the DensePolicy plugin.

    Raises `ConfigError` for the plugin in a distributed launch (it is single-process only).
    """
    if not args.get(lf_fast.KEY):
        return [str(llamafactory_cli()), "train", str(train_yaml)]
    if launch_env:
        raise ConfigError(f"key {lf_fast.KEY!r} (the LLaMA-Factory plugin densepolicy.training.lf_fast) runs one "
                          f"process only; this launch is distributed (torchrun / DeepSpeed): set {lf_fast.KEY}=false")
    return [str(main_python()), "-m", lf_fast.__name__, "train", str(train_yaml)]


def export_args(train_args: dict[str, Any], adapter_dir: Path, export_dir: Path) -> dict[str, Any]:
    """`llamafactory-cli export` arguments that merge the LoRA adapter into the base model."""
    args = {
        "model_name_or_path": train_args["model_name_or_path"],
        "adapter_name_or_path": str(adapter_dir),
        "template": train_args["template"],
        "finetuning_type": "lora",
        "export_dir": str(export_dir),
        "export_size": 5,
        "export_device": "cpu",
        "export_legacy_format": False,
    }
    for key in ("default_system", "trust_remote_code"):
        if key in train_args:
            args[key] = train_args[key]
    return args


def train(
    config: str | os.PathLike,
    dataset: str | None = None,
    model: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    dataset_dir: str | os.PathLike | None = None,
    template_check: bool = True,
    progress: bool = True,
    resume: bool = False,
    allow_busy_gpus: bool = False,
) -> TrainResult:
    """Train (and for LoRA merge) a DPO or SFT model (the config's `stage`); see the module docstring for
    the output layout.

    Refuses to write into a non-empty `output_dir` unless `resume` (LLaMA-Factory then continues from
    the last checkpoint-*/ in it), and to start on GPUs whose memory is already largely in use (a vLLM server
    left running, `gpu_memory.check_gpus_free`) unless `allow_busy_gpus` or $DENSEPOLICY_ALLOW_BUSY_GPUS=1.
    """
    args = build_train_args(config, dataset, model, output_dir, overrides, dataset_dir)
    out = Path(args["output_dir"])
    launch_env = distributed_env(args, source=str(config_path(config)))  # torchrun settings, {} for one process
    if not allow_busy_gpus:
        try:  # this node's GPUs (each node of a multi-node run checks its own)
            check_gpus_free(visible_gpus())
        except GpusBusyError as exc:
            raise TrainingError(str(exc)) from None
    check_launchable(args, {**subprocess_env(), **launch_env}, main_python(), out / "train_config.yaml")
    command = train_command(args, out / "train_config.yaml", launch_env)
    lora = args.get("finetuning_type", "lora") == "lora"
    train_out = out / "adapter" if lora else out
    train_yaml = out / "train_config.yaml"
    fingerprint = run_fingerprint(args, config, resume, template_check, launch_env)
    yaml_args = {**args, "output_dir": str(train_out)}

    def prepare() -> dict[str, Any]:  # node 0 only: output-dir checks, chat-template checks, the effective YAML
        if resume and not out.is_dir():
            raise ConfigError(f"--resume: output directory {out} does not exist")
        if not resume and out.exists() and any(out.iterdir()):
            raise ConfigError(f"output directory {out} exists and is not empty; choose another --output-dir "
                              f"(or --resume to continue from its last checkpoint)")
        if template_check:
            pair = template_pair(args)
            check_chat_template(args, pair=pair)
            check_cutoff(args, pair=pair)
        out.mkdir(parents=True, exist_ok=True)
        _write_yaml(train_yaml, yaml_args)
        return {"train_yaml_sha256": fingerprint_hash({"yaml": train_yaml.read_text()}),
                "torchrun_port": free_port("") if is_multinode(launch_env) else None}

    node_rank, nnodes = int(launch_env.get("NODE_RANK", 0)), int(launch_env.get("NNODES", 1))
    if nnodes > 1:  # one train.py per node: agree, node 0 prepares, then torchrun on a port node 0 picked
        group = NodeGroup(launch_env)
        try:  # GPUs are compared only when each node would take every GPU of its host (no CUDA_VISIBLE_DEVICES)
            prepared = group.meet(fingerprint, prepare,
                                  host_gpus=[] if "CUDA_VISIBLE_DEVICES" in os.environ else visible_gpus())
        finally:
            group.close()
        launch_env = {**launch_env, "MASTER_PORT": str(prepared["torchrun_port"])}
        if node_rank:
            _wait_for_shared_file(train_yaml, prepared["train_yaml_sha256"], node_rank)
    else:
        prepare()
    args["output_dir"] = str(train_out)
    log_path = out / ("train.log" if node_rank == 0 else f"train.node{node_rank}.log")

    bar = _StepProgress(train_out / "trainer_log.jsonl",
                        desc=f"{str(args.get('stage', 'dpo')).upper()} {Path(args['model_name_or_path']).name}") \
        if progress and node_rank == 0 else None
    try:
        if launch_env:
            log.info("distributed launch: %s", " ".join(f"{k}={v}" for k, v in launch_env.items()))
        train_seconds = run_logged(command, log_path, on_poll=bar, extra_env=launch_env)
    finally:
        if bar:
            bar.close()
    if node_rank:  # export, servable check, plots and provenance are node 0's
        return TrainResult(out, train_yaml, log_path, [], train_seconds, 0.0, {}, node_rank, nnodes)

    export_seconds = 0.0
    if lora:
        export_yaml = out / "export_config.yaml"
        _write_yaml(export_yaml, export_args(args, train_out, out))
        export_seconds = run_logged([str(llamafactory_cli()), "export", str(export_yaml)], log_path)

    check_servable(out)
    plots = plot_training_curves(train_out / "trainer_state.json", out, stage=str(args.get("stage", "dpo")))
    metrics_path = train_out / "all_results.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    (out / "densepolicy_train.json").write_text(json.dumps({
        "config": str(config_path(config)),
        "dataset": args["dataset"],
        "dataset_dir": args["dataset_dir"],
        "base_model": args["model_name_or_path"],
        "finetuning_type": args.get("finetuning_type"),
        "template": args.get("template"),
        "fast_levers": args.get(lf_fast.KEY, []),
        "train_seconds": round(train_seconds, 1),
        "export_seconds": round(export_seconds, 1),
        "launch": {k: launch_env[k] for k in ("NNODES", "NPROC_PER_NODE") if k in launch_env},
        "metrics": metrics,
    }, indent=2) + "\n")
    record_trained_model(out, args, config_path(config))
    return TrainResult(out, train_yaml, log_path, plots, train_seconds, export_seconds, metrics, 0, nnodes)


def _wait_for_shared_file(path: Path, sha256: str, node_rank: int, wait_s: float = 30.0) -> None:
    """Node `node_rank` must see node 0's `path` with its content (a network filesystem may show it late)."""
    deadline = time.monotonic() + wait_s
    while not (path.is_file() and fingerprint_hash({"yaml": path.read_text()}) == sha256):
        if time.monotonic() > deadline:
            raise ConfigError(f"node {node_rank} does not see {path} as node 0 wrote it (waited {wait_s:.0f} s): the "
                              f"output directory must be on a filesystem every node shares (choose --output-dir there)")
        time.sleep(0.5)


def run_fingerprint(args: dict[str, Any], config: str | os.PathLike, resume: bool, template_check: bool,
                    launch_env: dict[str, str]) -> dict[str, Any]:
    """What every node of a multi-node run must agree on: the effective LLaMA-Factory arguments, the config
    file, the flags, the launch shape and the training packages' versions (node-specific values excluded)."""
    from importlib import metadata

    versions = {}
    for package in ("torch", "transformers", "llamafactory", "trl", "deepspeed"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"args": args, "config": str(config_path(config)), "resume": resume, "template_check": template_check,
            "NNODES": launch_env.get("NNODES", "1"), "NPROC_PER_NODE": launch_env.get("NPROC_PER_NODE", "1"),
            "packages": versions}


# ------------------------------------------------------------------------------------ outputs


def check_servable(model_dir: str | os.PathLike) -> Path:
    """Raise `TrainingError` unless `model_dir` is a self-contained model vLLM can serve.

    Needs: config.json with `architectures`; safetensors weights (all shards of an index present); a
    tokenizer (tokenizer.json or a sentencepiece model + tokenizer_config.json); a chat template (in
    chat_template.jinja or tokenizer_config.json). A bare LoRA adapter is rejected.
    """
    path = Path(model_dir)
    problems = []
    config = path / "config.json"
    if not config.is_file():
        problems.append("config.json missing")
        if (path / "adapter_config.json").is_file():
            problems.append("this is a LoRA adapter, not a merged model (merge it with llamafactory-cli export)")
    elif not json.loads(config.read_text()).get("architectures"):
        problems.append("config.json has no 'architectures'")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            problems.append(f"weight shards missing: {', '.join(missing)}")
    elif not (path / "model.safetensors").is_file():
        problems.append("no model.safetensors (or model.safetensors.index.json)")
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer.model").is_file():
        problems.append("no tokenizer.json / tokenizer.model")
    tokenizer_config = path / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        problems.append("tokenizer_config.json missing")
    has_template = (path / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and json.loads(tokenizer_config.read_text()).get("chat_template"))
    if not has_template:
        problems.append("no chat template (chat_template.jinja or tokenizer_config.json:chat_template)")
    if problems:
        raise TrainingError(f"{path} is not a servable model directory: " + "; ".join(problems))
    return path


def servable_model_spec(model_dir: str | os.PathLike):
    """Check `model_dir` is self-contained and resolve it exactly as the launcher / serving code will
    (`densepolicy.serving.models.resolve_model`): the returned `ModelSpec` names the served model and context.

    `./distributed_test.sh <model_dir> <dataset> codeact_agent P 0` accepts any directory that passes.
    """
    path = check_servable(model_dir)
    try:
        return resolve_model(str(Path(path).resolve()))
    except ModelError as exc:
        raise TrainingError(str(exc)) from None


def read_log_history(trainer_state: str | os.PathLike) -> list[dict[str, Any]]:
    """The `log_history` of a Hugging Face trainer_state.json (one dict per logged step)."""
    path = Path(trainer_state)
    if not path.is_file():
        raise TrainingError(f"{path} not found: training wrote no trainer state")
    return json.loads(path.read_text()).get("log_history", [])


def metric_series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, training entries only."""
    points = [(h["step"], float(h[key])) for h in history if key in h and "step" in h]
    return [s for s, _ in points], [v for _, v in points]


def plot_training_curves(trainer_state: str | os.PathLike, out_dir: str | os.PathLike,
                         stage: str = "dpo") -> list[Path]:
    """Draw <stage>_loss.png (train + eval loss); for DPO also dpo_rewards.png (rewards/margins,
    rewards/accuracies). SFT has no rewards: sft_loss.png only.

    Returns the written files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history = read_log_history(trainer_state)
    out = Path(out_dir)
    written = []

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for key, style in (("loss", "-o"), ("eval_loss", "--s")):
        steps, values = metric_series(history, key)
        if steps:
            ax.plot(steps, values, style, markersize=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{stage.upper()} loss")
    ax.set_title("TreeDPO training loss" if stage == "dpo" else f"{stage.upper()} training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / f"{stage}_loss.png", dpi=100)
    plt.close(fig)
    written.append(out / f"{stage}_loss.png")
    if stage != "dpo":
        return written

    fig, (ax_margin, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for axis in (ax_margin, ax_acc):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    steps, margins = metric_series(history, "rewards/margins")
    ax_margin.plot(steps, margins, "-o", markersize=3, color="tab:green")
    ax_margin.set_title("rewards/margins (chosen - rejected)")
    ax_margin.set_xlabel("step")
    steps, accuracies = metric_series(history, "rewards/accuracies")
    ax_acc.plot(steps, accuracies, "-o", markersize=3, color="tab:orange")
    ax_acc.set_ylim(-0.05, 1.05)
    ax_acc.set_title("rewards/accuracies")
    ax_acc.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "dpo_rewards.png", dpi=100)
    plt.close(fig)
    written.append(out / "dpo_rewards.png")
    return written
