"""Reliability (issue 5): checkpoints and resume, interrupts, determinism, numerical faults,
misbehaving environments, and output files that are never silently overwritten."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from faulty_envs import FaultyEnv

from fastpg import Config, Trainer, train
from fastpg.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from fastpg.cli import main
from fastpg.config import ConfigError
from fastpg.envs import EnvWorkerError, GymVectorEnv
from fastpg.trainer import NonFiniteError

TIMING = {"wall_s", "sps", "collect_s", "update_s"}
SMALL = dict(num_envs=8, num_steps=64, eval_episodes=0, quiet=True)


def _epochs(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows if not r.get("summary")]


# -- checkpoints and resume --------------------------------------------------------------------------


def test_resumed_native_run_has_the_same_metrics_bit_for_bit(tmp_path):
    full, part, ckpt = tmp_path / "full.jsonl", tmp_path / "part.jsonl", tmp_path / "ckpt"
    train(Config(**SMALL, seed=3, max_epochs=6, metrics_file=full))
    first = train(Config(**SMALL, seed=3, max_epochs=3, metrics_file=part, checkpoint_dir=ckpt, checkpoint_every=2))
    assert first["checkpoint"] == str(ckpt / CHECKPOINT_NAME) and load_checkpoint(ckpt)["epoch"] == 3
    second = train(Config(**SMALL, seed=3, max_epochs=6, metrics_file=part, resume=ckpt))
    assert second["resumed_from"] == str(ckpt) and second["epochs"] == 6 and second["epochs_this_run"] == 3
    assert _epochs(part) == _epochs(full)  # appended on resume; every figure equal, timings aside
    assert len(_epochs(full)) == 6


def test_checkpoint_holds_plain_data_only(tmp_path):
    with Trainer(Config(**SMALL)) as tr:
        tr.epoch()
        path = save_checkpoint(tr.state_dict(), tmp_path)
    state = torch.load(path, weights_only=True)  # no pickled code can run
    assert state["epoch"] == 1 and state["config"]["env"] == "CartPole-v1" and state["env"]["state"].shape == (4, 8)
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary file left behind


def test_a_file_that_needs_unpickling_code_is_refused(tmp_path):
    torch.save({"format": 1, "payload": functools.partial(print, "hi")}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ConfigError, match="not a readable fastpg checkpoint"):
        load_checkpoint(tmp_path)


def test_incompatible_checkpoint_is_refused_with_the_fields(tmp_path):
    train(Config(**SMALL, max_epochs=1, checkpoint_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"hidden_sizes: checkpoint \[128\], now \[64\]"):
        train(Config(**SMALL, max_epochs=2, resume=tmp_path, hidden_sizes=(64,)))
    with pytest.raises(ConfigError, match="env: checkpoint 'CartPole-v1', now 'Acrobot-v1'"):
        train(Config(**{**SMALL, "env": "Acrobot-v1"}, max_epochs=2, resume=tmp_path))


def test_missing_or_foreign_checkpoint_gives_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "--resume: no checkpoint at" in capsys.readouterr().err
    torch.save([1, 2, 3], tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ConfigError, match="not a fastpg checkpoint"):
        load_checkpoint(tmp_path)


_KILL_MID_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys, torch
    import fastpg.checkpoint as ck
    from fastpg import Config, train
    real_save, calls = torch.save, [0]
    def save(obj, f):
        calls[0] += 1
        if calls[0] == 3:  # the third checkpoint: half a file, then the process is killed
            f.write(b"x" * 1000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f)
    ck.torch.save = save
    train(Config(num_envs=8, num_steps=64, eval_episodes=0, quiet=True, seed=5, max_epochs=10,
                 checkpoint_dir=sys.argv[1], checkpoint_every=1, metrics_file=sys.argv[2]))
    """
)


