"""The reward-to-go kernel: fastpg's fast path against the reference loop and a tuned torch loop.

    .venv/bin/python -m pytest benchmarks/bench_returns.py --benchmark-json benchmarks/results/returns.json

At ``[T, N]`` = [128, 65536] and [512, 4096], float32, done with probability 0.02, gamma 0.99, the
implementations of ``returns_impls.py`` (fast, fast-alloc, reference, torch-loop, and torchrl's
``reward2go`` when torchrl is installed). Rates are elements (T x N) per second.
"""

from __future__ import annotations

import pytest
import torch
from conftest import declare_ratio
from returns_impls import GAMMA, returns_data, returns_impls

from fastpg.returns import reward_to_go_reference

SHAPES = [(128, 65536), (512, 4096)]
ROUNDS = 9

for T, N in SHAPES:
    for base in ("reference", "torch-loop", "torchrl"):
        declare_ratio(f"fast / {base}, [{T}, {N}]", ("fast", N, "cpu"), (base, N, "cpu"))


@pytest.mark.parametrize("impl", ["fast", "fast-alloc", "reference", "torch-loop", "torchrl"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{t}x{n}" for t, n in SHAPES])
def test_reward_to_go(benchmark, record, impl, shape):
    impls = returns_impls()
    if impl not in impls:
        pytest.skip(f"{impl} is not installed")
    T, N = shape
    reward, done = returns_data(T, N)
    out = torch.empty_like(reward)
    fn = impls[impl]
    got = fn(reward, done, out)
    got = got.t() if impl == "torchrl" else got  # torchrl answers [N, T]
    torch.testing.assert_close(got, reward_to_go_reference(reward, done, GAMMA), rtol=1e-5, atol=1e-4)  # same numbers
    benchmark.pedantic(fn, args=(reward, done, out), rounds=ROUNDS, warmup_rounds=2)
    benchmark.extra_info["T"] = T
    record(benchmark, impl, N, T * N)  # keyed by N: each shape has its own N
