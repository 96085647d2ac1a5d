"""The reward-to-go kernel: fastpg's fast path against the reference loop and a tuned torch loop.

    .venv/bin/python -m pytest benchmarks/bench_returns.py --benchmark-json benchmarks/results/returns.json

At ``[T, N]`` = [128, 65536] and [512, 4096], float32, done with probability 0.02, gamma 0.99:
- ``fast``: ``fastpg.returns.reward_to_go(..., out=buf)`` as the trainer calls it;
- ``fast-alloc``: the same without ``out=`` (pays for a fresh output);
- ``reference``: ``reward_to_go_reference``, the specification loop (3 ops per step);
- ``torch-loop``: a tuned loop over T (the discount ``gamma * ~done`` formed once, then one
  ``addcmul`` per step into a preallocated output): what a careful user would write;
- ``torchrl``: torchrl's ``reward2go``, when torchrl is installed (optional).
Rates are elements (T x N) per second.
"""

from __future__ import annotations

import pytest
import torch

from conftest import declare_ratio
from fastpg.returns import reward_to_go, reward_to_go_reference

SHAPES = [(128, 65536), (512, 4096)]
ROUNDS = 9

for T, N in SHAPES:
    for base in ("reference", "torch-loop", "torchrl"):
        declare_ratio(f"fast / {base}, [{T}, {N}]", ("fast", N, "cpu"), (base, N, "cpu"))


def _data(T, N):
    g = torch.Generator().manual_seed(0)
    return torch.rand(T, N, generator=g), torch.rand(T, N, generator=g) < 0.02


def torch_loop(reward, done, gamma, out):
    discount = (~done).to(reward.dtype).mul_(gamma)
    out[-1].copy_(reward[-1])
    for t in range(reward.shape[0] - 2, -1, -1):
        torch.addcmul(reward[t], discount[t], out[t + 1], out=out[t])
    return out


def _impls():
    impls = {
        "fast": lambda r, d, out: reward_to_go(r, d, 0.99, out=out),
        "fast-alloc": lambda r, d, out: reward_to_go(r, d, 0.99),
        "reference": lambda r, d, out: reward_to_go_reference(r, d, 0.99),
        "torch-loop": lambda r, d, out: torch_loop(r, d, 0.99, out),
    }
    try:
        from torchrl.objectives.value.functional import reward2go

        # torchrl is batch-first with the time dimension last: [N, T] (a transposed view).
        impls["torchrl"] = lambda r, d, out: reward2go(r.t(), d.t(), 0.99, time_dim=-1)
    except ImportError:
        pass
    return impls


@pytest.mark.parametrize("impl", ["fast", "fast-alloc", "reference", "torch-loop", "torchrl"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{t}x{n}" for t, n in SHAPES])
def test_reward_to_go(benchmark, record, impl, shape):
    impls = _impls()
    if impl not in impls:
        pytest.skip(f"{impl} is not installed")
    T, N = shape
    reward, done = _data(T, N)
    out = torch.empty_like(reward)
    fn = impls[impl]
    if impl != "torchrl":  # same numbers as the reference (torchrl's conventions differ; not compared)
        torch.testing.assert_close(fn(reward, done, out), reward_to_go_reference(reward, done, 0.99), rtol=1e-5, atol=1e-4)
    benchmark.pedantic(fn, args=(reward, done, out), rounds=ROUNDS, warmup_rounds=2)
    benchmark.extra_info["T"] = T
    record(benchmark, impl, N, T * N)  # keyed by N: each shape has its own N
