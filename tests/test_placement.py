"""The placement rules (fastpg.placement): the device ``auto`` picks and the threads, where they apply,
and that the thread count changes no result."""

from __future__ import annotations

import json

import pytest
import torch

from fastpg import Config, Trainer
from fastpg.errors import ConfigError
from fastpg.placement import (
    GPU_WORK_PER_CORE,
    WORK_PER_THREAD,
    ThreadChoice,
    choose_device,
    choose_threads,
    policy_weights,
    threads,
    usable_cores,
)
from fastpg.policy import MLPPolicy
from fastpg.run import train

CPU = torch.device("cpu")
SMALL = dict(num_envs=8, num_steps=32, max_epochs=3, eval_episodes=0, quiet=True, device="cpu")


def _policy(cfg: Config) -> MLPPolicy:
    from fastpg.envs import make_env

    return MLPPolicy.from_config(cfg, make_env(cfg.env, 1).info)


def test_the_rule_gives_a_thread_per_unit_of_update_work_within_the_cap():
    cfg = Config(num_envs=16, num_steps=512)  # CartPole, 128 relu: 4 x 128 + 128 x 2 weights
    policy = _policy(cfg)
    assert policy_weights(policy) == 4 * 128 + 128 * 2
    work = 16 * 512 * 768
    assert choose_threads(cfg, policy, fused=True, device=CPU, cap=64).count == work // WORK_PER_THREAD
    assert choose_threads(cfg, policy, fused=True, device=CPU, cap=2).count == 2
    tiny = cfg.replace(num_envs=2, num_steps=16)
    choice = choose_threads(tiny, _policy(tiny), fused=False, device=CPU, cap=8)
    assert choice.count == 1 and "generic path" in choice.reason and "at most 8" in choice.reason
    value = cfg.replace(baseline="value")  # the value network's weights count too
    assert policy_weights(_policy(value)) == 2 * 768 - 128 * 2 + 128


def test_an_explicit_count_and_a_gpu_run_are_not_the_rules():
    cfg = Config(num_envs=2, num_steps=16, threads=3)
    assert choose_threads(cfg, _policy(cfg), fused=True, device=CPU, cap=2) == ThreadChoice(3, "--threads")
    cfg = cfg.replace(threads=None)
    assert choose_threads(cfg, _policy(cfg), fused=False, device=torch.device("cuda"), cap=5).count == 5


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_a_bad_thread_count_is_refused(bad):
    with pytest.raises(ConfigError, match=r"threads: must be an integer >= 1 \(or unset\)"):
        Config(threads=bad)


def test_threads_apply_inside_the_trainers_calls_only(monkeypatch):
    before = torch.get_num_threads()
    seen = []
    with Trainer(Config(**SMALL, threads=1)) as tr:
        collect = tr.fused.collect

        def spy(*args, **kwargs):
            seen.append(torch.get_num_threads())
            return collect(*args, **kwargs)

        monkeypatch.setattr(tr.fused, "collect", spy)
        tr.epoch()
        assert torch.get_num_threads() == before
        tr.threads = 2
        tr.epoch()
    assert seen == [1, 2] and torch.get_num_threads() == before
    with threads(before):  # already so: nothing to set or put back
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("changes", [dict(), dict(env="Pendulum-v1", baseline="value"), dict(fused="off")])
def test_the_thread_count_changes_no_result(changes):
    runs = []
    for n in (1, 2):
        with Trainer(Config(**SMALL, **changes, threads=n)) as tr:
            ms = [{k: v for k, v in m.items() if not k.endswith("_s") and k != "sps"} for m in tr.run()]
            runs.append((ms, [p.detach().clone() for p in tr.policy.parameters()]))
    (m1, p1), (m2, p2) = runs
    if changes.get("fused") == "off":  # torch ops may split their sums by thread: equal to rounding
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(p1, p2))
    else:
        assert m1 == m2 and all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_the_header_says_the_threads_and_why(tmp_path, capsys):
    path = tmp_path / "m.jsonl"
    train(Config(**{**SMALL, "quiet": False}, metrics_file=path, progress_interval_s=0))
    header = json.loads(path.read_text().splitlines()[0])["placement"]
    assert header["threads"] == 1 and header["threads_reason"].startswith("fused epoch: ")
    assert header["device"] == "cpu" and header["device_reason"] == "--device"
    notice = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fastpg: epoch:")]
    assert notice and notice[0].endswith("; 1 thread")


# -- the device (no GPU is used: the rule only asks whether CUDA is there) ---------------------------


def test_auto_is_the_cpu_without_cuda_and_an_explicit_device_is_obeyed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(Config()).device == CPU and choose_device(Config()).reason == "auto: no CUDA device"
    assert choose_device(Config(device="cuda:1")).device == torch.device("cuda:1")
    assert choose_device(Config(device="cpu")).reason == "--device"


def test_auto_picks_the_fused_cpu_epoch_for_small_work_and_the_gpu_for_large(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    defaults = choose_device(Config())  # CartPole, N = 16, T = 512: 6.3M multiply-adds per epoch
    assert defaults.device == CPU and "the fused CPU epoch trains this faster" in defaults.reason
    entries = GPU_WORK_PER_CORE * usable_cores() // 768  # 128-relu CartPole: 768 weights
    big = choose_device(Config(num_envs=entries // 64 + 1, num_steps=64))
    assert big.device == torch.device("cuda") and "the GPU trains this faster" in big.reason
    population = choose_device(Config(num_envs=entries // 64 // 8 + 1, num_steps=64), members=8)
    assert population.device == torch.device("cuda")  # the members' work adds up
    for changes, why in ((dict(backend="sync"), "needs a native env"), (dict(activation="gelu"), "gelu")):
        choice = choose_device(Config(**changes))
        assert choice.device == torch.device("cuda") and why in choice.reason, changes
