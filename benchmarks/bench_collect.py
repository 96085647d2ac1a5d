"""Collect-loop steps per second: env + policy sampling + storage writes, one epoch of T steps.

    .venv/bin/python -m pytest benchmarks/bench_collect.py --benchmark-json benchmarks/results/collect.json

Native CartPole-v1 with the default policy (MLP 128, relu), T = 128, as ``Trainer.collect`` runs
it (the runner of ``fastpg bench``'s collect phase); on CPU at N = 16, 256 and 4096 (torch-op and
fused env step), on CUDA (when present) at N = 2^16 and 2^20, synchronized before the clock is
read. Steps are valid transitions (native envs have no reset steps).
"""

from __future__ import annotations

import pytest
import torch
from conftest import declare_ratio, time_runner

from fastpg import Config
from fastpg.bench.engine import trainer_runner

T = 128
ROUNDS = 5

for n in (16, 256, 4096):
    declare_ratio(f"collect fused / torch-op env, N={n}", ("collect-fused", n, "cpu"), ("collect", n, "cpu"))


def _time_collect(benchmark, n: int, device: str, kernel: str = "torch", warmup: int = 1) -> int:
    cfg = Config(backend="torch", num_envs=n, num_steps=T, env_kernel=kernel, device=device, eval_episodes=0)
    time_runner(benchmark, trainer_runner("collect", cfg), device, ROUNDS, warmup)
    return n * T


@pytest.mark.parametrize("fused", [False, True], ids=["torch-op", "fused"])
@pytest.mark.parametrize("n", [16, 256, 4096])
def test_collect_cpu(benchmark, record, n, fused):
    items = _time_collect(benchmark, n, "cpu", kernel="cpp" if fused else "torch")
    record(benchmark, "collect-fused" if fused else "collect", n, items)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [2**16, 2**20])
def test_collect_cuda(benchmark, record, n):
    record(benchmark, "collect", n, _time_collect(benchmark, n, "cuda", warmup=2), device="cuda")
