"""Checks of a ``Config`` against this machine, before anything runs.

``Config`` itself checks types and ranges only (a pure value). ``check_config`` asks the machine:
is the device there, is the env id registered, can the chosen backend (and env kernel, and env
dtype) step it, do the directories the run reads or writes into exist. The CLI calls it right after
parsing, and the ``Trainer`` calls it before building anything, so Python users get the same
one-line ``ConfigError`` as the command line.
"""

from __future__ import annotations

import difflib
import importlib
import os
import tempfile
from pathlib import Path

import gymnasium as gym
import torch
from torch import nn
from torch.distributions import Categorical, Distribution

from fastpg.config import RESUME_AUTO, Config
from fastpg.envs import BatchedEnv, EnvInfo, NativeEnv, backend_problem, kernel_problem, resolve_backend
from fastpg.envs.gym_vector import env_spec, probe_env_info
from fastpg.errors import ConfigError
from fastpg.footprint import Part, footprint, format_bytes
from fastpg.update import slice_rows

__all__ = [
    "check_config",
    "check_env",
    "check_env_interface",
    "is_batched_env",
    "check_policy",
    "resolve_device",
    "check_writable_file",
    "check_writable_dir",
]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else as ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_config(cfg: Config, *, members: int = 1, env: BatchedEnv | None = None) -> None:
    """Raise ``ConfigError`` (naming the field and the value) if ``cfg`` cannot run here
    (``members``: runs of its shape trained together, a population, whose memory adds up).
    ``env``: the env the run is given (a user's own, whose id gymnasium need not know): its id,
    backend and spaces are its own, not looked up from ``cfg.env``."""
    _check_device(cfg.device)
    if env is None:
        _check_env_id(cfg.env)
        _check_backend(cfg)
    _check_paths(cfg)
    _check_memory(cfg, members, env)


def _check_device(device: str) -> None:
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N; got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{device!r} was asked for but CUDA is not available here (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", f"{device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")


def _check_env_id(env_id: str) -> None:
    module, _, name = env_id.rpartition(":")
    if module:  # gymnasium's module:Env-v0 form: importing the module registers the id
        try:
            importlib.import_module(module)
        except Exception as e:
            raise ConfigError("env", f"could not import {module!r} (of {env_id!r}): {type(e).__name__}: {e}") from None
    try:
        env_spec(env_id)
    except Exception:  # gymnasium raises several error types for unknown / unimportable ids
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see gymnasium.pprint_registry())"
        raise ConfigError("env", f"unknown gymnasium environment id {env_id!r}{hint}") from None


def _check_backend(cfg: Config) -> None:
    problem = backend_problem(cfg.env, cfg.backend)
    if problem:
        raise ConfigError("backend", problem)
    backend = resolve_backend(cfg.env, cfg.backend, cfg.num_envs)
    problem = kernel_problem(cfg.env, backend, cfg.env_kernel, resolve_device(cfg.device))
    if problem:
        raise ConfigError("env_kernel", problem)
    if cfg.env_dtype != "float32" and backend != "torch":
        raise ConfigError(
            "env_dtype",
            f"{cfg.env_dtype} applies to native torch envs only; backend {backend!r} for {cfg.env} computes in numpy",
        )


def _check_paths(cfg: Config) -> None:
    if cfg.metrics_file is not None:
        check_writable_file("metrics_file", cfg.metrics_file)
    if cfg.resume is not None and cfg.resume != RESUME_AUTO and not cfg.resume.is_dir():
        raise ConfigError("resume", f"directory {cfg.resume} does not exist")
    if cfg.tensorboard is not None:
        check_writable_dir("tensorboard", cfg.tensorboard)
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "tensorboard", "needs the tensorboard package (the tensorboard extra: pip install -e '.[tensorboard]')"
            ) from None
    if cfg.wandb is not None:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("wandb", "needs the wandb package (the wandb extra: pip install -e '.[wandb]')") from None
    if cfg.checkpoint_dir is not None:
        check_writable_dir("checkpoint_dir", cfg.checkpoint_dir)
    elif cfg.resume is not None:  # checkpoints go back into the resumed directory
        check_writable_dir("resume", cfg.resume)


def _check_memory(cfg: Config, members: int = 1, env: BatchedEnv | None = None) -> None:
    """Refuse a run (or ``members`` of them) whose large buffers (``fastpg.footprint``) exceed the
    memory the device has."""
    device = resolve_device(cfg.device)
    available = available_memory(device)
    if available is None:
        return
    info = probe_env_info(cfg.env) if env is None else env.info
    if env is None:
        backend = resolve_backend(cfg.env, cfg.backend, cfg.num_envs)
    else:
        backend = "torch" if isinstance(env, NativeEnv) else "sync"
    fused = device.type == "cpu" and backend == "torch" and cfg.fused == "auto"
    parts = footprint(cfg, info, backend=backend, fused=fused, slice_rows=slice_rows(cfg.hidden_sizes))
    parts = [Part(p.name, p.nbytes * members, p.flags) for p in parts]
    total = sum(p.nbytes for p in parts)
    if total <= available:
        return
    parts.sort(key=lambda p: -p.nbytes)
    shown = "; ".join(
        f"{p.name} {format_bytes(p.nbytes)} from {' x '.join('--' + f.replace('_', '-') for f in p.flags)}"
        for p in parts
        if p.nbytes >= total / 100
    )
    defaults = Config()
    changed = [f for f in parts[0].flags if getattr(cfg, f) != getattr(defaults, f)]
    who = "the run needs" if members == 1 else f"the population's {members} members need"
    raise ConfigError(
        (changed or parts[0].flags)[0],
        f"{who} at least {format_bytes(total)} of memory ({shown}), more than the "
        f"{format_bytes(available)} available on {device}",
    )


