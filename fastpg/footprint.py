"""How much memory a run needs, estimated from its config before anything is allocated.

``preflight.check_config`` compares the estimate with what the device has and refuses a run that
cannot fit, in one line naming the flags behind the largest part; without it, sizes such as
``--num-steps 1000000000`` end in an allocator traceback, or (``--eval-episodes``) after the whole
training run, with the summary lost.

The estimate is a lower bound of the large buffers, each a product of the sizes the flags set, not
a profile: what it leaves out (interpreter, torch, small tensors) is a few hundred MB at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastpg.config import Config
from fastpg.envs.base import EnvInfo

__all__ = ["Part", "footprint", "format_bytes"]

# Storage bytes per stored step besides the observation and the action: reward, episode return
# and reward-to-go (float32), done / terminated / valid (bool), episode length (int64).
_STEP_BYTES = 4 * 3 + 3 + 8
# Resident memory of one async worker process (it imports torch and gymnasium): measured ~95 MB.
ASYNC_WORKER_BYTES = 100 * 2**20
# Resident memory a forked pool worker writes to (its envs and heap; the rest is shared with the
# trainer's process until written).
POOL_WORKER_BYTES = 30 * 2**20
# A gymnasium env object in a sync vector env (CartPole-like: the env, its wrappers, its RNG).
SYNC_ENV_BYTES = 20 * 2**10


@dataclass(frozen=True)
class Part:
    """One buffer of the run: its name, size in bytes, and the flags that set it."""

    name: str
    nbytes: int
    flags: tuple[str, ...]


def footprint(cfg: Config, info: EnvInfo, *, backend: str, fused: bool, slice_rows: int) -> list[Part]:
    """The large buffers of a run of ``cfg`` on an env described by ``info``.

    ``backend``: the resolved backend; ``fused``: whether the fused CPU epoch (whose evaluation
    stores whole episodes) runs; ``slice_rows``: entries per slice of the generic update.

    Examples:
        >>> from fastpg import Config, EnvInfo
        >>> info = EnvInfo("CartPole-v1", (4,), True, 2, (), max_episode_steps=500)
        >>> cfg = Config(num_envs=1000, num_steps=1000)
        >>> parts = footprint(cfg, info, backend="torch", fused=True, slice_rows=16384)
        >>> [(p.name, format_bytes(p.nbytes)) for p in parts][:2]
        [('storage [T, N]', '47 MB'), ('native envs', '128 kB')]
    """
    T, N = cfg.num_steps, cfg.num_envs
    obs = 4 * math.prod(info.obs_shape)
    action = 8 if info.discrete else 4 * math.prod(info.action_shape)
    out = info.num_actions if info.discrete else math.prod(info.action_shape)
    widths = [w for w in cfg.hidden_sizes if w]
    params = _mlp_params([math.prod(info.obs_shape), *widths, out])
    if cfg.baseline == "value":
        params += _mlp_params([math.prod(info.obs_shape), *widths, 1])
    parts = [Part("storage [T, N]", T * N * (obs + action + _STEP_BYTES), ("num_steps", "num_envs"))]
    if backend == "torch":
        parts.append(Part("native envs", N * 8 * 4 * 4, ("num_envs",)))  # state, final, fresh draws, obs
    elif backend == "async":
        parts.append(Part("async worker processes", N * ASYNC_WORKER_BYTES, ("num_envs",)))
    elif backend == "sync":
        parts.append(Part("sync env copies", N * SYNC_ENV_BYTES, ("num_envs",)))
    elif backend == "pool":  # forked: a worker's own pages are what it writes (its envs, its heap)
        from fastpg.envs.gym_vector import default_pool_workers

        workers = min(N, cfg.pool_workers or default_pool_workers(N))
        parts.append(
            Part(
                "pool workers and env copies",
                (workers - 1) * POOL_WORKER_BYTES + N * SYNC_ENV_BYTES,
                ("num_envs", "pool_workers"),
            )
        )
    # parameters, gradients and Adam's two moments
    parts.append(Part("policy and optimizer", 16 * params, ("hidden_sizes",)))
    rows = min(slice_rows, T * N)  # forward activations, kept for the backward, and their gradients
    parts.append(Part("update activations", 3 * 4 * rows * (sum(widths) + out), ("hidden_sizes",)))
    episodes = cfg.eval_episodes
    if fused and info.max_episode_steps:  # whole episodes stored, one env copy each
        parts.append(
            Part("evaluation", episodes * info.max_episode_steps * (obs + action + _STEP_BYTES), ("eval_episodes",))
        )
    else:
        parts.append(Part("evaluation", episodes * (3 * obs + 64), ("eval_episodes",)))
    return parts


def _mlp_params(sizes: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def format_bytes(n: float) -> str:
    """1536 -> '1.5 kB' (decimal units)."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"