def test_kill_mid_checkpoint_keeps_the_previous_one_and_resumes(tmp_path):
    ckpt, log = tmp_path / "ckpt", tmp_path / "m.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_MID_CHECKPOINT, str(ckpt), str(log)], capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(ckpt)["epoch"] == 2  # the torn third write never replaced it
    assert len(_epochs(log)) == 3  # every finished epoch reached the metrics file
    summary = train(Config(**SMALL, seed=5, max_epochs=4, resume=ckpt, metrics_file=log))
    assert summary["epochs"] == 4 and load_checkpoint(ckpt)["epoch"] == 4
    assert not list(ckpt.glob(".checkpoint-*"))  # the dead run's temporary file was cleared


# -- files are never silently overwritten -------------------------------------------------------------


def test_existing_metrics_file_and_checkpoint_are_refused_unless_overwrite(tmp_path, capsys):
    log, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    train(Config(**SMALL, max_epochs=1, metrics_file=log, checkpoint_dir=ckpt))
    before = log.read_text()
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        train(Config(**SMALL, max_epochs=1, metrics_file=log))
    with pytest.raises(ConfigError, match=f"{ckpt} already holds a checkpoint; pass --resume"):
        train(Config(**SMALL, max_epochs=1, checkpoint_dir=ckpt))
    assert log.read_text() == before
    code = main(["train", "--max-epochs", "1", "--metrics-file", str(log), "--quiet", "--eval-episodes", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fastpg: error: --metrics-file:")
    train(Config(**SMALL, max_epochs=2, metrics_file=log, checkpoint_dir=ckpt, overwrite=True))
    assert len(_epochs(log)) == 2 and load_checkpoint(ckpt)["epoch"] == 2


# -- interrupts ----------------------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_training(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    ckpt, log = tmp_path / "ckpt", tmp_path / "m.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "fastpg.cli",
        "train",
        "--num-envs",
        "2",
        "--num-steps",
        "64",
        "--max-env-steps",
        "100000000",
        "--checkpoint-dir",
        str(ckpt),
        "--metrics-file",
        str(log),
        "--quiet",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    return proc, ckpt, log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_after_the_epoch_with_checkpoint_summary_and_no_workers(tmp_path, sig):
    proc, ckpt, log = _start_training(tmp_path, "--backend", "async")
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the async env's worker processes
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == f"interrupted ({sig.name})" and summary["exit_code"] == 128 + sig
    assert summary["checkpoint"] == str(ckpt / CHECKPOINT_NAME)
    assert load_checkpoint(ckpt)["epoch"] == summary["epochs"] == len(_epochs(log))
    assert json.loads(log.read_text().splitlines()[-1])["summary"]
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)], "worker processes were left behind"


@pytest.mark.parametrize(
    "epoch",
    [("--fused", "off", "--num-steps", "20000"), ("--num-envs", "256", "--num-steps", "20000")],
    ids=["generic", "fused"],
)
def test_second_sigint_exits_at_once(tmp_path, epoch):
    # Long CPU epochs (a GPU runs them too fast for two signals within one): the first waits for the end.
    proc, ckpt, log = _start_training(tmp_path, "--device", "cpu", *epoch)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    assert '"summary"' not in out


# -- determinism ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "vector", "sync"])
def test_same_config_and_seed_give_identical_metrics(tmp_path, backend):
    logs = [tmp_path / f"{i}.jsonl" for i in range(2)]
    for log in logs:
        train(Config(**SMALL, backend=backend, seed=11, max_epochs=4, metrics_file=log))
    a, b = (_epochs(log) for log in logs)
    assert a == b and len(a) == 4


# -- numerical faults ----------------------------------------------------------------------------------


class _NanRewardEnv:
    """Wraps a BatchedEnv; copy ``index`` reports a NaN reward at every ``every``-th step."""

    def __init__(self, env, index: int, every: int):
        self.env, self.index, self.every, self.t = env, index, every, 0
        self.info, self.num_envs, self.device = env.info, env.num_envs, env.device

    def reset(self, seed=None):
        return self.env.reset(seed=seed)

    def step(self, action):
        step = self.env.step(action)
        self.t += 1
        if self.t % self.every == 0:
            reward = step.reward.clone()
            reward[self.index] = float("nan")
            step = step._replace(reward=reward)
        return step

    def close(self):
        self.env.close()