def available_memory(device: torch.device) -> int | None:
    """Bytes the device can still give: free GPU memory, or the OS's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_writable_file(field: str, path: Path) -> None:
    """Raise ``ConfigError`` unless a file can be written at ``path``: asked of the OS (a probe file
    in its directory; an existing file opened for appending, its content untouched), not guessed
    from permission bits."""
    if path.is_dir():
        raise ConfigError(field, f"{path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise ConfigError(field, f"directory {path.parent} does not exist")
    _probe_directory(field, path.parent)
    if path.exists():
        try:
            with path.open("a"):
                pass
        except OSError as e:
            raise ConfigError(field, f"{path} cannot be written ({e.strerror})") from None


def check_writable_dir(field: str, directory: Path) -> None:
    """Raise ``ConfigError`` unless files can be written in ``directory``, or (if it does not exist
    yet) it can be created: probed in it, or in its nearest existing ancestor."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(field, f"{directory} exists and is not a directory")
    existing = next(d for d in (directory, *directory.absolute().parents) if d.exists())
    if not existing.is_dir():
        raise ConfigError(field, f"{directory} cannot be created: {existing} is not a directory")
    _probe_directory(field, existing)


def _probe_directory(field: str, directory: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".fastpg-probe-", dir=directory)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ConfigError(field, f"cannot write in {directory} ({e.strerror or e})") from None


_ENV_MEMBERS = ("num_envs", "info", "device", "reset", "step", "close")


def is_batched_env(obj: object) -> bool:
    """Whether ``obj`` has the members of ``BatchedEnv`` (an env, not a function that makes one)."""
    return all(hasattr(obj, name) for name in _ENV_MEMBERS)


def check_env_interface(env: object) -> None:
    """Raise ``ConfigError`` unless ``env`` has what ``BatchedEnv`` promises (before anything uses it)."""
    missing = [name for name in _ENV_MEMBERS if not hasattr(env, name)]
    if missing:
        raise ConfigError(
            "env",
            f"the env given ({type(env).__name__}) is not a fastpg BatchedEnv: it has no {', '.join(missing)} "
            "(see fastpg.BatchedEnv; wrap a gymnasium VectorEnv in fastpg.GymVectorEnv)",
        )
    if not isinstance(env.info, EnvInfo):
        raise ConfigError("env", f"the env given has info of type {type(env.info).__name__}, not fastpg.EnvInfo")


def check_policy(policy: nn.Module, info: EnvInfo, obs: torch.Tensor) -> None:
    """Raise ``ConfigError`` unless ``policy(obs)`` for the first observations ``[N, *obs_shape]``
    returns the distribution fastpg samples from and scores: a ``torch.distributions.Distribution``
    with batch shape ``[N]`` over actions of the env's shape (one forward pass, no sampling)."""
    name = type(policy).__name__
    try:
        with torch.no_grad():
            dist = policy(obs)
    except Exception as e:
        failed = f"{type(e).__name__}: {e}"
        raise ConfigError("policy", f"{name} failed on observations of shape {list(obs.shape)}: {failed}") from None
    if not isinstance(dist, Distribution):
        raise ConfigError(
            "policy",
            f"{name} must return a torch.distributions.Distribution for observations [N, *obs_shape]; "
            f"it returned {type(dist).__name__}",
        )
    n = obs.shape[0]
    if info.discrete:
        expected = (n,)
        width = dist.logits.shape[-1] if isinstance(dist, Categorical) else info.num_actions
        if width != info.num_actions:
            actions = f"{info.env_id} has {info.num_actions} actions"
            raise ConfigError("policy", f"{name} gives {width} action logits; {actions}")
    else:
        expected = (n, *info.action_shape)
    got = tuple(dist.batch_shape) + tuple(dist.event_shape)
    if got != expected:
        raise ConfigError(
            "policy",
            f"{name} returned a distribution over shape {list(got)} for observations {list(obs.shape)}; "
            f"expected {list(expected)} (batch [N] of {info.env_id}'s actions)",
        )


def check_env(cfg: Config, env: BatchedEnv, device: torch.device, num_envs: int | None = None) -> None:
    """Raise ``ConfigError`` if an env handed to the ``Trainer`` does not fit ``cfg`` and ``device``
    (``num_envs``: the copies this process steps when it is one of several; else ``cfg.num_envs``)."""
    info = env.info
    if num_envs is not None and num_envs != cfg.num_envs:
        if env.num_envs != num_envs:
            raise ConfigError(
                "num_envs",
                f"is {cfg.num_envs} over all processes, {num_envs} in this one, but the env given has "
                f"{env.num_envs} copies",
            )
    elif env.num_envs != cfg.num_envs:
        raise ConfigError("num_envs", f"is {cfg.num_envs} but the env given has {env.num_envs} copies")
    if torch.device(env.device) != device:
        raise ConfigError("device", f"is {device} but the env given returns tensors on {env.device}")
    if info.discrete and cfg.action_bound != "clip":
        raise ConfigError(
            "action_bound",
            f"{cfg.action_bound!r} bounds Box actions; {cfg.env} has {info.describe_actions()} actions",
        )
    if info.discrete and cfg.log_std_init is not None:
        raise ConfigError(
            "log_std_init",
            f"applies to Box (continuous) action spaces only; {info.env_id} has "
            f"{info.describe_actions()} actions (got log_std_init={cfg.log_std_init})",
        )
