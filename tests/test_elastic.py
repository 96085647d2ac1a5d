"""Restart after a failure (issue 23): a run killed at any moment and started again by the same
command (``--resume auto`` under a supervisor; a torchrun restart, ``--max-restarts``) continues
from its last checkpoint by itself, and its per-epoch metrics equal an uninterrupted run's.

The kills are real SIGKILLs at chosen moments (``fastpg._crash``: mid-epoch, mid-checkpoint-write,
right after the rename)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastpg.checkpoint import load_checkpoint

TRAIN = ["-m", "fastpg", "train", "--num-envs", "16", "--num-steps", "64", "--device", "cpu", "--eval-episodes", "0",
         "--quiet", "--checkpoint-every", "2", "--target-return", "1e9"]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(name, None)
    env.update(extra)
    return env


def _epochs(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    untimed = lambda m: {k: v for k, v in m.items() if not k.endswith("_s") and k != "sps"}  # noqa: E731
    return [untimed(m) for m in rows if isinstance(m.get("epoch"), int) and not m.get("summary")]


def _summary(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=300)


def _torchrun(*args: str, restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--max-restarts", str(restarts), *args]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, list[dict]]:
    """The runs the interrupted ones must equal: one process, and two gloo ranks (generic path)."""
    tmp = tmp_path_factory.mktemp("whole")
    one, two = tmp / "one.jsonl", tmp / "two.jsonl"
    done = _run([sys.executable, *TRAIN, "--max-epochs", "8", "--metrics-file", str(one)])
    assert done.returncode == 0, done.stderr[-3000:]
    done = _run(_torchrun(*TRAIN, "--fused", "off", "--max-epochs", "6", "--metrics-file", str(two), restarts=0))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"one": _epochs(one), "two": _epochs(two)}


@pytest.mark.parametrize("point, count", [("epoch", 5), ("checkpoint-write", 2), ("checkpoint-renamed", 3)])
def test_the_same_command_after_a_kill_continues_the_run(tmp_path, uninterrupted, point, count):
    """One process under a supervisor: ``--resume auto`` starts the run the first time, and after a
    SIGKILL at any moment the same command continues it from its last checkpoint."""
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    cmd = [sys.executable, *TRAIN, "--max-epochs", "8", "--metrics-file", str(metrics), "--checkpoint-dir", str(ckpt),
           "--resume", "auto"]  # fmt: skip
    crash = f"{point}:{count}:0:{tmp_path / 'crashed'}"
    first = _run(cmd, FASTPG_CRASH_AT=crash)
    assert first.returncode == -9 and (tmp_path / "crashed").exists(), first.stderr[-3000:]
    again = _run(cmd, FASTPG_CRASH_AT=crash)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"fastpg: restart: continuing the run checkpointed in {ckpt}" in again.stderr
    assert _epochs(metrics) == uninterrupted["one"]  # every epoch exactly once, as if never killed
    assert _summary(metrics)["restarts"] == 1 and load_checkpoint(ckpt)["epoch"] == 8


def test_a_first_start_with_resume_auto_starts_afresh_and_says_so(tmp_path):
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    metrics.write_text("{}\n")  # left by an attempt that died before its first checkpoint
    done = _run([sys.executable, *TRAIN, "--max-epochs", "2", "--metrics-file", str(metrics), "--checkpoint-dir",
                 str(ckpt), "--resume", "auto"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"no checkpoint in {ckpt} yet: starting afresh (replacing {metrics})" in done.stderr
    assert len(_epochs(metrics)) == 2 and _summary(metrics)["restarts"] == 0


@pytest.mark.parametrize(
    "crash",
    ["epoch:4:1", "checkpoint-write:2:0", "checkpoint-renamed:2:0"],  # rank 1 mid-epoch; rank 0 writing
)
def test_torchrun_restarts_a_killed_rank_and_the_job_continues(tmp_path, uninterrupted, crash):
    """Two gloo ranks under ``torchrun --max-restarts 3``: a rank killed mid-epoch, mid-write or
    right after the rename; torchrun restarts the job, which finds its checkpoint and continues:
    exit 0, per-epoch metrics equal to the uninterrupted run's, the restart counted."""
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    args = (
        *TRAIN,
        "--fused",
        "off",
        "--max-epochs",
        "6",
        "--metrics-file",
        str(metrics),
        "--checkpoint-dir",
        str(ckpt),
    )
    done = _run(_torchrun(*args, restarts=3), FASTPG_CRASH_AT=f"{crash}:{tmp_path / 'crashed'}")
    assert done.returncode == 0 and (tmp_path / "crashed").exists(), done.stderr[-3000:]
    assert _epochs(metrics) == uninterrupted["two"]
    assert _summary(metrics)["restarts"] == 1 and load_checkpoint(ckpt)["epoch"] == 6


def test_without_restarts_a_killed_rank_ends_the_job_and_its_checkpoint_loads(tmp_path):
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    args = (*TRAIN, "--fused", "off", "--max-epochs", "6", "--metrics-file", str(metrics), "--checkpoint-dir", str(ckpt),
            "--dist-timeout-s", "30")  # fmt: skip
    done = _run(_torchrun(*args, restarts=0), FASTPG_CRASH_AT=f"epoch:4:1:{tmp_path / 'crashed'}")
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("fastpg: error")]
    assert said and "rank 0:" in said[0] and "another process of the job died" in said[0], done.stderr[-3000:]
    assert load_checkpoint(ckpt)["epoch"] == 2  # the last whole checkpoint, before the kill in epoch 4
