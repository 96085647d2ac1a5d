"""Checks of a ``Config`` against this machine, before anything runs.

``Config`` itself checks types and ranges only (a pure value). ``check_config`` asks the machine:
is the device there, is the env id registered, can the chosen backend (and env kernel, and env
dtype) step it, do the directories the run reads or writes into exist. The CLI calls it right after
parsing, and the ``Trainer`` calls it before building anything, so Python users get the same
one-line ``ConfigError`` as the command line.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

import gymnasium as gym
import torch

from fastpg.config import Config
from fastpg.envs import BatchedEnv, backend_problem, kernel_problem, resolve_backend
from fastpg.errors import ConfigError

__all__ = ["check_config", "check_env", "resolve_device", "check_writable_file", "check_writable_dir"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else as ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_config(cfg: Config) -> None:
    """Raise ``ConfigError`` (naming the field and the value) if ``cfg`` cannot run here."""
    _check_device(cfg.device)
    _check_env_id(cfg.env)
    _check_backend(cfg)
    _check_paths(cfg)


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
    try:
        gym.spec(env_id)
    except Exception:  # gymnasium raises several error types for unknown / unimportable ids
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see gymnasium.pprint_registry())"
        raise ConfigError("env", f"unknown gymnasium environment id {env_id!r}{hint}") from None


def _check_backend(cfg: Config) -> None:
    problem = backend_problem(cfg.env, cfg.backend)
    if problem:
        raise ConfigError("backend", problem)
    backend = resolve_backend(cfg.env, cfg.backend)
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
    if cfg.resume is not None and not cfg.resume.is_dir():
        raise ConfigError("resume", f"directory {cfg.resume} does not exist")
    if cfg.checkpoint_dir is not None:
        check_writable_dir("checkpoint_dir", cfg.checkpoint_dir)
    elif cfg.resume is not None:  # checkpoints go back into the resumed directory
        check_writable_dir("resume", cfg.resume)


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


def check_env(cfg: Config, env: BatchedEnv, device: torch.device) -> None:
    """Raise ``ConfigError`` if an env handed to the ``Trainer`` does not fit ``cfg`` and ``device``."""
    info = env.info
    if env.num_envs != cfg.num_envs:
        raise ConfigError("num_envs", f"is {cfg.num_envs} but the env given has {env.num_envs} copies")
    if torch.device(env.device) != device:
        raise ConfigError("device", f"is {device} but the env given returns tensors on {env.device}")
    if info.discrete and cfg.log_std_init is not None:
        raise ConfigError(
            "log_std_init",
            f"applies to Box (continuous) action spaces only; {info.env_id} has "
            f"{info.describe_actions()} actions (got log_std_init={cfg.log_std_init})",
        )
