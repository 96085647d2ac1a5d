"""``--wandb PROJECT``: every per-epoch metric, the config and the summary as a Weights & Biases run,
tested in W&B's offline mode (no network; the run is written under WANDB_DIR)."""

from __future__ import annotations

import json
import re
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


def _runs(wandb_dir) -> list:
    """The offline runs' directories, once W&B's service has written them out: ``finish`` returns
    before the service has flushed every run's log (a member's file was seen holding its header
    alone), so the service is shut down first."""
    wandb.teardown()
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def _history(run_dir) -> list[dict]:
    return [row for row in _records(run_dir)["history"] if "env_steps" in row]


def test_a_run_logs_every_epoch_its_config_and_its_summary(offline):
    cfg = Config(num_envs=4, num_steps=32, max_epochs=3, eval_episodes=2, quiet=True, wandb="fastpg-tests", seed=4)
    summary = train(cfg)
    (run_dir,) = _runs(offline)
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
    runs = _runs(offline)
    assert len(runs) == 2 and all(len(_history(r)) == 2 for r in runs)


def _run_id(run_dir) -> str:
    """The W&B run id in an offline run's directory name: offline-run-<date>_<time>-<id>[-<n>] (W&B
    numbers a second directory of the same run and second)."""
    return re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", run_dir.name).group(1)


def test_a_resumed_run_logs_on_into_its_wandb_run_and_a_fresh_one_starts_another(offline, tmp_path):
    ckpt = tmp_path / "ckpt"
    cfg = Config(num_envs=4, num_steps=32, max_epochs=2, eval_episodes=0, quiet=True, wandb="fastpg-tests",
                 checkpoint_dir=ckpt, seed=1)  # fmt: skip
    train(cfg)
    train(cfg.replace(checkpoint_dir=None, resume=ckpt, max_epochs=4))
    first, resumed = _runs(offline)
    assert _run_id(first) == _run_id(resumed)
    assert [r["env_steps"] for r in _history(resumed)] == [128 * 3, 128 * 4]  # epochs 3 and 4
    moved = tmp_path / "moved"  # resumed from ckpt into another checkpoint directory: the same W&B run
    train(cfg.replace(checkpoint_dir=moved, resume=ckpt, max_epochs=5))
    assert json.loads((moved / "wandb-runs.json").read_text()) == json.loads((ckpt / "wandb-runs.json").read_text())
    train(cfg.replace(overwrite=True))  # a fresh run in the same directory: a W&B run of its own
    ids = {_run_id(r) for r in _runs(offline)}
    assert len(ids) == 2


def test_a_resumed_population_logs_on_into_its_members_runs(offline, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    flags = ["--eval-episodes", "0", "--quiet", "--wandb", "fastpg-tests"]
    start = ["train", "--seeds", "2", "--num-envs", "4", "--num-steps", "32", "--max-epochs", "1"]
    assert main([*start, *flags, "--checkpoint-dir", str(ckpt)]) == 0
    assert main(["train", "--resume", str(ckpt), "--max-epochs", "2", *flags]) == 0  # the members are the saved ones
    runs = _runs(offline)
    assert len(runs) == 4 and len({_run_id(r) for r in runs}) == 2


def test_a_blank_project_is_refused():
    with pytest.raises(ConfigError, match="wandb: must be a Weights & Biases project name"):
        Config(wandb=" ")
