"""Batched environments behind one torch-facing interface, and the choice of backend.

Backends, fastest first (``auto`` takes the first one available for an id):
  - ``torch``: a native batched torch implementation that runs on the training device;
  - ``vector``: gymnasium's own vectorized implementation (the id's ``vector_entry_point``);
  - ``pool``: W worker processes (default: the usable cores), each stepping a share of the copies
    through shared memory (``fastpg.envs.pool``; any env; pays off for envs whose step costs tens
    of microseconds or more: MuJoCo, Box2D);
  - ``sync``: gymnasium ``SyncVectorEnv`` (any env, one process);
  - ``async``: gymnasium ``AsyncVectorEnv`` (any env, one worker process per copy; pays off for
    envs whose step costs far more than the inter-process round trip). Never picked by ``auto``.
"""

from __future__ import annotations

import torch
from gymnasium.envs.registration import load_env_creator

from fastpg.config import Config
from fastpg.envs.base import BatchedEnv, Checkpointable, EnvInfo, Step
from fastpg.envs.classic_control import (
    NATIVE_ENVS,
    NativeEnv,
    TorchAcrobot,
    TorchCartPole,
    TorchMountainCar,
    TorchMountainCarContinuous,
    TorchPendulum,
)
from fastpg.envs.env_kernel import EnvKernel
from fastpg.envs.gym_vector import GymVectorEnv, env_spec, make_gym_vector_env
from fastpg.errors import ConfigError, EnvWorkerError, UnsupportedEnvError

__all__ = [
    "BatchedEnv",
    "Checkpointable",
    "EnvInfo",
    "EnvKernel",
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
    "env_from_config",
    "native_env_ids",
    "kernel_env_ids",
    "backend_problem",
    "kernel_problem",
    "resolve_backend",
    "pool_gains",
]

# env id -> native torch environment class (constructed as cls(num_envs, device, dtype, env_id)).
_NATIVE: dict[str, type[NativeEnv]] = {env_id: cls for cls in NATIVE_ENVS for env_id in cls.VERSIONS}


def native_env_ids() -> tuple[str, ...]:
    """Environment ids that have a native torch implementation (backend ``torch``)."""
    return tuple(sorted(_NATIVE))


def kernel_env_ids(kernel: str) -> tuple[str, ...]:
    """Native ids whose env class has the step ``kernel`` (``"cpp"``: the CartPoles)."""
    return tuple(env_id for env_id, cls in _NATIVE.items() if kernel in cls.KERNELS)


def backend_problem(env_id: str, backend: str) -> str | None:
    """Why ``backend`` cannot step ``env_id`` (a registered id), or None if it can."""
    if backend == "torch" and env_id not in _NATIVE:
        return f"'torch' has no native implementation of {env_id} (native ids: {', '.join(native_env_ids()) or 'none'})"
    if backend == "vector" and env_spec(env_id).vector_entry_point is None:
        return f"'vector' needs an env with its own vectorized implementation; {env_id} has none (use sync or async)"
    return None


def kernel_problem(env_id: str, backend: str, kernel: str, device: torch.device) -> str | None:
    """Why the native step ``kernel`` cannot step ``env_id`` with the resolved ``backend`` on
    ``device``, or None if it can (``"torch"`` always can)."""
    if kernel == "torch":
        return None
    ids = kernel_env_ids(kernel)
    if backend != "torch" or env_id not in ids:
        only = ", ".join(ids)
        return f"{kernel!r} exists for the native (backend torch) {only} only; got {env_id} with backend {backend}"
    if device.type != "cpu":
        return f"{kernel!r} is a CPU kernel; use --device cpu (got device {str(device)!r})"
    return None


def resolve_backend(env_id: str, backend: str = "auto", num_envs: int | None = None) -> str:
    """The concrete backend for ``env_id``: ``backend`` itself unless it is ``auto``, which takes
    the native torch env, else gymnasium's vectorized env, else the pool where it measurably gains
    on ``num_envs`` copies (``pool_gains``), else sync."""
    if backend != "auto":
        return backend
    if env_id in _NATIVE:
        return "torch"
    if _vector_entry_point_loads(env_id):
        return "vector"
    if num_envs is not None and pool_gains(env_id, num_envs):
        return "pool"
    return "sync"


# The pool beat sync where one lockstep step of all N copies costs at least this much in one
# process (benchmarks/pool.py, 2 cores: CartPole N=16 ~100 us: 1.06-1.22x; InvertedPendulum N=4
# ~90 us: 0.93x; LunarLander N=4 ~130 us: 1.05-1.09x; HalfCheetah N=16 ~700 us: 1.5-1.6x).
POOL_MIN_STEP_S = 150e-6


def pool_gains(env_id: str, num_envs: int) -> bool:
    """Whether ``auto`` steps ``num_envs`` copies of ``env_id`` with the pool: there are cores to
    share (usable cores >= 2, per process of a torchrun launch), and one step of all the copies,
    measured on one copy (``step_cost_s``), costs at least ``POOL_MIN_STEP_S``."""
    from fastpg.envs.gym_vector import default_pool_workers, step_cost_s

    if num_envs < 2 or default_pool_workers(num_envs) < 2:
        return False
    try:
        return num_envs * step_cost_s(env_id) >= POOL_MIN_STEP_S
    except Exception:  # the env cannot be built or stepped here: make_env says why, in one line
        return False


def _vector_entry_point_loads(env_id: str) -> bool:
    """True if the id registers a vectorized implementation that imports here (some need jax)."""
    entry = env_spec(env_id).vector_entry_point
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
    kernel: str = "torch",
    workers: int | None = None,
) -> BatchedEnv:
    """Build ``num_envs`` lockstep copies of ``env_id`` with the chosen backend, on ``device``.

    ``dtype`` is the state dtype of native torch envs (float32 or float64); gymnasium backends
    compute in numpy and hand over float32 observations. ``kernel`` is a native env's step
    implementation (``"cpp"``: the compiled CPU step of native CartPole). An impossible
    combination raises ``ConfigError`` naming the backend or kernel. ``workers`` is the pool's W
    (default: ``default_pool_workers``)."""
    device = torch.device(device)
    backend = resolve_backend(env_id, backend, num_envs)
    problem = backend_problem(env_id, backend)
    if problem:
        raise ConfigError("backend", problem)
    problem = kernel_problem(env_id, backend, kernel, device)
    if problem:
        raise ConfigError("env_kernel", problem)
    if backend == "torch":
        env = _NATIVE[env_id](num_envs, device, dtype, env_id=env_id)
        env.set_kernel(kernel)
        return env
    return make_gym_vector_env(env_id, backend, num_envs, device, workers=workers)


def env_from_config(
    cfg: Config, device: torch.device, num_envs: int | None = None, *, backend: str | None = None
) -> BatchedEnv:
    """The env ``cfg`` describes, on ``device``: ``num_envs`` copies (default ``cfg.num_envs``),
    ``backend`` instead of ``cfg.backend`` where given (evaluation steps async ids with sync)."""
    return make_env(
        cfg.env,
        cfg.num_envs if num_envs is None else num_envs,
        backend=cfg.backend if backend is None else backend,
        device=device,
        dtype=getattr(torch, cfg.env_dtype),
        kernel=cfg.env_kernel,
        workers=cfg.pool_workers,
    )
