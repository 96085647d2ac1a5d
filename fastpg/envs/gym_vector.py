"""Adapter from gymnasium vector environments (numpy, CPU) to the torch ``BatchedEnv`` interface.

Covers ``SyncVectorEnv``, ``AsyncVectorEnv`` and gymnasium's own vectorized envs (the
``vector_entry_point`` of an id, e.g. the numpy ``CartPoleVectorEnv``), or any ``VectorEnv`` a user
builds, as long as its autoreset mode is NEXT_STEP (gymnasium's default) or SAME_STEP.

Staging: on a CPU device, observations reach torch through ``torch.from_numpy`` (no copy when the
env already produces float32); the collector's write into storage is the only copy. On a CUDA device
they are copied into a pinned host buffer and sent with ``non_blocking=True``. Reusing that pinned
buffer on the next step is safe because the next step first needs the action, and reading the
action back to the host waits for the stream, which has by then finished the earlier copy.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import Tensor

from fastpg.envs.base import EnvInfo, Step
from fastpg.errors import EnvWorkerError, UnsupportedEnvError

__all__ = [
    "GymVectorEnv",
    "make_gym_vector_env",
    "env_spec",
    "env_info_from_spaces",
    "UnsupportedEnvError",
    "EnvWorkerError",
]

_MODES = {"vector": "vector_entry_point", "sync": "sync", "async": "async", "pool": None}
# An AsyncVectorEnv step or reset that takes longer than this is taken for a hung or dead worker.
ASYNC_TIMEOUT_S = 60.0


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Start worker processes with SIGINT ignored (they inherit it; Python then installs no
    KeyboardInterrupt handler in them): a Ctrl-C at the terminal reaches the whole process group,
    and the main process, not each worker, decides how the run ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _failure_said_once():
    """gymnasium logs a failed worker's traceback (as a warning) before it raises; fastpg reports
    the failure in one line, so what is logged during a call that fails is dropped, and what is
    logged during one that succeeds is passed on as it was."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _leave_process_group(env: gym.Env) -> gym.Env:
    """Applied to each env as it is built: in an async worker process, move that worker into a
    process group of its own. A signal to the launcher's whole group (``kill -TERM -PGID`` from a
    job scheduler or systemd, Ctrl-C at a terminal) then reaches the main process alone, which
    stops after the epoch, writes its checkpoint and summary and closes the workers; killed with
    it, the workers would leave the epoch unfinishable. (The env built in the main process for
    the spaces stays where it is.)"""
    if multiprocessing.parent_process() is not None:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
    return env


class _CopyFailure(Exception):
    """Raised by ``_NamedCopy``: env copy ``index`` failed with the chained exception."""

    def __init__(self, index: int):
        super().__init__(f"env copy {index}")
        self.index = index


