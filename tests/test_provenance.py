"""provenance.json for every stage, eval-set identity in merged CSVs and score tables, and --see_score
refusing to compare results of different task sets / data files (docs/formats.md, issue 12 item 1)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from densepolicy import provenance
from densepolicy.provenance import hashing, versions
from densepolicy.results_io import iter_csv
from densepolicy.sampling.config import resolve_sampler_config
from densepolicy.sampling.worker import run_worker
from densepolicy.training.model_record import record_trained_model
from tests import fakes

ROOT = Path(__file__).resolve().parent.parent
TREE = ["context_length=100000", "progress=false", "in_context_number=0", "base=3", "max_steps=3", "window_size=4",
        "max_sample_number=4"]
EVAL = ["context_length=100000", "progress=false", "in_context_number=0", "max_turn=2", "max_steps=4"]


class FileTasksEnv(fakes.ScriptedMathEnv):
    """The scripted math env with its task ids read from `<data_dir>/tasks/<split>.txt` (a data file)."""

    def __init__(self, split: str = "train", data_dir: str | None = None, **_):
        self.path = Path(data_dir) / "tasks" / f"{split}.txt"
        ids = [line for line in self.path.read_text().splitlines() if line and not line.startswith("#")]
        super().__init__(split, size=len(ids))

    def data_files(self) -> dict[str, Path]:
        return {f"tasks/{self.split}.txt": self.path}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A private hash cache per test (the default lives in the project's .cache)."""
    monkeypatch.setenv("DENSEPOLICY_CACHE_DIR", str(tmp_path / "cache"))


def write_tasks(data: Path, split: str, n: int, extra: str = "") -> Path:
    path = data / "tasks" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(str(i) for i in range(n)) + "\n" + extra)
    return path


def cli(script: str, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == code, out.stderr
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_stage_writes_provenance(fake_server, tmp_path):
    data = tmp_path / "data"
    tasks = write_tasks(data, "train", 5)
    server = fake_server(fakes.scripted_reply)
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", TREE + [
        f"env={__name__}:FileTasksEnv", f"data_dir={data}"])
    run = tmp_path / "eval_results" / "codeact_agent_tree.fake" / "temperature_4_3_3"
    for shard in (0, 1):
        run_worker(cfg, "fake", server.base_url, shard, 2, run)

    # sampling: one record for the run's output, one entry per shard
    record = provenance.read_provenance(run)["records"]["gsm8k.train.None.csv"]
    assert record["stage"] == "sampling"
    assert record["eval_set"]["task_ids"] == ["0", "1", "2", "3", "4"]
    assert record["eval_set"]["sha256"] == provenance.task_set_sha256(["4", "3", "2", "1", "0"])
    assert record["data_files"]["files"][0]["name"] == "tasks/train.txt"
    assert record["data_files"]["files"][0]["sha256"] == sha256(tasks)
    assert set(record["shards"]) == {"0", "1"}
    assert record["shards"]["0"]["task_count"] == 3 and record["shards"]["1"]["first_task"] == "3"
    assert record["settings"]["base"] == 3 and record["settings"]["num_shards"] == 2
    assert record["model"]["fingerprint"] is None and record["model"]["name"] == "fake"  # no local model dir
    assert record["env"]["code_files"] == {"tests/test_provenance.py": sha256(Path(__file__))}
    env = record["environment"]
    assert set(provenance.RESULT_PACKAGES) <= set(env["packages"])
    assert env["packages"]["llamafactory"] != provenance.NOT_INSTALLED  # installed in .venv
    assert env["packages"]["deepspeed"] in (provenance.NOT_INSTALLED, versions._version("deepspeed"))
    assert len(env["git"]["commit"]) == 40 and isinstance(env["git"]["dirty"], bool)

    # merge: every merged row carries the eval-set hash
    cli("post_process_test_result.py", "--merge_distributed_result", "--data_dir", str(run),
        "--dataset_file_name_list", "gsm8k.train.{}.csv")
    rows = [row for _, row in iter_csv(run / "gsm8k.train.None.csv")]
    assert {r["eval_set_sha256"] for r in rows} == {record["eval_set"]["sha256"]}
    assert {r["model_fingerprint"] for r in rows} == {""}
    assert provenance.read_provenance(run)["records"]["gsm8k.train.None.csv"]["merged"]["complete"] is True

    # pairs: inputs hashed, the upstream run's eval set named
    cli("post_process_training_data.py", "--process_result", "--data_dir", str(run),
        "--dataset_file_name_list", "gsm8k.train.{}.csv")
    pairs = provenance.read_provenance(run / "pairs")["records"]["gsm8k.train.pairs.csv"]
    tree_dump = run / "trees" / "gsm8k.train.None.jsonl"
    assert {f["sha256"] for f in pairs["data_files"]["files"]} == {sha256(tree_dump), sha256(run / "gsm8k.train.None.csv")}
    assert {u["eval_set_sha256"] for u in pairs["upstream"]} == {record["eval_set"]["sha256"]}
    assert pairs["output"]["sha256"] == sha256(run / "pairs" / "gsm8k.train.pairs.csv")
    assert pairs["settings"]["thre_value"] == 0.5

    cli("post_process_training_data.py", "--merge_all_pairs", "--data_dir", str(tmp_path / "eval_results"),
        "--output", str(tmp_path / "eval_results" / "merged_all_pairs.x.csv"))
    merged = provenance.read_provenance(tmp_path / "eval_results")["records"]["merged_all_pairs.x.csv"]
    assert merged["upstream"][0]["provenance"].endswith("pairs/provenance.json#gsm8k.train.pairs.csv")

    # dataset: <name>.provenance.json beside the dataset file (the data dir holds many datasets)
    lf = tmp_path / "lf_data"
    cli("prepare_dataset.py", "--pairs", str(tmp_path / "eval_results" / "merged_all_pairs.x.csv"),
        "--output_dir", str(lf), "--name", "tiny")
    dataset = provenance.read_provenance(lf / "tiny.provenance.json")["records"]["tiny.json"]
    assert dataset["output"]["sha256"] == sha256(lf / "tiny.json")
    assert dataset["settings"]["name"] == "tiny" and dataset["tokenizer"]["fingerprint"]
    assert dataset["upstream"][0]["stage"] == "pairs"

    out = cli("post_process_test_result.py", "--provenance", str(run / "gsm8k.train.None.csv")).stdout
    assert "eval set  : 5 tasks, sha256 " + record["eval_set"]["sha256"][:12] in out
    assert "shards    : 2 of 2 (0, 1)" in out and "tasks/train.txt" in out


