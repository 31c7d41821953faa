"""Multi-node TreeDPO training (issue 18, item 3), on one CPU machine.

What this covers: how a node finds its rank (NNODES/NODE_RANK, or a Slurm step's SLURM_PROCID; a multi-node run
without a rank is refused, never rank 0 by default); two `TreeDPO/train.py` "nodes" on this machine, started as a
cluster user starts them (same command, NNODES=2, NODE_RANK=0/1, MASTER_ADDR/MASTER_PORT), train one DPO step of
the session's tiny Llama (the embedded model's tokenizer) together over gloo (world size 2) and only node 0 writes
the output directory, exports, plots and records provenance; nodes started with different arguments both refuse,
naming the key; `TreeDPO/train.py ... --slurm` on a real single-node Slurm (tests/harness/slurm_local.py) runs the
same two-node training as one sbatch job with one srun step. Not covered: GPUs, NCCL, DeepSpeed across nodes, two
real hosts.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from densepolicy.config import ConfigError
from densepolicy.paths import PROJECT_ROOT
from densepolicy.training.launch import NodeGroup, distributed_env, first_slurm_host, free_port, node_placement
from densepolicy.training.slurm_train import batch_script, load_train_slurm_config
from densepolicy.training.train import check_servable
from tests.harness.slurm_local import start_or_skip
from tests.harness.treedpo_helpers import write_dataset

TRAIN_PY = PROJECT_ROOT / "TreeDPO" / "train.py"
# One DPO step of one pair per rank: the smallest real run of cpu_tiny (the plugin is single-process only;
# only the last layer trains, so the gloo all-reduce and the optimizer state stay small on a 2-core machine).
TINY = ["max_steps=1", "per_device_train_batch_size=1", "max_samples=2", "densepolicy_fast=false",
        "finetuning_type=freeze", "freeze_trainable_layers=1"]
LAUNCH_VARS = ("FORCE_TORCHRUN", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "MASTER_ADDR", "MASTER_PORT",
               "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def clean_env(monkeypatch):
    """No launch settings and no Slurm step inherited from the machine running the tests."""
    for name in list(os.environ):
        if name in LAUNCH_VARS or name.startswith("SLURM_"):
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mn_data")
    write_dataset(d, "tiny_tree_dpo", n=4)
    return d


def node_env(rank: int | None, nnodes: int, port: int, **extra: str) -> dict[str, str]:
    """The environment of one "node": this machine's, without GPUs or Slurm, plus the multi-node variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(NNODES=str(nnodes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="",
               DENSEPOLICY_NODE_TIMEOUT="120", **extra)
    if rank is not None:
        env["NODE_RANK"] = str(rank)
    return env


def start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TRAIN_PY), *args], cwd=PROJECT_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results


# ------------------------------------------------------------------------------------- the node's rank


