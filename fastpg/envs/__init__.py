"""Batched environments behind one torch-facing interface, and the choice of backend.

Backends, fastest first (``auto`` takes the first one available for an id):
  - ``torch``: a native batched torch implementation that runs on the training device;
  - ``vector``: gymnasium's own vectorized implementation (the id's ``vector_entry_point``);
  - ``sync``: gymnasium ``SyncVectorEnv`` (any env, one process);
  - ``async``: gymnasium ``AsyncVectorEnv`` (any env, one worker process per copy; pays off for
    envs whose step costs far more than the inter-process round trip). Never picked by ``auto``.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from gymnasium.envs.registration import load_env_creator

from fastpg.envs.base import BatchedEnv, EnvInfo, Step
from fastpg.envs.classic_control import (
    NATIVE_ENVS,
    NativeEnv,
    TorchAcrobot,
    TorchCartPole,
    TorchMountainCar,
    TorchMountainCarContinuous,
    TorchPendulum,
)
from fastpg.envs.gym_vector import EnvWorkerError, GymVectorEnv, UnsupportedEnvError, make_gym_vector_env

__all__ = [
    "BatchedEnv",
    "EnvInfo",
    "Step",
    "GymVectorEnv",
    "NativeEnv",
    "TorchAcrobot",
    "TorchCartPole",
    "TorchMountainCar",
    "TorchMountainCarContinuous",
    "TorchPendulum",
    "UnsupportedEnvError",
    "EnvWorkerError",
    "make_env",
    "native_env_ids",
    "backend_problem",
    "resolve_backend",
]

# env id -> native torch environment class (constructed as cls(num_envs, device, dtype, env_id)).
_NATIVE: dict[str, type[NativeEnv]] = {env_id: cls for cls in NATIVE_ENVS for env_id in cls.VERSIONS}


# Native ids with a fused C++ CPU step (``make_env(..., fused=True)``).
FUSED_ENV_IDS = tuple(TorchCartPole.VERSIONS)


def native_env_ids() -> tuple[str, ...]:
    """Environment ids that have a native torch implementation (backend ``torch``)."""
    return tuple(sorted(_NATIVE))


def backend_problem(env_id: str, backend: str) -> str | None:
    """Why ``backend`` cannot step ``env_id`` (a registered id), or None if it can."""
    if backend == "torch" and env_id not in _NATIVE:
        return f"'torch' has no native implementation of {env_id} (native ids: {', '.join(native_env_ids()) or 'none'})"
    if backend == "vector" and gym.spec(env_id).vector_entry_point is None:
        return f"'vector' needs an env with its own vectorized implementation; {env_id} has none (use sync or async)"
    return None


def resolve_backend(env_id: str, backend: str = "auto") -> str:
    """The concrete backend for ``env_id``: ``backend`` itself unless it is ``auto``."""
    if backend != "auto":
        return backend
    if env_id in _NATIVE:
        return "torch"
    if _vector_entry_point_loads(env_id):
        return "vector"
    return "sync"


def _vector_entry_point_loads(env_id: str) -> bool:
    """True if the id registers a vectorized implementation that imports here (some need jax)."""
    entry = gym.spec(env_id).vector_entry_point
    if entry is None:
        return False
    if callable(entry):
        return True
    try:
        load_env_creator(entry)
    except Exception:
        return False
    return True


def make_env(
    env_id: str,
    num_envs: int,
    *,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    fused: bool = False,
) -> BatchedEnv:
    """Build ``num_envs`` lockstep copies of ``env_id`` with the chosen backend, on ``device``.

    ``dtype`` is the state dtype of native torch envs (float32 or float64); gymnasium backends
    compute in numpy and hand over float32 observations. ``fused=True`` selects the compiled C++
    CPU step of native CartPole (``TorchCartPole``); other ids and backends refuse it."""
    backend = resolve_backend(env_id, backend)
    problem = backend_problem(env_id, backend)
    if problem:
        raise ValueError(f"backend {problem}")
    if fused and (backend != "torch" or env_id not in FUSED_ENV_IDS):
        raise ValueError(f"fused=True: the fused C++ step exists for native {', '.join(FUSED_ENV_IDS)} only, not {backend} {env_id}")
    if backend == "torch":
        extra = {"fused": True} if fused else {}
        return _NATIVE[env_id](num_envs, device, dtype, env_id=env_id, **extra)
    return make_gym_vector_env(env_id, backend, num_envs, device)