def test_a_worker_refuses_to_join_a_run_made_from_other_data(fake_server, tmp_path):
    data = tmp_path / "data"
    write_tasks(data, "train", 4)
    server = fake_server(fakes.scripted_reply)
    cfg = resolve_sampler_config("codeact_agent_tree", "gsm8k", TREE + [
        f"env={__name__}:FileTasksEnv", f"data_dir={data}"])
    run_worker(cfg, "fake", server.base_url, 0, 2, tmp_path / "run")
    write_tasks(data, "train", 4, extra="# edited\n")  # same tasks, different file
    with pytest.raises(provenance.ProvenanceMismatch, match="different data_files.sha256"):
        run_worker(cfg, "fake", server.base_url, 1, 2, tmp_path / "run")
    assert not (tmp_path / "run" / "gsm8k.train.1.csv").exists()


def evaluate(server, out: Path, data: Path, *extra: str) -> Path:
    cfg = resolve_sampler_config("codeact_agent", "gsm8k", EVAL + [f"env={__name__}:FileTasksEnv",
                                                                   f"data_dir={data}", "split=test", *extra])
    run_worker(cfg, "fake", server.base_url, 0, 1, out)
    cli("post_process_test_result.py", "--merge_distributed_result", "--data_dir", str(out),
        "--dataset_file_name_list", "gsm8k.test.{}.csv")
    return out / "gsm8k.test.None.csv"


def see_score(*args: str, code: int) -> subprocess.CompletedProcess:
    return cli("post_process_test_result.py", "--see_score", *args, code=code)


def test_see_score_refuses_results_of_different_eval_sets(fake_server, tmp_path):
    server = fake_server(fakes.scripted_reply)
    data = tmp_path / "data"
    write_tasks(data, "test", 6)
    base = evaluate(server, tmp_path / "base", data)
    same = evaluate(server, tmp_path / "same", data)
    fewer = evaluate(server, tmp_path / "fewer", data, "max_tasks=4")

    ok = see_score("--files", str(base), str(same), "--labels", "base", "same", "--output", str(tmp_path / "ok"),
                   code=0)
    assert "NOT COMPARABLE" not in ok.stdout and "Provenance per result" in ok.stdout
    eval_set = provenance.task_set_sha256([str(i) for i in range(6)])
    assert ok.stdout.count(f"{eval_set[:12]} (6)") == 2

    refused = see_score("--files", str(base), str(fewer), "--labels", "base", "fewer", code=2)
    assert refused.stderr.count("\n") == 1
    assert "'base' vs 'fewer': different task sets (6 vs 4 tasks, 4 shared" in refused.stderr

    marked = see_score("--files", str(base), str(fewer), "--labels", "base", "fewer", "--allow_mismatch",
                       "--output", str(tmp_path / "marked"), code=0)
    assert marked.stdout.startswith("!! NOT COMPARABLE (--allow_mismatch): gsm8k: 'base' vs 'fewer'")
    assert (tmp_path / "marked.md").read_text().startswith("**!! NOT COMPARABLE")
    with (tmp_path / "marked.csv").open() as fh:
        tidy = list(csv.DictReader(fh))
    assert {r["comparable"] for r in tidy} == {"no"}
    assert {r["eval_set_sha256"] for r in tidy if r["label"] == "base"} == {eval_set}

    # same task ids, but the data file they were read from differs
    other = tmp_path / "other_data"
    write_tasks(other, "test", 6, extra="# another version\n")
    edited = evaluate(server, tmp_path / "edited", other)
    refused = see_score("--files", str(base), str(edited), "--labels", "base", "edited", code=2)
    assert "different data files: tasks/test.txt" in refused.stderr


