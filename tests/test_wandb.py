"""``--wandb PROJECT``: every per-epoch metric, the config and the summary as a Weights & Biases run,
tested in W&B's offline mode (no network; the run is written under WANDB_DIR)."""

from __future__ import annotations

import json
import struct

import pytest

from fastpg import Config, ConfigError, train
from fastpg.cli import main

wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install 'fastpg-rl[wandb]'")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    wandb.teardown()  # wandb reads its settings (WANDB_DIR) once per process: start afresh
    yield tmp_path
    wandb.teardown()


# record type -> its key/value items (``run``: the config given to wandb.init)
_ITEMS = {
    "history": lambda r: r.history.item,
    "config": lambda r: r.config.update,
    "run": lambda r: r.run.config.update,
    "summary": lambda r: r.summary.update,
}


def _records(run_dir) -> dict[str, list[dict]]:
    """The run's records, read back from its ``.wandb`` file (W&B's transaction log: a 7-byte
    header, then LevelDB-log blocks of 32 kB holding protobuf ``Record``s): per record type
    (``history``, ``config``, ``summary``), the key -> value of each record."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", {"history": [], "config": [], "summary": []}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            kind_name = record.WhichOneof("record_type")
            if kind_name in _ITEMS:
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in _ITEMS[kind_name](record)}
                out["config" if kind_name == "run" else kind_name].append(row)
    return out


def _history(run_dir) -> list[dict]:
    return [row for row in _records(run_dir)["history"] if "env_steps" in row]


def test_a_run_logs_every_epoch_its_config_and_its_summary(offline):
    cfg = Config(num_envs=4, num_steps=32, max_epochs=3, eval_episodes=2, quiet=True, wandb="fastpg-tests", seed=4)
    summary = train(cfg)
    (run_dir,) = (offline / "wandb").glob("offline-run-*")
    rows = _history(run_dir)
    assert [r["env_steps"] for r in rows] == sorted(r["env_steps"] for r in rows) and len(rows) == 3
    assert {"train/loss", "train/entropy", "train/return_mean", "train/sps"} <= rows[0].keys()
    records = _records(run_dir)
    config = {k: v for update in records["config"] for k, v in update.items()}
    assert config["num_envs"] == 4 and config["seed"] == 4 and config["machine"]["fastpg"]  # config and versions
    logged = {k: v for update in records["summary"] for k, v in update.items()}
    assert logged["env_steps"] == summary["env_steps"] and logged["eval_return_mean"] == summary["eval_return_mean"]


def test_a_population_logs_one_run_per_member(offline, capsys):
    code = main(["train", "--seeds", "2", "--num-envs", "4", "--num-steps", "32", "--max-epochs", "2",
                 "--eval-episodes", "0", "--quiet", "--wandb", "fastpg-tests"])  # fmt: skip
    assert code == 0
    runs = sorted((offline / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(len(_history(r)) == 2 for r in runs)


def test_a_blank_project_is_refused():
    with pytest.raises(ConfigError, match="wandb: must be a Weights & Biases project name"):
        Config(wandb=" ")
