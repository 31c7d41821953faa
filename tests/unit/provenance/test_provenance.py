"""provenance.json for every stage, eval-set identity in merged CSVs and score tables, and --see_score
refusing to compare results of different task sets / data files (docs/formats.md, issue 12 item 1)."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from densepolicy import provenance
from densepolicy.config import ConfigError
from densepolicy.provenance import hashing, versions
from densepolicy.results_io import iter_csv
from densepolicy.sampling.config import resolve_sampler_config
from densepolicy.sampling.worker import run_worker
from densepolicy.training.model_record import record_trained_model
from tests.harness import fakes

ROOT = Path(__file__).resolve().parents[3]
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
    assert record["env"]["code_files"] == {"tests/unit/provenance/test_provenance.py": sha256(Path(__file__))}
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

    # every record written reads back typed, as its kind, and writes back the same JSON
    written = [p for p in tmp_path.rglob("*provenance.json") if "cache" not in p.parts]
    assert len(written) == 4
    for path in written:
        raw = provenance.read_provenance(path)["records"]
        typed = provenance.read_records(path)
        assert {key: r.to_dict() for key, r in typed.items()} == raw
    assert type(provenance.read_records(run)["gsm8k.train.None.csv"]) is provenance.SamplingRecord
    assert type(provenance.read_records(lf / "tiny.provenance.json")["tiny.json"]) is provenance.DatasetRecord


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
    up = provenance.Upstream(file=str(tmp_path / "x.pairs.csv"), provenance="elsewhere#x.pairs.csv", stage="pairs")
    provenance.update_record(data / "tiny.provenance.json", "tiny.json",
                             lambda _: provenance.DatasetRecord(file="tiny.json", upstream=(up,)))
    base, out = tmp_path / "base", tmp_path / "out"
    for directory, weight in ((base, b"a"), (out, b"b")):
        directory.mkdir()
        (directory / "config.json").write_text("{}")
        (directory / "model.safetensors").write_bytes(weight)
    args = {"dataset": "tiny", "dataset_dir": str(data), "model_name_or_path": str(base), "stage": "dpo"}
    record_trained_model(out, args, "TreeDPO/configs/cpu_tiny.yaml")
    record = provenance.read_provenance(out)["records"]["model"]
    assert record["datasets"][0]["sha256"] == sha256(data / "tiny.json")
    assert record["datasets"][0]["upstream"] == [up.to_dict()]
    assert record["datasets"][0]["provenance"] == f"{data / 'tiny.provenance.json'}#tiny.json"
    assert record["base_model"]["fingerprint"] == provenance.model_fingerprint(base)["fingerprint"]
    assert record["model"]["fingerprint"] != record["base_model"]["fingerprint"]
    assert record["settings"]["stage"] == "dpo"
    text = provenance.describe(out)
    assert "base model" in text and "dataset   : tiny" in text


def _append_many(prov_file: str, worker: int, n: int, key: str = "run") -> None:
    def add(old, i):
        run = old or provenance.SamplingRecord(file=key)
        return dataclasses.replace(run, shards={**run.shards, f"{worker}-{i}": provenance.ShardEntry(task_count=i)})
    for i in range(n):
        provenance.update_record(Path(prov_file), key, lambda old, i=i: add(old, i))


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


def test_writers_of_different_keys_both_land(tmp_path):
    """Two processes updating different records of one file at once: neither update is lost (the file is
    replaced whole, so only the lock keeps one writer from dropping the other's record)."""
    import multiprocessing

    prov_file = tmp_path / "run" / provenance.FILE_NAME
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(str(prov_file), w, 25, key)) for w, key in ((0, "a"), (1, "b"))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    records = provenance.read_records(prov_file)
    assert sorted(records["a"].shards) == sorted(f"0-{i}" for i in range(25))
    assert sorted(records["b"].shards) == sorted(f"1-{i}" for i in range(25))
    assert [p.name for p in prov_file.parent.iterdir()] == [provenance.FILE_NAME]


def test_updates_take_the_nfs_safe_lock_file_and_wait_for_its_holder(tmp_path):
    """The store's lock is densepolicy.file_lock's lock file beside provenance.json (safe on NFS, unlike
    flock): while another process holds it, an update waits; once released, it lands."""
    import multiprocessing

    from densepolicy.file_lock import OutputLock, lock_path

    prov_file = tmp_path / "run" / provenance.FILE_NAME
    prov_file.parent.mkdir()
    ctx = multiprocessing.get_context("fork")
    with OutputLock(lock_path(prov_file), "another node's update"):
        writer = ctx.Process(target=_append_many, args=(str(prov_file), 7, 1, "late"))
        writer.start()
        writer.join(1.0)
        assert writer.exitcode is None and not prov_file.exists()  # still waiting for the lock
    writer.join(30)
    assert writer.exitcode == 0
    assert list(provenance.read_records(prov_file)["late"].shards) == ["7-0"]
    assert sorted(p.name for p in prov_file.parent.iterdir()) == [provenance.FILE_NAME]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    from densepolicy.file_lock import lock_path

    prov_file = tmp_path / provenance.FILE_NAME
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(prov_file).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "token": "x"}))
    _append_many(str(prov_file), 0, 1)
    assert list(provenance.read_records(prov_file)["run"].shards) == ["0-0"]
    assert not lock_path(prov_file).exists()