def test_model_fingerprint_follows_weight_files_and_is_cached(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    weights = model / "model.safetensors"
    weights.write_bytes(b"\x00" * 4096)
    (model / "training_args.bin").write_bytes(b"not part of the model")
    first = provenance.model_fingerprint(model)
    assert set(first["files"]) == {"config.json", "model.safetensors"}
    assert first["files"]["model.safetensors"] == hashlib.sha256(b"\x00" * 4096).hexdigest()

    calls = []
    real = hashing._sha256_of
    monkeypatch.setattr(hashing, "_sha256_of", lambda p: calls.append(p.name) or real(p))
    hashing._memo.clear()  # a new process: the on-disk cache answers
    assert provenance.model_fingerprint(model)["fingerprint"] == first["fingerprint"] and calls == []

    stat = weights.stat()
    with weights.open("r+b") as fh:  # same size, one byte changed, written a second later
        fh.seek(100)
        fh.write(b"\x01")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    changed = provenance.model_fingerprint(model)
    assert calls == ["model.safetensors"] and changed["fingerprint"] != first["fingerprint"]
    assert changed["files"]["config.json"] == first["files"]["config.json"]
    assert provenance.model_fingerprint(None, "served-name")["fingerprint"] is None


def test_data_files_of_real_envs_are_hashed(tmp_path):
    from envs import load_env

    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    lines = [json.dumps({"question": f"{i} + 1?", "answer": f"#### {i + 1}"}) for i in range(3)]
    (data / "gsm8k" / "test.jsonl").write_text("\n".join(lines) + "\n")
    env = load_env("gsm8k", split="test", data_dir=data)
    record = provenance.data_files_record(provenance.env_data_files(env))
    assert [(f["name"], f["sha256"]) for f in record["files"]] == [("gsm8k/test.jsonl", sha256(data / "gsm8k" / "test.jsonl"))]
    env_code = provenance.env_record("gsm8k", "test")
    assert "envs/math_grading.py" in env_code["code_files"] and "envs/sandbox.py" in env_code["code_files"]
    assert not any(name.startswith(("envs/alfworld_", "envs/babyai_")) for name in env_code["code_files"])
    assert set(env_code["packages"]) == {"math-verify", "sympy"}


def test_trained_model_records_dataset_and_base_model(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "tiny.json").write_text("[]")
    (data / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "tiny.json"}}))
    provenance.update_record(data / "tiny.provenance.json", "tiny.json", lambda _: {"stage": "dataset",
                                                                                    "upstream": ["up"]})
    base, out = tmp_path / "base", tmp_path / "out"
    for directory, weight in ((base, b"a"), (out, b"b")):
        directory.mkdir()
        (directory / "config.json").write_text("{}")
        (directory / "model.safetensors").write_bytes(weight)
    args = {"dataset": "tiny", "dataset_dir": str(data), "model_name_or_path": str(base), "stage": "dpo"}
    record_trained_model(out, args, "TreeDPO/configs/cpu_tiny.yaml")
    record = provenance.read_provenance(out)["records"]["model"]
    assert record["datasets"][0]["sha256"] == sha256(data / "tiny.json")
    assert record["datasets"][0]["upstream"] == ["up"]
    assert record["base_model"]["fingerprint"] == provenance.model_fingerprint(base)["fingerprint"]
    assert record["model"]["fingerprint"] != record["base_model"]["fingerprint"]
    assert record["settings"]["stage"] == "dpo"
    text = provenance.describe(out)
    assert "base model" in text and "dataset   : tiny" in text


def _append_many(prov_file: str, worker: int, n: int) -> None:
    for i in range(n):
        provenance.update_record(Path(prov_file), "run", lambda old, i=i: {"shards": (old or {}).get("shards", [])
                                                                           + [f"{worker}-{i}"]})


def test_concurrent_writers_lose_no_update(tmp_path):
    import multiprocessing

    prov_file = tmp_path / "run" / provenance.FILE_NAME
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(str(prov_file), w, 15)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    shards = provenance.read_provenance(prov_file)["records"]["run"]["shards"]
    assert sorted(shards) == sorted(f"{w}-{i}" for w in range(4) for i in range(15))
    assert [p.name for p in prov_file.parent.iterdir()] == [provenance.FILE_NAME]  # no temp or lock files left