def test_a_multi_node_run_without_a_rank_is_refused_not_rank_0(clean_env):
    env = {"NNODES": "2", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500", "CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(ConfigError, match=r"NNODES=2 but NODE_RANK is not set: set NODE_RANK=0\.\.1"):
        distributed_env({}, env)
    with pytest.raises(ConfigError, match=r"NODE_RANK='2' is not in 0\.\.1"):
        distributed_env({}, {**env, "NODE_RANK": "2"})
    with pytest.raises(ConfigError, match="NODE_RANK=1 is set but NNODES is not"):
        distributed_env({}, {"NODE_RANK": "1", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert distributed_env({}, {**env, "NODE_RANK": "1"})["NODE_RANK"] == "1"


def test_several_nodes_are_distributed_even_without_a_gpu(clean_env):
    env = distributed_env({}, {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h0", "MASTER_PORT": "29500",
                               "CUDA_VISIBLE_DEVICES": ""})
    assert env == {"FORCE_TORCHRUN": "1", "NNODES": "2", "NODE_RANK": "0", "NPROC_PER_NODE": "1",
                   "MASTER_ADDR": "h0", "MASTER_PORT": "29500"}


def test_a_slurm_step_gives_the_rank_nodes_and_master(clean_env):
    step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "2", "SLURM_JOB_ID": "4242",
            "SLURM_STEP_NODELIST": "gpu[07-09]", "SLURM_JOB_NODELIST": "gpu[07-09]"}
    placement = node_placement(step)
    assert (placement.nnodes, placement.node_rank, placement.master_addr) == (3, 2, "gpu07")
    assert placement.master_port == node_placement({**step, "SLURM_PROCID": "0"}).master_port  # same on every node
    explicit = node_placement({**step, "MASTER_ADDR": "ib-gpu07", "MASTER_PORT": "29511"})
    assert (explicit.master_addr, explicit.master_port, explicit.node_rank) == ("ib-gpu07", "29511", 2)
    # the batch script of a 2-node job is not a step: training there would use one node and hang
    with pytest.raises(ConfigError, match="2 nodes .* outside srun"):
        node_placement({"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2", "SLURM_PROCID": "0"})
    assert node_placement({"SLURM_JOB_ID": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "8"}).nnodes == 1


@pytest.mark.parametrize("nodelist,first", [("gpu[07-09,12],cpu1", "gpu07"), ("node1,node2", "node1"),
                                            ("vm", "vm"), ("a[003,001]-ib", "a003-ib")])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_nodes_that_disagree_both_refuse_and_node_0_prepares_nothing(clean_env):
    """The rendezvous itself, two "nodes" as threads: different fingerprints -> both raise, naming the key."""
    port = free_port()
    launch = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    prepared, errors = [], {}

    def node(rank: int, lr: float) -> None:
        try:
            group = NodeGroup({**launch, "NODE_RANK": str(rank)}, timeout_s=30)
            group.meet({"args": {"learning_rate": lr, "max_steps": 1}}, lambda: prepared.append(rank) or {})
            group.close()
        except ConfigError as exc:
            errors[rank] = str(exc)

    threads = [threading.Thread(target=node, args=(r, lr)) for r, lr in ((1, 1e-5), (0, 5e-6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert prepared == []
    assert set(errors) == {0, 1}
    for message in errors.values():
        assert "disagree" in message and "args.learning_rate: 5e-06 vs 1e-05" in message


def test_a_node_that_never_comes_is_named(clean_env):
    group = NodeGroup({"NNODES": "3", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}, timeout_s=1.5)
    with pytest.raises(ConfigError, match=r"node\(s\) 1, 2 of NNODES=3 did not join"):
        group.meet({"a": 1}, lambda: {})
    group.close()


# ------------------------------------------------------------------------- two nodes, real training


@pytest.mark.integration
def test_two_nodes_train_together_through_train_py_and_only_node_0_writes(dataset_dir, tiny_llama, tmp_path):
    out = tmp_path / "model"
    port = free_port()
    args = ["cpu_tiny", "--dataset", "tiny_tree_dpo", "--dataset-dir", str(dataset_dir), "--output-dir", str(out),
            "--model", str(tiny_llama), *TINY]
    procs = [start_node(args, node_env(1, 2, port)), start_node(args, node_env(0, 2, port))]  # rank 1 first
    (rc1, out1, err1), (rc0, out0, err0) = finish(procs, timeout=420)
    assert rc0 == 0, out0 + err0
    assert rc1 == 0, out1 + err1
    assert f"trained model: {out}" in out0
    assert "node 1 of 2: training done" in out1 and "trained model" not in out1

    log0, log1 = (out / "train.log").read_text(), (out / "train.node1.log").read_text()
    assert "Process rank: 0, world size: 2" in log0 + log1 and "Process rank: 1, world size: 2" in log0 + log1
    assert "Total train batch size (w. parallel, distributed & accumulation) = 2" in log0
    assert "Multi-node training enabled: num nodes: 2" in log0
    check_servable(out)
    info = json.loads((out / "densepolicy_train.json").read_text())
    assert info["launch"] == {"NNODES": "2", "NPROC_PER_NODE": "1"}
    assert (out / "dpo_loss.png").is_file() and (out / "provenance.json").is_file()
    assert "plots:" in out0 and "plots:" not in out1


@pytest.mark.integration
def test_two_nodes_with_different_arguments_both_refuse_before_training(dataset_dir, tmp_path):
    out = tmp_path / "model"
    port = free_port()
    base = ["cpu_tiny", "--dataset", "tiny_tree_dpo", "--dataset-dir", str(dataset_dir), "--output-dir", str(out),
            *TINY]
    procs = [start_node(base + ["learning_rate=1e-5"], node_env(0, 2, port)),
             start_node(base + ["learning_rate=2e-5"], node_env(1, 2, port))]
    results = finish(procs, timeout=300)
    for rc, stdout, stderr in results:
        assert rc == 2, stdout + stderr
        assert "the nodes disagree on the training run" in stderr and "args.learning_rate: 1e-05 vs 2e-05" in stderr
    assert not out.exists()  # node 0 refused before writing anything


def test_a_multi_node_command_without_a_rank_exits_with_one_line(dataset_dir, tmp_path):
    env = node_env(None, 2, free_port())
    done = subprocess.run([sys.executable, str(TRAIN_PY), "cpu_tiny", "--dataset", "tiny_tree_dpo", "--dataset-dir",
                           str(dataset_dir), "--output-dir", str(tmp_path / "m"), *TINY], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: NNODES=2 but NODE_RANK is not set")
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------- Slurm


def test_job_script_runs_one_train_py_per_node_with_srun(tmp_path):
    settings = load_train_slurm_config(["slurm.nodes=4", "slurm.gpus_per_node=8", "slurm.time='12:00:00'",
                                        "slurm.extra_args=['--account=x']"]).slurm
    script = batch_script(settings, ["TreeDPO/train.py", "gpu_full_zero3", "--dataset", "d"], tmp_path, "/v/python")
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:8",
                 "#SBATCH --time=12:00:00", "#SBATCH --account=x", "unset NNODES NODE_RANK",
                 "srun --kill-on-bad-exit=1 --nodes=4 --ntasks-per-node=1 /v/python TreeDPO/train.py gpu_full_zero3"):
        assert line in script
    with pytest.raises(ConfigError, match="slurm.tasks_per_node"):
        load_train_slurm_config(["slurm.tasks_per_node=2"])  # with the default 8 GPUs per node
    with pytest.raises(ConfigError, match="slurm.time"):
        load_train_slurm_config(["slurm.time=12:00:00"])


def test_slurm_settings_without_slurm_and_the_plugin_on_several_nodes_are_refused(dataset_dir, tmp_path):
    common = [sys.executable, str(TRAIN_PY), "cpu_tiny", "--dataset", "tiny_tree_dpo", "--dataset-dir",
              str(dataset_dir), "--output-dir", str(tmp_path / "m")]
    done = subprocess.run(common + ["slurm.nodes=2"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2 and "slurm.nodes=2: Slurm settings need --slurm" in done.stderr
    done = subprocess.run(common + ["--slurm", "slurm.gpus_per_node=0", "slurm.sbatch=/nonexistent/sbatch"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2 and "'densepolicy_fast'" in done.stderr and "2 nodes" in done.stderr


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = start_or_skip(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.mark.integration
@pytest.mark.slurm
def test_slurm_job_trains_on_two_tasks_with_one_command(slurm, dataset_dir, tiny_llama, tmp_path):
    """`--slurm` on the local one-node Slurm: 2 train.py tasks on that node stand in for 2 nodes (same srun
    step, ranks from SLURM_PROCID, MASTER_ADDR/MASTER_PORT from the job script)."""
    out = tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(slurm.env, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(TRAIN_PY), "cpu_tiny", "--dataset", "tiny_tree_dpo", "--dataset-dir",
                           str(dataset_dir), "--output-dir", str(out), "--model", str(tiny_llama), *TINY,
                           "--slurm", "slurm.nodes=1",
                           "slurm.tasks_per_node=2", "slurm.gpus_per_node=0", "slurm.cpus_per_task=1",
                           "slurm.wait=true", "slurm.node_timeout_s=300"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False, timeout=540)
    logs = out.with_name("model.slurm")
    job_logs = sorted(logs.glob("slurm-*.out"))
    assert done.returncode == 0, done.stdout + done.stderr + "".join(p.read_text()[-3000:] for p in job_logs)
    assert "submitted Slurm job" in done.stdout and "ended with exit code 0" in done.stdout
    script = (logs / "train_job.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "srun --kill-on-bad-exit=1" in script
    job_log = job_logs[-1].read_text()
    assert "2 train.py task(s)" in job_log and "node 1 of 2: training done" in job_log
    assert f"trained model: {out}" in job_log
    log0 = (out / "train.log").read_text()
    assert "Multi-node training enabled: num nodes: 2" in log0
    assert (out / "train.node1.log").is_file()
    check_servable(out)
    assert json.loads((out / "densepolicy_train.json").read_text())["launch"]["NNODES"] == "2"


def test_the_warm_start_refuses_to_build_on_several_nodes(clean_env, tmp_path):
    """Every node would rebuild (and delete) the same scratch directory: refused before anything is written."""
    from densepolicy.training.warm_start import ensure_warm_start

    for key, value in {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError, match="the warm start builds on one machine"):
        ensure_warm_start([f"output_dir={tmp_path / 'ws'}"], log=lambda _: None)
    assert not (tmp_path / ".ws.building").exists() and not (tmp_path / "ws").exists()


def test_two_nodes_on_one_host_that_would_both_take_every_gpu_are_refused(clean_env):
    launch = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    errors = {}

    def node(rank: int) -> None:
        try:
            group = NodeGroup({**launch, "NODE_RANK": str(rank)}, timeout_s=30)
            group.meet({"same": True}, lambda: {}, host_gpus=["0", "1"])
            group.close()
        except ConfigError as exc:
            errors[rank] = str(exc)

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(errors) == {0, 1} and all("both use GPU 0" in m for m in errors.values())


def test_a_node_that_cannot_see_node_0s_files_is_refused(tmp_path):
    from densepolicy.training.train import _wait_for_shared_file

    with pytest.raises(ConfigError, match="filesystem every node shares"):
        _wait_for_shared_file(tmp_path / "train_config.yaml", "0" * 64, 1, wait_s=0.5)
