"""Launcher behind `distributed_test.sh`: vLLM servers + sample_tree.py workers in tmux or as a Slurm array.

Modules, one concept each: `config` (launcher.yaml), `gpus` (detection), `plan` (shards, slots, command
lines), `prepare` (checks + output dir claim), `manifest` (run identity of an output dir), `registry`
(run records for status/stop), `supervise` (log tee + exit code per process), `tmux_backend` /
`local_run` (one box), `slurm_backend` / `slurm_task` (clusters), `health`, `progress`, `status`,
`commands`, `cli`.
"""
