"""``--backend pool`` (fastpg.envs.pool): W processes stepping shares of the copies through shared
memory compute what ``sync`` computes, and fail, stop and clean up as the async backend does."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from faulty_envs import FaultyEnv  # also registers the Faulty ids (inherited by forked workers)
from processes import alive, children
from test_reliability import _cli, _epochs, _start_training

from fastpg import Config, ConfigError, EnvWorkerError, Trainer
from fastpg.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fastpg.envs import make_env, pool_gains, resolve_backend
from fastpg.envs.pool import PoolVectorEnv, shares

QUICK = ("--num-envs", "3", "--num-steps", "16", "--quiet", "--eval-episodes", "0")


@pytest.mark.parametrize("n, w", [(5, 1), (5, 2), (5, 3), (16, 2), (3, 3)])
def test_shares_cover_the_copies_in_order_and_differ_by_at_most_one(n, w):
    parts = shares(n, w)
    assert len(parts) == w and parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def _rollout(env, actions, seed):
    obs = [env.reset(seed=seed).clone()]
    steps = []
    for a in actions:
        s = env.step(a)
        obs.append(s.obs.clone())
        steps.append(torch.stack([s.reward, s.done.float(), s.valid.float(), s.terminated.float()]))
    return torch.stack(obs), torch.stack(steps)


@pytest.mark.parametrize("env_id, workers", [("CartPole-v1", 2), ("CartPole-v1", 3), ("Pendulum-v1", 2)])
def test_pool_steps_exactly_what_sync_steps(env_id, workers):
    """Every observation, reward and flag of 5 copies over 150 steps (episode ends and NEXT_STEP
    resets included), W = 2 and 3 (uneven shares), Discrete and Box actions."""
    g = torch.Generator().manual_seed(3)
    discrete = env_id.startswith("CartPole")
    actions = [
        torch.randint(0, 2, (5,), generator=g) if discrete else 3 * torch.randn(5, 1, generator=g) for _ in range(150)
    ]
    results = []
    for backend in ("sync", "pool"):
        env = make_env(env_id, 5, backend=backend, workers=workers)
        try:
            results.append(_rollout(env, actions, seed=7))
        finally:
            env.close()
    (obs_a, steps_a), (obs_b, steps_b) = results
    assert torch.equal(obs_a, obs_b) and torch.equal(steps_a, steps_b)
    assert steps_a[:, 1].sum() > 0 or not discrete  # CartPole episodes ended within the window


def test_training_with_the_pool_matches_sync_epoch_for_epoch(tmp_path, capsys):
    """Per-epoch metrics (returns, losses, episode counts) and the evaluation identical for the
    same seed."""
    runs = {}
    for backend in ("sync", "pool"):
        log = tmp_path / f"{backend}.jsonl"
        args = ("--num-envs", "6", "--num-steps", "64", "--max-epochs", "4", "--eval-episodes", "4", "--seed", "5")
        code, _, _ = _cli(capsys, "train", "--env", "Fault-free-v0", "--backend", backend, "--pool-workers", "2",
                          "--quiet", "--metrics-file", str(log), *args)  # fmt: skip
        assert code == 0
        runs[backend] = [json.loads(line) for line in log.read_text().splitlines()]
    timing = re.compile(r"sps|_s$|time|wall|backend|placement|threads")
    keep = lambda d: {k: v for k, v in d.items() if not timing.search(k)}  # noqa: E731
    assert len(runs["sync"]) == len(runs["pool"]) == 6  # header, 4 epochs, summary
    for a, b in zip(runs["sync"][1:], runs["pool"][1:]):
        assert keep(a) == keep(b)


def test_the_pool_runs_w_minus_one_worker_processes_and_closes_them():
    env = make_env("CartPole-v1", 6, backend="pool", workers=3)
    pids = [p.pid for p in env.vec_env.processes]
    assert len(pids) == 2 and env.worker_processes == 2
    assert set(pids) <= children(os.getpid())
    env.close()
    assert not [p for p in pids if alive(p)]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "only, line",
    [
        (2, "env FaultyRaise-v0: step failed in pool worker 1 (env copy 2): ValueError: the simulator exploded"),
        (0, "env FaultyRaise-v0: step failed in the trainer's own share (env copy 0): ValueError: the simulator"),
    ],
)
def test_a_copy_that_raises_is_named_and_every_worker_stops(only, line):
    import gymnasium as gym

    gym.register(f"RaiseAt-{only}-v0", entry_point=FaultyEnv, kwargs=dict(fault="raise", at=5, only_seed=only))
    env = make_env(f"RaiseAt-{only}-v0", 4, backend="pool", workers=2)
    pids = [p.pid for p in env.vec_env.processes]
    env.reset(seed=0)
    with pytest.raises(EnvWorkerError) as e:
        for _ in range(10):
            env.step(torch.zeros(4, dtype=torch.int64))
    assert str(e.value).startswith(line.replace("FaultyRaise-v0", f"RaiseAt-{only}-v0")), str(e.value)
    assert not [p for p in pids if alive(p)]
    env.close()  # nothing left to close: no error, no warning


def test_a_worker_that_dies_or_hangs_is_named():
    import gymnasium as gym

    gym.register("DieAt-v0", entry_point=FaultyEnv, kwargs=dict(fault="die", at=3, only_seed=3))
    gym.register("HangAt-v0", entry_point=FaultyEnv, kwargs=dict(fault="hang", at=3, only_seed=3))
    env = PoolVectorEnv("DieAt-v0", 4, 2)
    env.reset(seed=0)
    with pytest.raises(EnvWorkerError, match=r"^env DieAt-v0: step failed in pool worker 1 \(copies 2\.\.3\): "
                       r"the worker process died \(exit code 3\)$"):  # fmt: skip
        for _ in range(5):
            env.step(np.zeros(4, dtype=np.int64))
    env = PoolVectorEnv("HangAt-v0", 4, 2, timeout_s=0.5)
    pids = [p.pid for p in env.processes]
    env.reset(seed=0)
    start = time.monotonic()
    with pytest.raises(
        EnvWorkerError, match=r"pool worker 1 \(copies 2\.\.3\): no answer within 0\.5 s \(hung or died\)"
    ):
        for _ in range(5):
            env.step(np.zeros(4, dtype=np.int64))
    assert time.monotonic() - start < 10 and not [p for p in pids if alive(p)]


def test_an_env_the_workers_cannot_build_is_one_line():
    with pytest.raises(Exception, match="could not create|No registered env"):
        make_env("NoSuchEnv-v0", 4, backend="pool")


def test_sigterm_to_the_whole_process_group_stops_a_pool_run_cleanly(tmp_path):
    """The workers leave the launcher's process group: the trainer alone gets the signal, ends the
    epoch, checkpoints, summarizes and closes them."""
    proc, ckpt, log = _start_training(tmp_path, "--backend", "pool", start_new_session=True)
    workers = children(proc.pid)
    assert len(workers) == 1
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == "interrupted (SIGTERM)" and summary["checkpoint"] == str(ckpt / CHECKPOINT_NAME)
    assert load_checkpoint(ckpt)["epoch"] == summary["epochs"] == len(_epochs(log))
    time.sleep(0.5)
    assert not [w for w in workers if alive(w)], "worker processes were left behind"


def test_workers_of_a_killed_trainer_exit_by_themselves(tmp_path):
    """SIGKILL to the trainer (no cleanup runs): its end of each pipe closes, and the workers exit."""
    proc, _, _ = _start_training(tmp_path, "--backend", "pool")
    workers = children(proc.pid)
    assert workers
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while [w for w in workers if alive(w)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [w for w in workers if alive(w)], "orphaned worker processes"


def test_a_failing_pool_run_ends_in_one_line_after_checkpoint_and_summary(tmp_path, capsys):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    args = ("--checkpoint-dir", str(ckpt), "--metrics-file", str(metrics), "--max-epochs", "10")
    code, out, err = _cli(capsys, "train", "--env", "FaultyRaise-v0", "--backend", "pool", *QUICK, *args)
    line = "env FaultyRaise-v0: step failed in the trainer's own share (env copy 1): ValueError: the simulator exploded"
    assert code == 1 and err == [f"fastpg: error: {line}"], err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == f"env failure: {line}" and summary["epochs"] == 2
    assert load_checkpoint(ckpt)["epoch"] == 2


def test_the_start_notice_says_who_steps_the_copies(capsys):
    code, _, err = _cli(capsys, "train", "--backend", "pool", "--pool-workers", "3", "--num-envs", "6",
                        "--num-steps", "8", "--max-epochs", "1", "--eval-episodes", "0")  # fmt: skip
    assert code == 0
    assert any(line.endswith("; backend pool: the trainer and 2 worker processes step the 6 copies (1 torch thread "
                             "while collecting)") for line in err), err  # fmt: skip


def test_pool_workers_is_checked():
    with pytest.raises(ConfigError, match=r"pool_workers: must be at most --num-envs \(4\); got 5"):
        Config(num_envs=4, pool_workers=5)
    with pytest.raises(ConfigError, match="pool_workers: must be an integer >= 1"):
        Config(pool_workers=0)


def test_auto_takes_the_pool_where_a_step_of_all_copies_is_slow_enough(monkeypatch):
    import fastpg.envs.gym_vector as gv

    monkeypatch.setattr(gv, "step_cost_s", lambda env_id: 50e-6)  # a MuJoCo-like step
    monkeypatch.setattr("fastpg.placement.usable_cores", lambda: 2)
    assert resolve_backend("FrozenLake-v1", "auto", 16) == "pool"
    assert resolve_backend("FrozenLake-v1", "auto", 2) == "sync"  # 100 us: below the measured crossover
    assert resolve_backend("CartPole-v1", "auto", 64) == "torch"  # native first, as ever
    monkeypatch.setattr("fastpg.placement.usable_cores", lambda: 1)
    assert not pool_gains("FrozenLake-v1", 16)  # no core to share
    monkeypatch.setattr("fastpg.placement.usable_cores", lambda: 2)
    monkeypatch.setattr(gv, "step_cost_s", lambda env_id: 2e-6)  # a cheap Python env
    assert resolve_backend("FrozenLake-v1", "auto", 16) == "sync"


def test_step_cost_is_measured_on_the_env():
    from fastpg.envs.gym_vector import step_cost_s

    cost = step_cost_s("FrozenLake-v1")
    assert 0 < cost < 0.01


def test_a_run_with_the_pool_collects_with_one_torch_thread(monkeypatch):
    seen = []
    cfg = Config(env="CartPole-v1", backend="pool", pool_workers=2, num_envs=4, num_steps=8, max_epochs=1,
                 eval_episodes=0, quiet=True, threads=2)  # fmt: skip
    with Trainer(cfg) as tr:
        import fastpg.trainer as trainer_module

        real = trainer_module.collect

        def spy(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return real(*args, **kwargs)

        monkeypatch.setattr(trainer_module, "collect", spy)
        tr.collect()
    assert seen == [1]


def test_a_population_on_pools_computes_what_it_computes_on_sync(tmp_path, capsys):
    """Each member's per-epoch metrics identical with every member's env a pool and with sync."""
    runs = {}
    for backend in ("sync", "pool"):
        log = tmp_path / f"{backend}.jsonl"
        code, _, _ = _cli(capsys, "train", "--env", "Fault-free-v0", "--seeds", "2", "--backend", backend,
                          "--pool-workers", "2", "--num-envs", "4", "--num-steps", "32", "--max-epochs", "3",
                          "--eval-episodes", "2", "--quiet", "--metrics-file", str(log))  # fmt: skip
        assert code == 0
        runs[backend] = [json.loads(line) for line in log.read_text().splitlines()]
    timing = re.compile(r"sps|_s$|time|wall|backend|placement|threads")

    def keep(d):
        if isinstance(d, list):
            return [keep(x) for x in d]
        return {k: keep(v) for k, v in d.items() if not timing.search(k)} if isinstance(d, dict) else d

    epochs = [r for r in runs["pool"] if "member" in r and "epoch" in r]
    assert len(epochs) == 6 and len(runs["sync"]) == len(runs["pool"])
    for a, b in zip(runs["sync"][1:], runs["pool"][1:]):
        assert keep(a) == keep(b)


def test_a_population_starts_every_members_pool_step_before_waiting_for_any(monkeypatch):
    """So the members' workers step together (and the collect runs on one torch thread)."""
    from fastpg import PopulationTrainer

    events = []
    real_async, real_wait = PoolVectorEnv.step_async, PoolVectorEnv.step_wait
    monkeypatch.setattr(PoolVectorEnv, "step_async", lambda self, a: (events.append("start"), real_async(self, a))[1])
    monkeypatch.setattr(PoolVectorEnv, "step_wait", lambda self: (events.append("wait"), real_wait(self))[1])
    base = Config(env="CartPole-v1", backend="pool", pool_workers=2, num_envs=4, num_steps=8, max_epochs=1,
                  eval_episodes=0, quiet=True, threads=2)  # fmt: skip
    with PopulationTrainer([base.replace(seed=s) for s in (0, 1, 2)]) as pop:
        import fastpg.population.generic as generic

        real_collect, seen = generic.collect, []
        monkeypatch.setattr(generic, "collect", lambda *a: (seen.append(torch.get_num_threads()), real_collect(*a))[1])
        events.clear()
        pop.epoch()
    assert seen == [1]
    assert len(events) == 8 * 6 and all(events[i : i + 6] == ["start"] * 3 + ["wait"] * 3 for i in range(0, 48, 6))


def test_halfcheetah_through_the_pool_is_sync_exactly():
    pytest.importorskip("mujoco", reason="MuJoCo envs need the mujoco extra: pip install 'fastpg-rl[mujoco]'")
    g = torch.Generator().manual_seed(0)
    actions = [2 * torch.rand(4, 6, generator=g) - 1 for _ in range(30)]
    results = []
    for backend in ("sync", "pool"):
        env = make_env("HalfCheetah-v5", 4, backend=backend, workers=2)
        try:
            results.append(_rollout(env, actions, seed=1))
        finally:
            env.close()
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([str(Path(__file__))]))
