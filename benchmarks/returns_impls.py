"""The reward-to-go implementations the benchmarks compare (``bench_returns.py``, ``peers.py``).

Each takes ``(reward [T, N], done [T, N], out [T, N])`` with gamma 0.99 and returns the returns:
- ``fast``: ``fastpg.returns.reward_to_go(..., out=out)`` as the trainer calls it;
- ``fast-alloc``: the same without ``out=`` (pays for a fresh output);
- ``reference``: ``reward_to_go_reference``, the specification loop (3 ops per step);
- ``torch-loop``: a tuned loop over T (the discount ``gamma * ~done`` formed once, then one
  ``addcmul`` per step into a preallocated output): what a careful user would write;
- ``torchrl``: torchrl's ``reward2go``, when torchrl is importable; it answers ``[N, T]`` (its
  time dimension is last), with the same numbers as the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastpg.returns import reward_to_go, reward_to_go_reference

GAMMA = 0.99


def torch_loop(reward: torch.Tensor, done: torch.Tensor, gamma: float, out: torch.Tensor) -> torch.Tensor:
    discount = (~done).to(reward.dtype).mul_(gamma)
    out[-1].copy_(reward[-1])
    for t in range(reward.shape[0] - 2, -1, -1):
        torch.addcmul(reward[t], discount[t], out[t + 1], out=out[t])
    return out


def returns_impls() -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    impls = {
        "fast": lambda r, d, out: reward_to_go(r, d, GAMMA, out=out),
        "fast-alloc": lambda r, d, out: reward_to_go(r, d, GAMMA),
        "reference": lambda r, d, out: reward_to_go_reference(r, d, GAMMA),
        "torch-loop": lambda r, d, out: torch_loop(r, d, GAMMA, out),
    }
    try:
        from torchrl.objectives.value.functional import reward2go
    except ImportError:
        return impls
    # torchrl is batch-first with the time dimension last: [N, T] (a transposed view).
    impls["torchrl"] = lambda r, d, out: reward2go(r.t(), d.t(), GAMMA, time_dim=-1)
    return impls


def returns_data(T: int, N: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rewards in [0, 1) and done flags with probability 0.02, float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, N, generator=g), torch.rand(T, N, generator=g) < 0.02
