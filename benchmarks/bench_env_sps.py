"""Env-only steps per second with random actions: native torch envs against gymnasium.

    .venv/bin/python -m pytest benchmarks/bench_env_sps.py --benchmark-json benchmarks/results/env_sps.json

Compared in one run: fastpg's native CartPole-v1 (``backend torch``, float32), both its torch-op
step ("native") and its fused C++ CPU step ("native-fused", ``--env-kernel cpp``), against gymnasium's
numpy-vectorized CartPole (``CartPoleVectorEnv``, the id's vector entry point) at N = 256, 4096 and
65536, and against gymnasium's ``SyncVectorEnv`` at N = 256. fastpg's envs are stepped by the
measuring engine of ``fastpg bench`` (``fastpg.bench.engine.env_runner``: actions drawn before
timing, ``torch.inference_mode()`` as the collector runs it); gymnasium's get numpy actions drawn
before timing, what they take. A "step" is one transition of one env copy; the native env resets
within the done step, gymnasium's vector envs spend a step on each reset (NEXT_STEP autoreset), and
those reset steps are counted here too (env-only SPS, as gymnasium users measure it).

With a GPU, the native env is also measured on CUDA at N = 2^16 and 2^20 (synchronized before the
clock is read).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import declare_ratio, time_runner

from fastpg import Config
from fastpg.bench.engine import env_runner

ROUNDS = 7
CPU_SIZES = (256, 4096, 65536)
STEPS_PER_ROUND = {256: 200, 4096: 50, 65536: 12, 2**20: 50}

for impl in ("native", "native-fused"):
    for n in CPU_SIZES:
        declare_ratio(f"{impl} / gymnasium CartPoleVectorEnv, N={n}", (impl, n, "cpu"), ("gym-vector", n, "cpu"))
    declare_ratio(f"{impl} / gymnasium SyncVectorEnv, N=256", (impl, 256, "cpu"), ("gym-sync", 256, "cpu"))


def _time_native(benchmark, n: int, device: str, kernel: str = "torch", warmup: int = 2):
    """Time the engine's env runner (the kernel is built or loaded before timing); returns items per round."""
    cfg = Config(backend="torch", num_envs=n, env_kernel=kernel, device=device)
    steps = STEPS_PER_ROUND.get(n, 20)
    time_runner(benchmark, env_runner(cfg, torch.device(device), steps=steps), device, ROUNDS, warmup)
    return n * steps


def _gym_runner(n: int, mode: str):
    env = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode=mode)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 2, size=n) for _ in range(16)]
    steps = 20 if mode == "sync" else STEPS_PER_ROUND[n]

    def run():
        for i in range(steps):
            env.step(actions[i % 16])

    return run, steps, env


@pytest.mark.parametrize("n", CPU_SIZES)
def test_native_cartpole_cpu(benchmark, record, n):
    record(benchmark, "native", n, _time_native(benchmark, n, "cpu"))


@pytest.mark.parametrize("n", CPU_SIZES)
def test_native_cartpole_cpu_fused(benchmark, record, n):
    record(benchmark, "native-fused", n, _time_native(benchmark, n, "cpu", kernel="cpp"))


@pytest.mark.parametrize("n", CPU_SIZES)
def test_gymnasium_cartpole_vector_env(benchmark, record, n):
    run, steps, env = _gym_runner(n, "vector_entry_point")
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2)
    record(benchmark, "gym-vector", n, n * steps)
    env.close()


def test_gymnasium_sync_vector_env(benchmark, record):
    run, steps, env = _gym_runner(256, "sync")
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    record(benchmark, "gym-sync", 256, 256 * steps)
    env.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [2**16, 2**20])
def test_native_cartpole_cuda(benchmark, record, n):
    record(benchmark, "native", n, _time_native(benchmark, n, "cuda", warmup=3), device="cuda")
