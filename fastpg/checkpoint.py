"""Checkpoints: everything a run needs to continue, written atomically, loaded without pickled code.

A checkpoint is one file, ``DIR/checkpoint.pt``, holding only tensors, numbers, strings, lists and
dicts, so that ``torch.load(path, weights_only=True)`` reads it (a checkpoint cannot run code). It
is written to a temporary file in the same directory, flushed and fsynced, then renamed over the
previous one (and the directory fsynced): a crash or a kill at any moment leaves either the previous
checkpoint or the new one, never a torn file.

Contents (``FORMAT``): the config (as a dict), the counters (epoch, env steps, episodes, training
time), the episode window, the policy's and the optimizer's state dicts, the trainer's sampling
generator, the carry (next observation, running episode totals) and the environment's state: for a
native env its state tensors, step counters and generator, which makes a resumed run bit-identical
to an uninterrupted one on CPU. Gymnasium backends cannot hand over their environments' internal
state as plain tensors; on resume their envs are re-seeded (``seed + epoch``) and the episodes that
were running are dropped (documented in the README).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fastpg.config import Config
from fastpg.errors import ConfigError

__all__ = ["FORMAT", "CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "check_compatible"]

FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
# Fields that must match for a checkpoint to continue a run: they fix the shapes of the policy, the
# optimizer state, the storage and the environment. (Budgets, learning rate, logging... may change.)
COMPATIBLE_FIELDS = (
    "env",
    "backend",
    "env_dtype",
    "num_envs",
    "num_steps",
    "hidden_sizes",
    "activation",
    "baseline",
    "log_std_init",
)


def check_compatible(saved: dict[str, Any], cfg: Config, path: str | Path) -> None:
    """Raise ``ConfigError`` naming every field where ``cfg`` cannot continue the saved run."""
    now = cfg.to_dict()
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in COMPATIBLE_FIELDS if saved.get(k) != now[k]]
    if diffs:
        raise ConfigError("resume", f"the checkpoint in {path} is from an incompatible run ({'; '.join(diffs)})")


def save_checkpoint(state: dict[str, Any], directory: str | Path) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt`` atomically; returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    for stale in directory.glob(".checkpoint-*.tmp"):  # left by a run killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself is durable
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Read ``directory/checkpoint.pt`` with ``weights_only=True``; clear errors if it is missing or
    not a fastpg checkpoint."""
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError("resume", f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in several types
        raise ConfigError("resume", f"{path} is not a readable fastpg checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError("resume", f"{path} is not a fastpg checkpoint of format {FORMAT} (got {got!r})")
    return state