def test_nan_reward_is_reported_with_the_env_index_and_the_update_skipped():
    from fastpg.envs import make_env

    cfg = Config(**SMALL, max_bad_updates=3, device="cpu")
    with Trainer(cfg, env=_NanRewardEnv(make_env("CartPole-v1", 8), index=5, every=10**9)) as tr:
        tr.epoch()  # a clean epoch first
        tr.env.every = 7
        before = [p.detach().clone() for p in tr.policy.parameters()]
        opt_steps = tr.optimizer.state_dict()["state"][0]["step"].item()
        with pytest.warns(RuntimeWarning, match="non-finite reward or observation in env copy 5$"):
            m = tr.epoch()
        assert m["update_skipped"] and m["skipped_updates"] == 1 and m["nonfinite_envs"] == 1
        assert all(torch.equal(a, b) for a, b in zip(before, tr.policy.parameters()))
        assert tr.optimizer.state_dict()["state"][0]["step"].item() == opt_steps  # Adam never saw it
        with (
            pytest.warns(RuntimeWarning),
            pytest.raises(NonFiniteError, match=r"epoch 4: 3 updates in a row had a non-finite loss"),
        ):
            for _ in range(3):
                tr.epoch()


def test_nonfinite_parameter_is_named_and_training_stops_keeping_the_last_checkpoint(tmp_path, capsys):
    train(Config(**SMALL, max_epochs=2, checkpoint_dir=tmp_path))
    good = load_checkpoint(tmp_path)
    with Trainer(Config(**SMALL, max_bad_updates=1)) as tr:
        with torch.no_grad():
            tr.policy.net[0].weight[0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match="epoch 1: 1 updates in a row had a non-finite"):
            tr.epoch()
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == good["epoch"] and all(
        torch.equal(state["policy"][k], good["policy"][k]) for k in good["policy"]
    )


def test_nan_loss_from_a_policy_stops_the_cli_with_one_line(tmp_path, capsys, monkeypatch):
    import fastpg.policy

    real = fastpg.policy.MLPPolicy.forward

    def nan_forward(self, obs):
        dist = real(self, obs)
        return torch.distributions.Categorical(logits=dist.logits * float("nan"), validate_args=False)

    monkeypatch.setattr(fastpg.policy.MLPPolicy, "forward", nan_forward)
    code = main(
        [
            "train",
            "--max-epochs",
            "5",
            "--fused",
            "off",  # the generic path calls the patched forward
            "--max-bad-updates",
            "2",
            "--quiet",
            "--num-steps",
            "32",
            "--checkpoint-dir",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [
        "fastpg: error: epoch 2: 2 updates in a row had a non-finite loss and were skipped "
        "(--max-bad-updates 2); the parameters are those of the last good update"
    ]


# -- misbehaving environments --------------------------------------------------------------------------


def _faulty_async(fault: str, timeout_s: float = 60.0) -> GymVectorEnv:
    fns = (
        [functools.partial(FaultyEnv)]
        + [functools.partial(FaultyEnv, fault=fault, at=3)]
        + [functools.partial(FaultyEnv)]
    )
    env = GymVectorEnv(gym.vector.AsyncVectorEnv(fns), env_id="Faulty-v0")
    env.async_timeout_s = timeout_s
    return env


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium logs the worker's traceback as warnings
@pytest.mark.parametrize(
    "fault, match",
    [
        ("raise", r"env Faulty-v0: step failed in async worker 1: ValueError: the simulator exploded"),
        ("die", r"env Faulty-v0: step failed in async worker 1: \w+"),
        ("hang", r"env Faulty-v0: step failed in async (worker 1|a worker): no answer within 2 s \(hung or died\)"),
    ],
)
def test_async_worker_fault_names_env_and_worker_and_stops_all_workers(fault, match):
    env = _faulty_async(fault, timeout_s=2.0)
    procs = list(env.vec_env.processes)
    env.reset(seed=0)
    t0 = time.monotonic()
    with pytest.raises(EnvWorkerError, match=match):
        for _ in range(5):
            env.step(torch.zeros(3, dtype=torch.int64))
    assert time.monotonic() - t0 < 30  # bounded, no hang
    env.close()
    for p in procs:
        p.join(timeout=10)
    assert not any(p.is_alive() for p in procs)
