"""Data-parallel training (fastpg.distributed): 2 gloo ranks launched by torchrun, on the loopback.

Each test launches ``torchrun --standalone --nproc-per-node 2`` (a free port every time) and
compares with a one-process run of the same global N and seed on the generic path (``fused
off``, which every rank runs). Tolerance: the trajectories (episodes, returns, lengths, env states,
generator states) are equal exactly; the update's floats are sums split over two ranks, so they
agree with one process's to float32 rounding: relative 1e-4 (absolute 1e-6 near zero) after
several updates.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from processes import alive, children

from fastpg import Config, Trainer
from fastpg._kernels import kernels
from fastpg.checkpoint import load_checkpoint
from fastpg.distributed import Shard, backend_for, rank_device
from fastpg.errors import ConfigError, KernelBuildError

WORKER = Path(__file__).with_name("dist_worker.py")
TIMING = ("wall_s", "sps", "collect_s", "update_s", "comm_s", "train_wall_s", "time_to_solve_s")
FLOATS = ("loss", "policy_loss", "value_loss", "entropy", "grad_norm", "mask_frac")
RTOL, ATOL = 1e-4, 1e-6

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun launches on POSIX here")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun(*args: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *args]


def _launch(*args: str, timeout: float = 120, processes: int = 2) -> subprocess.CompletedProcess:
    cmd = _torchrun(*args, processes=processes)
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train_cmd(*flags: str) -> list[str]:
    return [
        "-m",
        "fastpg",
        "train",
        "--num-envs",
        "16",
        "--num-steps",
        "64",
        "--fused",
        "off",
        "--device",
        "cpu",
        *flags,
    ]


def _one_process(overrides: dict) -> tuple[list[dict], Trainer]:
    torch.set_num_threads(1)
    cfg = Config(**{"fused": "off", "eval_episodes": 0, "quiet": True, "device": "cpu", **overrides})
    trainer = Trainer(cfg)
    return list(trainer.run()), trainer


def _assert_metrics_match(one: list[dict], two: list[dict]) -> None:
    assert len(one) == len(two)
    for a, b in zip(one, two):
        for key in a:
            if key in TIMING:
                continue
            if key in FLOATS:
                assert math.isclose(a[key], b[key], rel_tol=RTOL, abs_tol=ATOL), (a["epoch"], key, a[key], b[key])
            else:
                assert a[key] == b[key], (a["epoch"], key, a[key], b[key])


@pytest.mark.parametrize(
    "overrides",
    [
        # resets drawn for every copy and selected (N <= 512); mean baseline + entropy bonus
        {"num_envs": 16, "num_steps": 64, "max_epochs": 4, "baseline": "mean", "seed": 3},
        # N > 512: only the done copies draw; the ranks exchange their done counts every step
        {"num_envs": 1024, "num_steps": 16, "max_epochs": 3},
        # a value baseline (a second network, bootstrapped unfinished episodes)
        {"num_envs": 16, "num_steps": 32, "max_epochs": 3, "baseline": "value", "unfinished": "bootstrap"},
        # gymnasium's SyncVectorEnv: each rank's copies seeded as the one process seeds them
        {"num_envs": 8, "num_steps": 32, "max_epochs": 3, "backend": "sync"},
        # what MuJoCo runs use: observation statistics summed across ranks, the schedule, the bound
        {
            "env": "Pendulum-v1",
            "num_envs": 8,
            "num_steps": 50,
            "max_epochs": 3,
            "obs_norm": True,
            "lr_schedule": "linear",
            "action_bound": "tanh",
            "init": "orthogonal",
            "last_layer_scale": 0.01,
        },
        # the fused epoch on every rank (compiled collect and update), against one fused process
        {"num_envs": 32, "num_steps": 64, "max_epochs": 4, "fused": "auto", "baseline": "mean"},
        {"num_envs": 1024, "num_steps": 16, "max_epochs": 3, "fused": "auto", "env": "Acrobot-v1"},
        # two ranks sharing one GPU over gloo (the CUDA path's sums and gathers on device tensors)
        pytest.param(
            {
                "num_envs": 16,
                "num_steps": 64,
                "max_epochs": 4,
                "baseline": "mean",
                "device": "cuda:0",
                "dist_backend": "gloo",
            },
            marks=CUDA,
        ),
    ],
    ids=[
        "select-resets",
        "draw-done-resets",
        "value-baseline",
        "gymnasium-sync",
        "mujoco-options",
        "fused",
        "fused-draw-done",
        "cuda-gloo",
    ],
)
def test_two_ranks_learn_what_one_process_learns(tmp_path, overrides):
    if overrides.get("fused") == "auto":
        _build_kernels()  # here, once: the ranks load them from the cache within the launch's timeout
    done = _launch(str(WORKER), str(tmp_path), json.dumps(overrides))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    one, trainer = _one_process(overrides)
    with trainer:
        path = "fused" if overrides.get("fused") == "auto" else "generic"  # the path meant, on every process
        assert [r["path"] for r in ranks] == [path, path] and (trainer.fused is not None) == (path == "fused")
        _assert_metrics_match(one, ranks[0]["metrics"])
        assert _untimed(ranks[1]["metrics"]) == _untimed(ranks[0]["metrics"])  # each rank: the whole job
        for name, p in ranks[0]["params"].items():  # identical on every rank, bit for bit
            assert torch.equal(p, ranks[1]["params"][name]), name
            torch.testing.assert_close(p, trainer.policy.state_dict()[name], rtol=RTOL, atol=ATOL)
        # Every rank drew what the one process drew: the generators are where its are.
        native = hasattr(trainer.env, "generator")
        for r in ranks:
            assert torch.equal(r["generator"], trainer.generator.get_state())
            if native:
                assert torch.equal(r["env_generator"], trainer.env.generator.get_state())
        # The gathered checkpoint state is the one process's: same env states, same carry.
        mine = trainer.state_dict()
        assert (state["env"] is None) == (mine["env"] is None) == (not native)
        for key in ("state", "final", "elapsed") if native else ():
            assert torch.equal(state["env"][key].cpu(), mine["env"][key].cpu()), key
        for key in ("obs", "episode_return", "episode_length"):
            assert torch.equal(state["carry"][key].cpu(), mine["carry"][key].cpu()), key
        assert state["window"] == mine["window"] and state["epoch"] == mine["epoch"]


def test_ranks_that_diverge_are_caught_at_the_checkpoint(tmp_path):
    """Parameters, optimizer state and generators are compared across ranks whenever the state is
    taken (checkpoints): a difference is a bug, said in one line instead of saved."""
    done = _launch(
        str(WORKER), str(tmp_path), json.dumps({"num_envs": 16, "num_steps": 32, "max_epochs": 1, "diverge": True})
    )
    assert done.returncode != 0 and not (tmp_path / "state.pt").exists()
    assert "the checkpoint: rank 1's parameters differ from rank 0's" in done.stderr, done.stderr[-3000:]


def _build_kernels() -> None:
    try:
        kernels()
    except KernelBuildError as e:
        pytest.skip(f"the fused epoch cannot be built here: {e}")


def test_shard_rows():
    shard = Shard(rank=1, world_size=4, total=64)
    assert (shard.size, shard.lo, shard.hi) == (16, 16, 32)
    assert torch.equal(shard.take(torch.arange(64)), torch.arange(16, 32))
    assert torch.equal(shard.take(torch.arange(128).view(2, 64), dim=1)[1], torch.arange(80, 96))


def _metrics(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if "epoch" in r and not r.get("summary") and isinstance(r["epoch"], int)]


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_resume_two_ranks_continues_bit_for_bit(tmp_path):
    """A 2-rank run stopped at epoch 3 and resumed by 2 ranks goes on exactly as the uninterrupted
    one; its checkpoint (the whole run's state) also resumes in one process, to rounding."""
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    ckpt = tmp_path / "ckpt"
    common = _train_cmd("--eval-episodes", "0", "--quiet")
    done = _launch(*common, "--max-epochs", "6", "--metrics-file", str(whole))
    assert done.returncode == 0, done.stderr[-3000:]
    done = _launch(*common, "--max-epochs", "3", "--metrics-file", str(part), "--checkpoint-dir", str(ckpt))
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 3 and state["config"]["num_envs"] == 16 and state["carry"]["obs"].shape[0] == 16
    done = _launch(*common, "--max-epochs", "6", "--metrics-file", str(part), "--resume", str(ckpt))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _untimed(_metrics(part)) == _untimed(_metrics(whole))
    headers = [r for r in map(json.loads, part.read_text().splitlines()) if r.get("header")]
    assert [h["processes"] for h in headers] == [2, 2] and headers[1]["resumed_at_epoch"] == 3
    # The same checkpoint in one process: the same run, to the update's rounding.
    cfg = Config(num_envs=16, num_steps=64, fused="off", eval_episodes=0, max_epochs=6, quiet=True, device="cpu")
    torch.set_num_threads(1)
    with Trainer(cfg) as trainer:
        trainer.load_state_dict(state)
        _assert_metrics_match(_metrics(whole)[3:], list(trainer.run()))


def _start(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, list[int]]:
    """A long 2-rank run; returns the launcher and its two workers once epochs are being written."""
    metrics = tmp_path / "m.jsonl"
    cmd = _torchrun(*_train_cmd("--max-epochs", "100000", "--metrics-file", str(metrics), *flags))
    launcher = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (metrics.exists() and len(_metrics(metrics)) >= 3):
        time.sleep(0.1)
    workers = sorted(children(launcher.pid), key=_rank)  # [rank 0, rank 1]
    assert len(_metrics(metrics)) >= 3 and len(workers) == 2, "the run did not start"
    return launcher, workers


def _rank(pid: int) -> int:
    """The RANK torchrun gave process ``pid``."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK="))[5:])


def _finish(launcher: subprocess.Popen, workers: list[int], within: float) -> tuple[str, str]:
    out, err = launcher.communicate(timeout=within)
    assert not any(alive(pid) for pid in workers), "a worker outlived the launcher"
    return out, err


@pytest.mark.parametrize("target", ["launcher", "rank 1"])
def test_sigterm_stops_every_rank_after_the_epoch(tmp_path, target):
    """SIGTERM to torchrun (which passes it on) or to one rank alone: every rank stops after the
    same epoch, rank 0 writes one checkpoint and the summary, no process is left."""
    ckpt = tmp_path / "ckpt"
    launcher, workers = _start(tmp_path, "--checkpoint-dir", str(ckpt), "--quiet", "--eval-episodes", "10")
    os.kill(launcher.pid if target == "launcher" else workers[1], signal.SIGTERM)
    out, err = _finish(launcher, workers, within=60)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == "interrupted (SIGTERM)" and summary["exit_code"] == 143, err[-2000:]
    assert len(out.strip().splitlines()) == 1  # one summary: rank 0's
    assert load_checkpoint(ckpt)["epoch"] == summary["epochs"]
    last = _metrics(tmp_path / "m.jsonl")[-1]
    assert last["epoch"] == summary["epochs"]


def test_a_rank_that_dies_ends_the_job_with_a_clear_error(tmp_path):
    launcher, workers = _start(tmp_path, "--quiet", "--dist-timeout-s", "30")
    started = time.monotonic()
    os.kill(workers[1], signal.SIGKILL)
    out, err = _finish(launcher, workers, within=60)
    assert launcher.returncode != 0
    assert time.monotonic() - started < 45  # the collective fails on the lost connection, not the timeout
    said = [line for line in err.splitlines() if line.startswith("fastpg: error")]
    assert said and "rank 0:" in said[0] and "another process of the job died" in said[0], err[-3000:]


def test_a_rank_that_hangs_ends_the_job_within_the_timeout(tmp_path):
    """A rank that stops answering (SIGSTOP) holds the others at most --dist-timeout-s."""
    launcher, workers = _start(tmp_path, "--quiet", "--dist-timeout-s", "3")
    os.kill(workers[1], signal.SIGSTOP)
    started = time.monotonic()
    try:
        while alive(workers[0]) and time.monotonic() - started < 30:
            time.sleep(0.1)
        waited = time.monotonic() - started
    finally:
        os.kill(workers[1], signal.SIGCONT)  # it then finds rank 0 gone, or torchrun stops it
    out, err = _finish(launcher, workers, within=60)
    assert 2.5 < waited < 15, waited
    said = [line for line in err.splitlines() if line.startswith("fastpg: error")]
    assert said and said[0].startswith("fastpg: error: rank 0:") and "Timed out" in said[0], err[-3000:]
    assert launcher.returncode != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_rendezvous_as_one_job(tmp_path):
    """The multi-node launch (c10d rendezvous), two one-process "nodes" on this machine: one job,
    the same metrics as the single-node 2-rank launch."""
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [tmp_path / "nodes.jsonl", tmp_path / "single.jsonl"]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    node += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "fastpg-test"]
    flags = _train_cmd("--max-epochs", "3", "--eval-episodes", "0", "--quiet")
    procs = [
        subprocess.Popen(
            [*node, *flags, "--metrics-file", str(nodes[0])], env=_env(), stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    done = _launch(*flags, "--metrics-file", str(nodes[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _untimed(_metrics(nodes[0])) == _untimed(_metrics(nodes[1]))


def test_uneven_split_is_refused_by_rank_zero_alone(tmp_path):
    done = _launch("-m", "fastpg", "train", "--num-envs", "15", "--max-epochs", "1", "--device", "cpu", timeout=60)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("fastpg: error")]
    assert said == [
        "fastpg: error: --num-envs: 15 env copies (the global count) cannot be split evenly over 2 processes; "
        "give a multiple of 2"
    ]


# -- CUDA: one GPU per process over NCCL; what a one-GPU machine can check ----------------------------


def test_backend_choice():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert backend_for(cpu, "auto", 1) == "gloo" and backend_for(gpu, "auto", 1) == "nccl"
    assert backend_for(gpu, "gloo", 2) == "gloo"  # gloo lets processes share a GPU
    with pytest.raises(ConfigError, match="dist_backend: 'nccl' carries CUDA tensors only"):
        backend_for(cpu, "nccl", 1)
    with pytest.raises(
        ConfigError, match="'cuda:0' for all 2 processes of this machine: NCCL needs one GPU per process"
    ):
        backend_for(gpu, "auto", 2)


def test_rank_device(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert rank_device("cpu", 2) == torch.device("cpu")
    assert rank_device("cuda:0", 2) == torch.device("cuda", 0)  # typed: kept (the GPU shared)
    if torch.cuda.device_count() >= 2:
        assert rank_device("cuda", 2) == torch.device("cuda", 1)
    else:  # every rank, rank 0 too, finds too few GPUs: the same error everywhere, said once
        with pytest.raises(ConfigError, match=r"'cuda' with 2 processes on this machine needs 2 GPUs .* but it has"):
            rank_device("cuda", 2)


@CUDA
def test_nccl_group_of_one_learns_what_one_process_learns(tmp_path):
    """The NCCL path on the one GPU a lent machine has: a group of one process (every collective
    of the update, the gathers and the checkpoint on CUDA tensors) against one process without a
    group. Two NCCL ranks need two GPUs."""
    overrides = {"num_envs": 64, "num_steps": 64, "max_epochs": 4, "baseline": "mean", "device": "cuda"}
    done = _launch(str(WORKER), str(tmp_path), json.dumps({**overrides, "group_of_one": True}), processes=1)
    assert done.returncode == 0, done.stderr[-3000:]
    rank = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert (rank["backend"], rank["device"], rank["path"]) == ("nccl", "cuda:0", "generic")
    one, trainer = _one_process(overrides)
    with trainer:
        _assert_metrics_match(one, rank["metrics"])
        for name, p in rank["params"].items():
            torch.testing.assert_close(p, trainer.policy.state_dict()[name], rtol=RTOL, atol=ATOL)
        assert torch.equal(rank["generator"], trainer.generator.get_state())
        assert torch.equal(rank["env_generator"], trainer.env.generator.get_state())


@CUDA
@pytest.mark.parametrize(
    "device, said",
    [
        ("cuda:0", "--device: 'cuda:0' for all 2 processes of this machine: NCCL needs one GPU per process"),
        ("cuda", "--device: 'cuda' with 2 processes on this machine needs 2 GPUs (process i trains on cuda:i), but"),
    ],
)
def test_nccl_on_too_few_gpus_is_refused_in_one_line(device, said):
    if device == "cuda" and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has a GPU per process")
    done = _launch("-m", "fastpg", "train", "--device", device, "--max-epochs", "1", timeout=60)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("fastpg: error")]
    assert len(errors) == 1 and errors[0].startswith(f"fastpg: error: {said}"), done.stderr[-3000:]