class _NamedCopy(gym.Wrapper):
    """Copy ``index`` of a sync vector env: its failures name the copy, and a failing ``close``
    warns instead of leaving the other copies open."""

    def __init__(self, env: gym.Env, index: int):
        super().__init__(env)
        self.index = index

    def step(self, action):
        try:
            return self.env.step(action)
        except Exception as e:
            raise _CopyFailure(self.index) from e

    def reset(self, **kwargs):
        try:
            return self.env.reset(**kwargs)
        except Exception as e:
            raise _CopyFailure(self.index) from e

    def close(self):
        try:
            self.env.close()
        except Exception as e:
            warnings.warn(f"env copy {self.index}: close failed: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def _name_copies() -> Callable[[gym.Env], gym.Env]:
    """A ``make_vec`` wrapper numbering the copies as the sync vector env builds them (in order)."""
    counter = itertools.count()
    return lambda env: _NamedCopy(env, next(counter))


def env_info_from_spaces(env_id: str, obs_space: spaces.Space, action_space: spaces.Space, spec=None) -> EnvInfo:
    """Translate gymnasium single-env spaces into an ``EnvInfo``, refusing what fastpg cannot train.

    Supported: Box or Discrete observations (Discrete ones are one-hot encoded) and Discrete or Box
    actions.
    """
    supported = "fastpg supports Box or Discrete observation spaces and Discrete or Box action spaces"
    if isinstance(obs_space, spaces.Box):
        obs_shape, encoding = tuple(int(d) for d in obs_space.shape), "box"
    elif isinstance(obs_space, spaces.Discrete):
        obs_shape, encoding = (int(obs_space.n),), "one_hot"
    else:
        raise UnsupportedEnvError(f"env {env_id}: observation space {obs_space} is not supported; {supported}")
    common = dict(
        env_id=env_id,
        obs_shape=obs_shape,
        obs_encoding=encoding,
        reward_threshold=getattr(spec, "reward_threshold", None),
        max_episode_steps=getattr(spec, "max_episode_steps", None),
    )
    if isinstance(action_space, spaces.Discrete):
        return EnvInfo(discrete=True, num_actions=int(action_space.n), action_shape=(), **common)
    if isinstance(action_space, spaces.Box):
        return EnvInfo(
            discrete=False,
            num_actions=None,
            action_shape=tuple(int(d) for d in action_space.shape),
            action_low=torch.as_tensor(action_space.low, dtype=torch.float32),
            action_high=torch.as_tensor(action_space.high, dtype=torch.float32),
            **common,
        )
    raise UnsupportedEnvError(f"env {env_id}: action space {action_space} is not supported; {supported}")


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """gymnasium's spec of ``env_id``, also in gymnasium's ``module:Env-v0`` form, as ``gym.make``
    takes it (the module is imported first: importing it registers the id)."""
    module, _, name = env_id.rpartition(":")
    if module:
        importlib.import_module(module)
    return gym.spec(name)


# What to install when gymnasium says a dependency is missing (the words of its message -> the advice).
_INSTALL_HINTS = (
    ("box2d", "pip install 'fastpg-rl[box2d]'"),
    (
        "gymnasium-robotics",
        "the -v2/-v3 MuJoCo ids left gymnasium; use -v5 ids: pip install 'fastpg-rl[mujoco]'",
    ),
    ("mujoco", "pip install 'fastpg-rl[mujoco]'"),
    ("jax", "pip install 'gymnasium[jax]'"),
)


def _could_not_create(env_id: str, e: Exception) -> UnsupportedEnvError:
    """One line for an env whose construction failed, naming what to install where we know it."""
    text = " ".join(str(e).split())
    hint = next((h for word, h in _INSTALL_HINTS if word in text.lower()), None)
    if hint is None and isinstance(e, ModuleNotFoundError) and e.name:
        hint = f"pip install {e.name.split('.')[0]}"
    return UnsupportedEnvError(
        f"could not create {env_id}: {type(e).__name__}: {text[:300]}" + (f" (install: {hint})" if hint else "")
    )


def probe_env_info(env_id: str) -> EnvInfo:
    """Build one copy of ``env_id`` with ``gym.make`` and describe its spaces: the one guarded way
    fastpg looks at a gymnasium env before training (``UnsupportedEnvError`` in one line if it
    cannot be built, naming the package to install where gymnasium's error says which)."""
    try:
        spec = env_spec(env_id)
        with warnings.catch_warnings():  # a probe: the env built for training says its own warnings
            warnings.simplefilter("ignore")
            probe = gym.make(env_id)
    except Exception as e:  # missing optional dependency (box2d, mujoco, jax...), bad kwargs, a broken env
        raise _could_not_create(env_id, e) from e
    try:
        return env_info_from_spaces(env_id, probe.observation_space, probe.action_space, spec)
    finally:
        try:
            probe.close()
        except Exception as e:  # the env works; its close does not: say so, go on
            warnings.warn(f"env {env_id}: close failed: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)


def make_gym_vector_env(
    env_id: str, backend: str, num_envs: int, device: torch.device | str = "cpu", *, workers: int | None = None
) -> GymVectorEnv:
    """Build ``num_envs`` copies of ``env_id`` with a gymnasium backend (vector, sync or async), or
    fastpg's worker pool (``pool``: ``workers`` processes, default ``default_pool_workers``)."""
    if backend not in _MODES:
        raise ValueError(f"backend must be one of {', '.join(_MODES)}, got {backend!r}")
    probe_env_info(env_id)  # refuse an env that cannot be built, or its spaces, before any worker starts
    if backend == "pool":
        return GymVectorEnv(_make_pool(env_id, num_envs, workers), device=device, env_id=env_id)
    kwargs = {}
    if backend != "vector":
        # The adapter copies every array into torch at once, so gymnasium need not copy first.
        kwargs["vector_kwargs"] = {"copy": False}
    if backend == "async":
        kwargs["wrappers"] = [_leave_process_group]
    elif backend == "sync":
        kwargs["wrappers"] = [_name_copies()]
    try:
        with _workers_ignore_sigint() if backend == "async" else contextlib.nullcontext():
            vec = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=_MODES[backend], **kwargs)
    except OSError as e:  # fork refused: a process or memory limit
        raise EnvWorkerError(
            f"env {env_id}: could not start {num_envs} async worker processes ({e.strerror or e}); "
            "lower --num-envs or use --backend sync"
        ) from e
    except Exception as e:  # the env's own constructor, in a worker or here
        raise _could_not_create(f"{num_envs} copies of {env_id}", e) from e
    return GymVectorEnv(vec, device=device, env_id=env_id)


@functools.cache
def step_cost_s(env_id: str, steps: int = 40) -> float:
    """Seconds one step of one copy of ``env_id`` takes here: the median of ``steps`` steps with
    random actions (seeded) after a reset, resetting where an episode ends. Measured once per id
    and process (a MuJoCo env: ~10 ms with its construction)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(env_id)
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        times = []
        for _ in range(steps):
            action = env.action_space.sample()
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            times.append(time.perf_counter() - start)
            if terminated or truncated:
                env.reset()
        return sorted(times)[len(times) // 2]
    finally:
        with contextlib.suppress(Exception):
            env.close()


def default_pool_workers(num_envs: int) -> int:
    """The pool's default W: the usable cores, shared among the processes a torchrun launch runs on
    this machine (``LOCAL_WORLD_SIZE``), at least 1 and at most ``num_envs``."""
    from fastpg.distributed import local_world_size
    from fastpg.placement import usable_cores

    return max(1, min(num_envs, usable_cores() // max(1, local_world_size(1))))


def _make_pool(env_id: str, num_envs: int, workers: int | None) -> gym.vector.VectorEnv:
    from fastpg.envs.pool import PoolVectorEnv

    workers = min(num_envs, workers or default_pool_workers(num_envs))
    try:
        return PoolVectorEnv(env_id, num_envs, workers)
    except OSError as e:  # fork refused: a process or memory limit
        raise EnvWorkerError(
            f"env {env_id}: could not start {workers} pool worker processes ({e.strerror or e}); "
            "lower --pool-workers or use --backend sync"
        ) from e


class GymVectorEnv:
    """A gymnasium ``VectorEnv`` behind the torch ``BatchedEnv`` interface (see ``envs.base``)."""

    def __init__(self, vec_env: gym.vector.VectorEnv, device: torch.device | str = "cpu", env_id: str | None = None):
        self.vec_env = vec_env
        self.device = torch.device(device)
        self.num_envs = int(vec_env.num_envs)
        spec = getattr(vec_env.unwrapped, "spec", None) or getattr(vec_env, "spec", None)
        env_id = env_id or getattr(spec, "id", None) or type(vec_env).__name__
        mode = vec_env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        mode = AutoresetMode(mode) if isinstance(mode, str) else mode
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise UnsupportedEnvError(
                f"env {env_id}: autoreset mode {mode} is not supported; use NEXT_STEP or SAME_STEP"
            )
        self.same_step_reset = mode == AutoresetMode.SAME_STEP
        self.env_id = env_id
        self._async = isinstance(vec_env, gym.vector.AsyncVectorEnv)
        # Processes stepping the copies beside the trainer's (the pool's workers): the trainer's
        # torch threads yield them the cores while it collects (fastpg.placement.collect_threads).
        self.worker_processes = getattr(vec_env, "worker_processes", 0)
        self._pool = hasattr(vec_env, "worker_processes")  # fastpg's pool: raises its own one-line errors
        self._pending_action: np.ndarray | None = None  # sync and vector envs: stepped in step_wait
        self._broken = False  # async workers stopped after a failure (_stop_workers)
        self.async_timeout_s = ASYNC_TIMEOUT_S
        # gymnasium seeds copy i with seed + i; a data-parallel shard's copies are rows lo... of the
        # whole env, so they are seeded seed + lo + i (set_shard)
        self.seed_offset = 0
        self.info = env_info_from_spaces(env_id, vec_env.single_observation_space, vec_env.single_action_space, spec)
        act_space = vec_env.single_action_space
        self._action_start = int(getattr(act_space, "start", 0)) if self.info.discrete else 0
        self._action_np_dtype = act_space.dtype
        N, dev = self.num_envs, self.device
        self._prev_done = np.zeros(N, dtype=bool)
        self._all_valid = torch.ones(N, dtype=torch.bool, device=dev)
        self._staging: dict[str, Tensor] = {}  # pinned host buffers, CUDA only
        if not self.info.discrete:
            self._low = self.info.action_low.to(dev)
            self._high = self.info.action_high.to(dev)

    # -- conversions ----------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray, dtype: torch.dtype, key: str) -> Tensor:
        t = torch.from_numpy(np.asarray(array))
        if self.device.type == "cpu":
            return t if t.dtype == dtype else t.to(dtype)
        staging = self._staging.get(key)
        if staging is None or staging.shape != t.shape:
            staging = self._staging[key] = torch.empty(t.shape, dtype=dtype, pin_memory=True)
        staging.copy_(t)
        return staging.to(self.device, non_blocking=True)

    def _obs(self, obs: np.ndarray) -> Tensor:
        if self.info.obs_encoding == "one_hot":
            idx = torch.from_numpy(np.asarray(obs, dtype=np.int64)).to(self.device)
            return torch.nn.functional.one_hot(idx, self.info.obs_shape[0]).to(torch.float32)
        return self._tensor(obs, torch.float32, "obs")

    def _action(self, action: Tensor) -> np.ndarray:
        if self.info.discrete:
            a = action.to("cpu", torch.int64).numpy()
            return a + self._action_start if self._action_start else a
        # Box: the policy's sample is unbounded; the env receives it clipped to the bounds.
        a = torch.clamp(action, self._low, self._high).to("cpu").numpy()
        return a.astype(self._action_np_dtype, copy=False)

    # -- BatchedEnv ------------------------------------------------------------------------------
    def _worker_error(self, what: str, e: BaseException) -> EnvWorkerError:
        """Name the failed workers, stop all of them, and wrap the original exception."""
        vec = self.vec_env
        failed = self._failed_workers()
        dead = [i for i, p in enumerate(vec.processes) if not p.is_alive()]
        deadline = time.monotonic() + 1.0  # a dead worker's pipe can report EOF before it is reaped
        while not (failed or dead) and not isinstance(e, multiprocessing.TimeoutError) and time.monotonic() < deadline:
            time.sleep(0.01)
            dead = [i for i, p in enumerate(vec.processes) if not p.is_alive()]
        workers = sorted(set(failed) | set(dead))
        who = f"worker{'s' if len(workers) != 1 else ''} {', '.join(map(str, workers))}" if workers else "a worker"
        if isinstance(e, multiprocessing.TimeoutError):
            cause = f"no answer within {self.async_timeout_s:g} s (hung or died)"
        elif dead and not failed:
            codes = sorted({vec.processes[i].exitcode for i in dead}, key=str)
            cause = f"the worker process died (exit code {', '.join(map(str, codes))})"
        else:
            cause = f"{type(e).__name__}: {e}"
        self._stop_workers()
        return EnvWorkerError(f"env {self.env_id}: {what} failed in async {who}: {cause}")

    def _stop_workers(self) -> None:
        """Stop every async worker after a failure, quietly (the failure is said once, by the
        caller): gymnasium's close can itself fail on the dead worker's pipe (EOFError, EBADF),
        so the processes are terminated here and the env is marked closed."""
        vec = self.vec_env
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's notes on closing mid-step: said here in one line
            vec.close(terminate=True)
        for process in vec.processes:
            with contextlib.suppress(Exception):
                if process.is_alive():
                    process.terminate()
                process.join(timeout=1.0)
        vec.closed = True  # nothing left to close: gymnasium's __del__ would try again and warn
        self._broken = True

    def _env_error(self, what: str, e: BaseException) -> EnvWorkerError:
        """A sync or vector env's failure as one line: the env id, the copy (where known) and the
        original exception; the env is closed."""
        where = f"env copy {e.index}" if isinstance(e, _CopyFailure) else "the vector env"
        cause = e.__cause__ if isinstance(e, _CopyFailure) else e
        self.close()
        return EnvWorkerError(f"env {self.env_id}: {what} failed in {where}: {type(cause).__name__}: {cause}")

    def set_shard(self, lo: int, total: int, counts_before=None) -> None:
        """Make these copies rows ``[lo, lo + num_envs)`` of a ``total``-copy env split over
        processes (``fastpg.distributed``): copy i is seeded as copy ``lo + i`` of the whole env."""
        self.seed_offset = lo

    def reset(self, seed: int | None = None) -> Tensor:
        if seed is not None:
            seed = seed + self.seed_offset
        if self._async:
            try:
                with _failure_said_once():
                    self.vec_env.reset_async(seed=seed)
                    obs, _ = self.vec_env.reset_wait(timeout=self.async_timeout_s)
            except Exception as e:
                raise self._worker_error("reset", e) from e
        else:
            try:
                obs, _ = self.vec_env.reset(seed=seed)
            except EnvWorkerError:  # the pool's own one line; it has stopped its workers
                raise
            except Exception as e:
                raise self._env_error("reset", e) from e
        self._prev_done = np.zeros(self.num_envs, dtype=bool)
        return self._obs(obs)

    def step(self, action: Tensor) -> Step:
        self.step_async(action)
        return self.step_wait()

    def step_async(self, action: Tensor) -> None:
        """Start a step with ``action``: the async backend's and the pool's workers start stepping
        (a population steps all its members' envs this way before waiting for any); the others
        step in ``step_wait``."""
        action = self._action(action)
        if self._async:
            try:
                with _failure_said_once():
                    self.vec_env.step_async(action)
            except Exception as e:
                raise self._worker_error("step", e) from e
        elif self._pool:
            self.vec_env.step_async(action)  # the pool's own one line on a failure
        else:
            self._pending_action = action

    def step_wait(self) -> Step:
        """End the step ``step_async`` started."""
        if self._async:
            try:
                with _failure_said_once():
                    obs, reward, terminated, truncated, _ = self.vec_env.step_wait(timeout=self.async_timeout_s)
            except Exception as e:
                raise self._worker_error("step", e) from e
        elif self._pool:
            obs, reward, terminated, truncated, _ = self.vec_env.step_wait()
        else:
            try:
                obs, reward, terminated, truncated, _ = self.vec_env.step(self._pending_action)
            except EnvWorkerError:  # a vector env's own one line
                raise
            except Exception as e:
                raise self._env_error("step", e) from e
        # Flag logic in numpy: on N-element arrays it costs a fraction of a torch op.
        done = np.logical_or(terminated, truncated)
        if self.same_step_reset:
            valid = self._all_valid
        else:
            valid = self._tensor(~self._prev_done, torch.bool, "valid")  # NEXT_STEP reset steps
            self._prev_done = done
        return Step(
            self._obs(obs),
            self._tensor(reward, torch.float32, "reward"),
            self._tensor(done, torch.bool, "done"),
            valid,
            self._tensor(terminated, torch.bool, "terminated"),
        )

    def close(self) -> None:
        """Close the envs; an env whose close raises gets a warning, not a traceback (the run's
        results are written by then)."""
        if getattr(self.vec_env, "closed", False) or self._broken:
            return
        try:
            self.vec_env.close(terminate=True) if self._async and self._failed_workers() else self.vec_env.close()
        except Exception as e:
            warnings.warn(f"env {self.env_id}: close failed: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)

    def _failed_workers(self) -> list[int]:
        """Async workers whose pipe gymnasium closed after an error (or that never answered)."""
        return [i for i, p in enumerate(self.vec_env.parent_pipes) if p is None or p.closed]
