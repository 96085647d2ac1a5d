"""The update and one end-to-end epoch, per backend, at realistic sizes.

    .venv/bin/python -m pytest benchmarks/bench_train.py --benchmark-json benchmarks/results/train.json

CartPole-v1, T = 128, through the runners of ``fastpg bench``'s update and train phases.
``update``: ``Trainer.update()`` on a stored epoch (samples/s over all T x N entries). ``epoch``:
``Trainer.epoch()`` (collect + update + metrics; valid env steps/s). Policies: fastpg's default
(MLP 128, relu) and the tch-rs example's (MLP 32, tanh). ``extra_info`` records T, N, device and
policy. ``update-one-pass`` runs the update as one whole-batch pass (no slices), the baseline of
the sliced update's ratio.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import declare_ratio

from fastpg import Config
from fastpg.bench.engine import Runner, trainer_runner

T = 128
ROUNDS = 5
POLICIES = {"mlp128-relu": ((128,), "relu"), "mlp32-tanh": ((32,), "tanh")}
SIZES = [("torch", 256), ("torch", 4096), ("vector", 4096)]


for _policy in POLICIES:
    declare_ratio(
        f"update sliced / one pass, native N=4096, {_policy}",
        (f"update-torch-{_policy}", 4096, "cpu"),
        (f"update-one-pass-{_policy}", 4096, "cpu"),
    )


def _runner(phase: str, backend: str, n: int, policy: str) -> Runner:
    hidden, activation = POLICIES[policy]
    cfg = Config(backend=backend, num_envs=n, num_steps=T, hidden_sizes=hidden, activation=activation,
                 device="cpu", eval_episodes=0, quiet=True)  # fmt: skip
    return trainer_runner(phase, cfg)


def _time(benchmark, runner: Runner, policy: str):
    try:
        benchmark.pedantic(runner.run, rounds=ROUNDS, warmup_rounds=1)
        last = runner.run()
    finally:
        runner.close()
    benchmark.extra_info.update(T=T, policy=policy)
    return last


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("backend,n", SIZES, ids=[f"{b}-{n}" for b, n in SIZES])
def test_update(benchmark, record, backend, n, policy):
    _time(benchmark, _runner("update", backend, n, policy), policy)
    record(benchmark, f"update-{backend}-{policy}", n, T * n)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_update_one_pass(benchmark, record, policy):
    runner = _runner("update", "torch", 4096, policy)
    trainer = runner.info["trainer"]
    trainer.settings = dataclasses.replace(trainer.settings, rows=T * 4096)  # the whole batch in one slice
    _time(benchmark, runner, policy)
    record(benchmark, f"update-one-pass-{policy}", 4096, T * 4096)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("backend,n", SIZES, ids=[f"{b}-{n}" for b, n in SIZES])
def test_epoch(benchmark, record, backend, n, policy):
    last = _time(benchmark, _runner("train", backend, n, policy), policy)
    benchmark.extra_info["valid_fraction"] = last.items / (T * n)
    record(benchmark, f"epoch-{backend}-{policy}", n, last.items)  # the last epoch's valid steps
