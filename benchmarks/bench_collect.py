"""Collect-loop steps per second: env + policy sampling + storage writes, one epoch of T steps.

    .venv/bin/python -m pytest benchmarks/bench_collect.py --benchmark-json benchmarks/results/collect.json

Native CartPole-v1 with the default policy (MLP 128, relu), T = 128, as ``Trainer.collect`` runs
it; on CPU at N = 16, 256 and 4096 (torch-op and fused env step), on CUDA (when present) at
N = 2^16 and 2^20, synchronized before the clock is read. Steps are valid transitions (native envs
have no reset steps).
"""

from __future__ import annotations

import pytest
import torch
from conftest import declare_ratio

from fastpg.envs import make_env
from fastpg.policy import MLPPolicy
from fastpg.rollout import collect, init_carry
from fastpg.storage import allocate_storage

T = 128
ROUNDS = 5

for n in (16, 256, 4096):
    declare_ratio(f"collect fused / torch-op env, N={n}", ("collect-fused", n, "cpu"), ("collect", n, "cpu"))


def _collector(n: int, device: str, fused: bool):
    env = make_env("CartPole-v1", n, backend="torch", device=device, fused=fused)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = MLPPolicy(env.info, (128,), "relu").to(device)
    buf = allocate_storage(env.info, T, n, device)
    carry = init_carry(env, seed=0)
    g = torch.Generator(device=device).manual_seed(0)

    def run():
        collect(env, policy, buf, carry, g)
        if device != "cpu":
            torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("fused", [False, True], ids=["torch-op", "fused"])
@pytest.mark.parametrize("n", [16, 256, 4096])
def test_collect_cpu(benchmark, record, n, fused):
    benchmark.pedantic(_collector(n, "cpu", fused), rounds=ROUNDS, warmup_rounds=1)
    record(benchmark, "collect-fused" if fused else "collect", n, n * T)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n", [2**16, 2**20])
def test_collect_cuda(benchmark, record, n):
    benchmark.pedantic(_collector(n, "cuda", False), rounds=ROUNDS, warmup_rounds=2)
    record(benchmark, "collect", n, n * T, device="cuda")