def test_cached_hashes_are_read_without_waiting_for_the_cache_lock(tmp_path):
    import threading

    from densepolicy.file_lock import OutputLock, lock_path

    data = tmp_path / "data.txt"
    data.write_text("x")
    first = hashing.sha256_file(data)
    hashing._memo.clear()  # a new process: the on-disk cache answers
    found = []
    with OutputLock(lock_path(hashing.hash_cache_file()), "another worker hashing a new file"):
        reader = threading.Thread(target=lambda: found.append(hashing.sha256_file(data)), daemon=True)
        reader.start()
        reader.join(10)
        assert found == [first]


FIXTURES = ROOT / "tests" / "data" / "provenance_schema1"
"""provenance.json files as the dict-based code before the typed records wrote them (a two-shard tree-sampling
run with its merge, its pairs, the merged pairs, the dataset made from them, a model trained on it)."""


def test_records_of_schema_1_files_read_typed_and_write_back_unchanged():
    files = sorted(FIXTURES.rglob("*provenance.json"))
    assert len(files) == 5
    kinds = {}
    for path in files:
        raw = provenance.read_provenance(path)
        assert raw["schema"] == provenance.SCHEMA == 1
        for key, record in provenance.read_records(path).items():
            kinds[key] = type(record)
            assert record.to_dict() == raw["records"][key]          # nothing lost or changed
            assert provenance.parse_record(record.to_dict()) == record
    assert kinds == {"gsm8k.train.None.csv": provenance.SamplingRecord, "gsm8k.train.pairs.csv": provenance.PairsRecord,
                     "merged_all_pairs.x.csv": provenance.PairsRecord, "tiny.json": provenance.DatasetRecord,
                     "model": provenance.TrainingRecord}
    run = provenance.read_records(FIXTURES / "run")["gsm8k.train.None.csv"]
    assert run.stage == "sampling" and run.eval_set.task_ids == ("0", "1", "2", "3", "4")
    assert run.eval_set.sha256 == provenance.task_set_sha256(run.eval_set.task_ids)
    assert run.shards["1"].first_task == "3" and run.merged.complete is True
    assert run.data_files.hashes() == {"tasks/train.txt": run.data_files.files[0].sha256}
    assert run.model.served_name == "fake" and run.model.fingerprint is None
    model = provenance.read_records(FIXTURES / "model")["model"]
    assert model.datasets[0].upstream[0].stage == "pairs"
    assert model.base_model.fingerprint and model.model.fingerprint != model.base_model.fingerprint


def test_typed_records_round_trip_and_keep_keys_they_do_not_know(tmp_path):
    shard = provenance.ShardEntry(task_count=2, first_task="a", last_task="b", host="h", pid=1, started="t")
    record = provenance.SamplingRecord(
        stage="evaluation", file="gsm8k.test.None.csv", created="t", settings={"base": 3},
        eval_set=provenance.EvalSet.of(["b", "a"]), model=provenance.ServedModel(name="m", served_name="m"),
        shards={"0": shard})
    data = record.to_dict()
    assert "merged" not in data and "environment" not in data["shards"]["0"]  # written only when set
    assert data["eval_set"]["task_ids"] == ["b", "a"] and data["eval_set"]["sha256"] == provenance.task_set_sha256("ab")
    assert provenance.parse_record(json.loads(json.dumps(data))) == record
    with pytest.raises(provenance.RecordError, match="PairsRecord has stage pairs"):
        provenance.PairsRecord(stage="dataset")

    newer = {**data, "a_later_key": {"x": 1}, "shards": {"0": {**data["shards"]["0"], "gpu": "H200"}}}
    prov_file = tmp_path / provenance.FILE_NAME
    prov_file.write_text(json.dumps({"schema": 1, "records": {"gsm8k.test.None.csv": newer, "other": {"stage": "x"}}}))
    provenance.update_record(prov_file, "gsm8k.test.None.csv", lambda old: dataclasses.replace(old, updated="u"))
    raw = provenance.read_provenance(prov_file)["records"]
    assert raw["gsm8k.test.None.csv"] == {**newer, "updated": "u"}   # unknown keys kept, at every level
    assert raw["other"] == {"stage": "x"}                            # other records untouched
    assert type(provenance.read_records(prov_file)["other"]) is provenance.Record


@pytest.mark.parametrize("schema, says", [(2, "provenance schema 2 is newer than this checkout reads (schema 1)"),
                                          ("1", "unknown provenance schema '1'")])
def test_a_file_of_another_schema_is_refused_naming_it(tmp_path, schema, says):
    run = tmp_path / "run"
    run.mkdir()
    prov_file = run / provenance.FILE_NAME
    content = json.dumps({"schema": schema, "records": {"gsm8k.test.None.csv": {"stage": "evaluation"}}})
    prov_file.write_text(content)
    with pytest.raises(ConfigError, match="provenance schema") as refused:
        provenance.read_provenance(prov_file)
    assert str(refused.value).startswith(f"{prov_file}: ") and says in str(refused.value)
    with pytest.raises(ConfigError, match="provenance schema"):   # never overwritten by older code
        _append_many(str(prov_file), 0, 1, "gsm8k.test.None.csv")
    assert prov_file.read_text() == content
    out = cli("post_process_test_result.py", "--provenance", str(run), code=2)
    assert out.stderr.count("\n") == 1 and str(prov_file) in out.stderr and says in out.stderr


def test_a_record_of_the_wrong_shape_is_one_line_naming_file_and_field(tmp_path):
    prov_file = tmp_path / provenance.FILE_NAME
    prov_file.write_text(json.dumps({"schema": 1, "records": {"model": {"stage": "training", "datasets": [
        {"name": "d", "upstream": ["not an object"]}]}}}))
    with pytest.raises(ConfigError, match=r"damaged provenance record 'model': datasets\[0\]\.upstream\[0\]: "
                                          r"expected an object, found str"):
        provenance.read_records(prov_file)
