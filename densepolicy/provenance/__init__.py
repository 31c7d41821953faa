"""Provenance: which code, packages, data files, task ids, model and settings produced a result.

A small core that every stage calls with its own record; it imports no stage. Every stage writes a
`provenance.json` (schema in docs/formats.md) next to what it produced, through its own builder:

    record_sampling_shard(out_dir, cfg, env, task_ids, shard, num_shards, model)  # each worker (sampling/run_record.py)
    merged_columns(run_dir, "gsm8k.test.None.csv", task_ids)    # the merge (postprocess/output_records.py)
    record_pairs(pairs_csv, inputs, settings)                    # --process_result / --merge_all_pairs (same)
    record_dataset(dataset_json, pairs_csv, settings, sources)   # prepare_dataset -> <name>.provenance.json (same)
    record_trained_model(model_dir, train_args, config)          # TreeDPO training (training/model_record.py)

The core:

    hashing.py    digest, task-set hashes, file hashes (cached), data-file records, model fingerprints
    versions.py   git state, package versions, `environment()`, an env's own code and packages
    records.py    the typed records (frozen dataclasses: one per record kind and part, to_dict / from_dict) and
                  the format's schema version
    locking.py    the NFS-safe lock (densepolicy.file_lock) and atomic JSON write of provenance's files
    store.py      provenance.json: read (newer schemas refused), locked update of one record, which file holds
                  a path's record
    identity.py   what identifies a result; `comparability_problems` for --see_score; `upstream_summary`
    describe.py   `describe` for `--provenance` and `python -m densepolicy.provenance PATH`

The workers of one sampling run share ONE record per output (`gsm8k.test.None.csv`): its
shard-independent fields must agree, or the worker refuses to start (`ProvenanceMismatch`); each
worker adds its own entry under `shards`.
"""
from densepolicy.provenance.describe import describe
from densepolicy.provenance.hashing import (MODEL_FILE_NAMES, abbreviated, data_files_record, digest,
                                            eval_set_record, hash_cache_file, model_fingerprint, ordered_sha256,
                                            sha256_file, sha256_files, task_set_sha256)
from densepolicy.provenance.identity import (IDENTITY_HEADER, ProvenanceMismatch, ResultIdentity,
                                             comparability_problems, identity_rows, result_identity,
                                             upstream_summary)
from densepolicy.provenance.records import (SCHEMA, DataFile, DataFiles, DatasetRecord, EnvIdentity, Environment,
                                            EvalSet, GitState, MergedStamp, ModelFingerprint, OutputFile, OutputRecord,
                                            PairsRecord, Record, RecordError, SamplingRecord, ServedModel, ShardEntry,
                                            TrainedDataset, TrainingRecord, Upstream, parse_record, timestamp)
from densepolicy.provenance.store import (FILE_NAME, Found, dataset_provenance_path, find_record, read_provenance,
                                          read_records, update_record)
from densepolicy.provenance.versions import (ENV_FAMILY, ENV_PACKAGES, NOT_INSTALLED, RESULT_PACKAGES,
                                             SERVE_PACKAGES, env_code_files, env_data_files, env_record,
                                             environment, git_state, package_versions, serve_venv_versions)

__all__ = ["ENV_FAMILY", "ENV_PACKAGES", "FILE_NAME", "IDENTITY_HEADER", "MODEL_FILE_NAMES", "NOT_INSTALLED",
           "RESULT_PACKAGES", "SCHEMA", "SERVE_PACKAGES", "DataFile", "DataFiles", "DatasetRecord", "EnvIdentity",
           "Environment", "EvalSet", "Found", "GitState", "MergedStamp", "ModelFingerprint", "OutputFile",
           "OutputRecord", "PairsRecord", "ProvenanceMismatch", "Record", "RecordError", "ResultIdentity",
           "SamplingRecord", "ServedModel", "ShardEntry", "TrainedDataset", "TrainingRecord", "Upstream",
           "abbreviated", "comparability_problems", "data_files_record", "dataset_provenance_path", "describe",
           "digest", "env_code_files", "env_data_files", "env_record", "environment", "eval_set_record",
           "find_record", "git_state", "hash_cache_file", "identity_rows", "model_fingerprint", "ordered_sha256",
           "package_versions", "parse_record", "read_provenance", "read_records", "result_identity",
           "serve_venv_versions", "sha256_file", "sha256_files", "task_set_sha256", "timestamp", "update_record",
           "upstream_summary"]
