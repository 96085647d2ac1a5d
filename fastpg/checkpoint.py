"""Checkpoints: everything a run needs to continue, durable before visible, verified before loading.

A checkpoint is one file, ``DIR/checkpoint.pt``, holding only tensors, numbers, strings, lists and
dicts, so that ``torch.load(path, weights_only=True)`` reads it (a checkpoint cannot run code);
``save_checkpoint`` refuses anything else, naming the entry. Each write is durable before it is
visible: the new file is written under a temporary name, flushed and fsynced, linked under its
history name ``DIR/checkpoint-NNNNNN.pt``, renamed over ``checkpoint.pt``, and the directory is
fsynced; only then are history files beyond the newest ``keep`` removed (``--keep-checkpoints``,
default 2). A crash of the process or of the machine at any moment leaves the previous checkpoint
or the new one, never a torn file under either name.

Each file carries a SHA-256 of its contents (the tensors' bytes, dtypes and shapes, and every
other value: ``state_digest``), checked when it is loaded: torch's loader does not check the zip
archive's CRCs (pytorch/pytorch#126952), so a flipped byte inside a tensor would otherwise load as
another value. ``load_checkpoint`` reads ``checkpoint.pt``; if it is missing, truncated or fails
its checksum, it warns in one line and takes the newest history file that is sound (a run resumed
from it continues bit for bit from that epoch).

Contents (``FORMAT``): the config (as a dict), the counters (epoch, env steps, episodes, training
time), the episode window, the policy's and the optimizer's state dicts, the trainer's sampling
generator, the carry (next observation, running episode totals) and the environment's state: for a
native env its state tensors, step counters and generator, which makes a resumed run bit-identical
to an uninterrupted one on CPU. Gymnasium backends cannot hand over their environments' internal
state as plain tensors; on resume their envs are re-seeded (``seed + epoch``) and the episodes that
were running are dropped (documented in the README). Files of format 1 (before checksums) load
without the check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from fastpg._crash import crash_point
from fastpg.config import OUTPUT_FIELDS, RESUME_AUTO, Config
from fastpg.errors import ConfigError, OutputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "FORMAT",
    "CHECKPOINT_NAME",
    "KEEP_CHECKPOINTS",
    "save_checkpoint",
    "history",
    "clear_history",
    "has_checkpoint",
    "state_digest",
    "load_checkpoint",
    "check_compatible",
    "DirectoryLock",
    "check_state",
    "resumed_config",
    "resolve_resume",
    "restart_count",
    "RESUME_AUTO",
    "RESUME_CHANGEABLE",
]

FORMAT = 2
FORMATS = (1, 2)  # readable: 1 has no checksum
CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_PREFIX = "checkpoint-"  # DIR/checkpoint-NNNNNN.pt: the newest ``keep`` checkpoints, by number
KEEP_CHECKPOINTS = 2
LOCK_NAME = ".fastpg.lock"
TEMP_PREFIX = ".checkpoint-"
# Fields a resumed run may change: budgets, target, learning rate, outputs, logging, the
# evaluation, the non-finite guard, the thread count and the pool's worker count (which never
# change results).
# Everything else continues as saved (see resumed_config).
RESUME_CHANGEABLE = (
    "max_env_steps",
    "max_epochs",
    "target_return",
    "lr",
    *OUTPUT_FIELDS,
    "eval_episodes",
    "eval_deterministic",
    "max_bad_updates",
    "threads",
    "pool_workers",
)


def restart_count() -> int:
    """This job's restarts so far under torchrun (``TORCHELASTIC_RESTART_COUNT``); 0 outside it."""
    value = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def resolve_resume(cfg: Config) -> tuple[Config, bool, str | None]:
    """The config a start runs with, whether it continues the run by itself, and a note to say.

    ``--resume auto``, and a torchrun restart (``TORCHELASTIC_RESTART_COUNT`` > 0) of a run with
    ``--checkpoint-dir``: a start continues from the checkpoint in ``checkpoint_dir`` where there is
    one (a restart), else it starts afresh (a first start; a metrics file left by an attempt that
    failed before its first checkpoint is replaced). An explicit ``--resume DIR`` and every other
    start are left as they are (a first start with a checkpoint already there is refused, as ever)."""
    restarted = restart_count() > 0 and cfg.resume is None and cfg.checkpoint_dir is not None
    if cfg.resume != RESUME_AUTO and not restarted:
        return cfg, False, None
    directory = cfg.checkpoint_dir
    if directory is not None and has_checkpoint(directory):
        return cfg.replace(resume=directory), True, f"restart: continuing the run checkpointed in {directory}"
    replaced = cfg.metrics_file is not None and cfg.metrics_file.exists() and not cfg.overwrite
    note = f"restart: no checkpoint in {directory} yet: starting afresh"
    return (
        cfg.replace(resume=None, overwrite=cfg.overwrite or replaced),
        False,
        note + (f" (replacing {cfg.metrics_file})" if replaced else ""),
    )


def resumed_config(saved: dict[str, Any], given: Config, explicit: set[str]) -> Config:
    """The config that continues a saved run: the saved config, with the ``explicit`` fields (the
    flags typed on the command line) of ``given`` applied where they may change
    (``RESUME_CHANGEABLE``); ``ConfigError`` for one that may not and differs. Checkpoints go back
    into the resumed directory unless ``--checkpoint-dir`` says otherwise; ``overwrite`` is never
    carried over."""
    known = {f.name for f in dataclasses.fields(Config)}
    base = Config.from_dict({k: v for k, v in saved.items() if k in known})
    changes: dict[str, Any] = {"resume": given.resume, "checkpoint_dir": None, "overwrite": False}
    for name in sorted(explicit & known):
        new, old = getattr(given, name), getattr(base, name)
        if name in RESUME_CHANGEABLE:
            changes[name] = new
        elif new != old:
            raise ConfigError(
                name,
                f"cannot change when resuming (checkpoint: {old!r}, given: {new!r}); a resumed run may change only "
                f"{', '.join('--' + f.replace('_', '-') for f in RESUME_CHANGEABLE)}",
            )
    return dataclasses.replace(base, **changes)


def check_compatible(saved: dict[str, Any], cfg: Config, path: str | Path) -> None:
    """Raise ``ConfigError`` naming every field where ``cfg`` cannot continue the saved run: the
    rule of ``resumed_config`` (what ``fastpg train --resume`` applies), for a config built in
    Python. Only ``RESUME_CHANGEABLE`` fields may differ from the saved config; fields the
    checkpoint predates are not compared."""
    now = cfg.to_dict()
    fixed = [k for k in now if k not in RESUME_CHANGEABLE and k in saved]
    diffs = [f"{k}: checkpoint {saved[k]!r}, now {now[k]!r}" for k in fixed if saved[k] != now[k]]
    if diffs:
        raise ConfigError(
            "resume",
            f"the checkpoint in {path} is from another run ({'; '.join(diffs)}); a resumed run may change only "
            f"{', '.join(RESUME_CHANGEABLE)}",
        )


def save_checkpoint(state: dict[str, Any], directory: str | Path, *, keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write ``state`` to ``directory/checkpoint.pt``, durable before visible (module docstring),
    keeping the newest ``keep`` checkpoints as history; returns the path.

    Raises ``TypeError`` naming the entry if ``state`` holds something the weights-only loader
    would refuse (nothing is written), ``OutputError`` if it cannot be written (a full disk, say):
    the temporary file is removed and the previous checkpoint is left as it was."""
    if not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an integer >= 1, got {keep!r}")
    directory = Path(directory)
    path = directory / CHECKPOINT_NAME
    problem = _unloadable_entry(state, "state")
    if problem is not None:
        raise TypeError(
            f"save_checkpoint: {problem}, which a checkpoint cannot hold: torch.load(weights_only=True) would "
            "refuse the file (a checkpoint holds tensors, numbers, strings, None, and lists, tuples and dicts of them)"
        )
    content = {"format": FORMAT, **state}
    content["sha256"] = state_digest(content)
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=directory)
        with os.fdopen(fd, "wb") as f:
            torch.save(content, f)
            crash_point("checkpoint-write")
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before any name points at them
        older = history(directory)
        number = older[-1][0] + 1 if older else 1
        _link(tmp, directory / f"{HISTORY_PREFIX}{number:06d}.pt")
        os.replace(tmp, path)
        tmp = None
        crash_point("checkpoint-renamed")
        _fsync_directory(directory)  # the names are durable
        for _, stale in older[: max(0, len(older) + 1 - keep)]:  # only now: the new one is durable
            stale.unlink()
        if len(older) + 1 > keep:
            _fsync_directory(directory)
    except (OSError, RuntimeError) as e:  # torch's zip writer says a full disk as RuntimeError
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was written"
        raise OutputError(f"could not write the checkpoint {path} ({_write_problem(e)}); {kept}") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def history(directory: str | Path) -> list[tuple[int, Path]]:
    """The history files of ``directory`` (``checkpoint-NNNNNN.pt``), oldest first, with their numbers."""
    found = []
    for candidate in Path(directory).glob(f"{HISTORY_PREFIX}*.pt"):
        number = candidate.name[len(HISTORY_PREFIX) : -len(".pt")]
        if number.isdigit():
            found.append((int(number), candidate))
    return sorted(found)


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a checkpoint: ``checkpoint.pt`` or a history file."""
    return (Path(directory) / CHECKPOINT_NAME).exists() or bool(history(directory))


def clear_history(directory: str | Path) -> None:
    """Remove ``directory``'s history files (a run that starts afresh with ``--overwrite``: another
    run's checkpoints must not be taken for its own)."""
    for _, path in history(directory):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def hold_directory(stack: contextlib.ExitStack, directory: Path, *, fresh: bool) -> None:
    """Hold ``directory`` for a run's whole length (``DirectoryLock``, entered on ``stack``); a
    ``fresh`` run (``--overwrite``, not resumed) then clears the history there (``clear_history``)."""
    stack.enter_context(DirectoryLock(directory))
    if fresh:
        clear_history(directory)


def _link(source: str, name: Path) -> None:
    """``name`` for the file ``source`` (a hard link: no second copy; a copy where links fail)."""
    if name.exists():  # a number left by a write that failed after linking
        name.unlink()
    try:
        os.link(source, name)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, name)
        with open(name, "rb+") as f:
            os.fsync(f.fileno())


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def state_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's contents, its ``sha256`` entry aside: every tensor's dtype, shape
    and bytes, every other value's type and repr, dicts in key order, walked depth first."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}:".encode())
            for key in sorted(x, key=lambda k: (type(k).__name__, repr(k))):
                h.update(f"K{type(key).__name__}{key!r}:".encode())
                walk(x[key])
        elif isinstance(x, (list, tuple)):
            h.update(f"{'L' if isinstance(x, list) else 'U'}{len(x)}:".encode())
            for item in x:
                walk(item)
        else:
            h.update(f"V{type(x).__name__}{x!r};".encode())

    walk({k: v for k, v in state.items() if k != "sha256"} if isinstance(state, dict) else state)
    return h.hexdigest()


class DirectoryLock:
    """One run at a time in a checkpoint directory: an exclusive OS file lock on
    ``DIR/.fastpg.lock`` (released by the OS when the process ends, however it ends), taken for
    the whole run. Holding it proves that no other run writes in the directory, so the temporary
    files of a run killed mid-write are removed then, and only then. Without ``fcntl`` (Windows)
    there is no lock and no cleanup."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        if fcntl is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                "checkpoint_dir",
                f"{self.directory} is in use by another fastpg run (pid {holder}); give each run its own",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        for stale in self.directory.glob(f"{TEMP_PREFIX}*.tmp"):  # left by a run killed mid-write
            with contextlib.suppress(OSError):
                stale.unlink()
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Read ``directory``'s checkpoint with ``weights_only=True`` and check its SHA-256: the
    newest sound one (``checkpoint.pt``, else, with a one-line warning naming what was wrong, the
    newest history file that is sound). Clear errors if there is none or none is readable
    (``check_state`` then holds its contents to the run that continues it)."""
    directory = Path(directory)
    path = directory / CHECKPOINT_NAME
    candidates = [path, *(p for _, p in reversed(history(directory)))]
    problems: list[str] = []
    seen: set[tuple[int, int]] = set()
    for candidate in candidates:
        try:
            stat = candidate.stat()
        except FileNotFoundError:
            if candidate == path and len(candidates) > 1:
                problems.append(f"{path} is missing")
            continue
        if (stat.st_dev, stat.st_ino) in seen:  # checkpoint.pt is a link to the newest history file
            continue
        seen.add((stat.st_dev, stat.st_ino))
        try:
            state = _read(candidate)
        except ConfigError as e:
            problems.append(e.detail)
            continue
        if problems:
            warnings.warn(
                f"{'; '.join(problems)}: resuming from {candidate} (epoch {state.get('epoch', state.get('epochs'))})",
                RuntimeWarning,
                stacklevel=2,
            )
        return state
    if not problems:
        raise ConfigError("resume", f"no checkpoint at {path}")
    raise ConfigError("resume", "; ".join(problems) + " (no sound checkpoint left)")


def _read(path: Path) -> dict[str, Any]:
    """One checkpoint file, checked: readable with ``weights_only=True``, of a known format, with
    a config, and (format 2) contents that match their SHA-256."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in several types
        raise ConfigError("resume", f"{path} is not a readable fastpg checkpoint ({_load_problem(e)})") from None
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError("resume", f"{path} is not a fastpg checkpoint of format {FORMAT} (got {got!r})")
    if not isinstance(state.get("config"), dict):
        raise ConfigError("resume", f"{path} is not a valid fastpg checkpoint: 'config' is missing or not a dict")
    if state["format"] >= 2 and state.get("sha256") != state_digest(state):
        raise ConfigError("resume", f"{path} is corrupt: its contents do not match their SHA-256")
    state.pop("sha256", None)
    return state


_PLAIN = (type(None), bool, int, float, str)


def _unloadable_entry(obj: Any, where: str) -> str | None:
    """The first entry of ``obj`` (named from ``where``, as Python would index it) that the
    weights-only loader refuses, as ``"state['a'][0] is a <type>"``, or None. Tensors, plain
    values, lists, tuples and dicts are walked; anything else is tried alone through a save and a
    weights-only load (torch.Size, dtypes, devices pass; functions, modules, arbitrary objects do
    not)."""
    if type(obj) in (torch.Tensor, torch.nn.Parameter) or isinstance(obj, _PLAIN):
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, _PLAIN):
                return f"{where} has a key {key!r} of type {type(key).__name__}"
            problem = _unloadable_entry(value, f"{where}[{key!r}]")
            if problem is not None:
                return problem
        return None
    if isinstance(obj, (list, tuple)):
        return next((p for i, v in enumerate(obj) if (p := _unloadable_entry(v, f"{where}[{i}]"))), None)
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception:
        return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"
    return None


def _write_problem(e: OSError | RuntimeError) -> str:
    """What stopped a checkpoint write, in a few words: the OS's reason, or the first line of
    torch's (its zip writer reports a short write, a full disk, as ``[enforce fail at
    inline_container.cc:...] . unexpected pos ...``)."""
    if isinstance(e, OSError):
        return str(e.strerror or e)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "inline_container" in first or "unexpected pos" in first:
        return f"the file could not be written in full, a full disk? (torch: {first[:160]})"
    return f"{type(e).__name__}: {first[:200]}"


def _load_problem(e: Exception) -> str:
    """What torch.load found wrong, without its advice to load untrusted files with weights_only=False."""
    text = str(e)
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if found:
        return f"it holds Python objects beyond tensors and plain values: {found.group(1).strip()}"
    return f"{type(e).__name__}: {text.strip().splitlines()[0] if text.strip() else 'unreadable'}"


def check_state(state: dict[str, Any], live: dict[str, Any], params: list[torch.Tensor], source: str) -> None:
    """Raise ``ConfigError`` naming ``source`` and the first problem if the saved ``state`` cannot
    continue the run whose current ``state_dict()`` is ``live``: a missing entry, a wrong type, a
    tensor of another shape or dtype (policy, optimizer, generator, carry, env state). ``params``:
    the optimizer's parameters, in its order."""
    problem = _state_problem(state, live, params)
    if problem is not None:
        raise ConfigError("resume", f"{source} is not a valid fastpg checkpoint for this run: {problem}")


_NUMBER = (int, float)


# Entries a checkpoint of an earlier fastpg may lack (their default then applies).
_OPTIONAL = ("skipped_updates", "restarts")


def _state_problem(state: dict[str, Any], live: dict[str, Any], params: list[torch.Tensor]) -> str | None:
    missing = [k for k in live if k not in state and k not in _OPTIONAL]
    if missing:
        return f"missing {', '.join(map(repr, missing))}"
    for key, value in live.items():
        if key in ("config", "optimizer", "window") or key not in state:
            continue
        if isinstance(value, _NUMBER) and not isinstance(value, bool):
            if not isinstance(state[key], _NUMBER) or isinstance(state[key], bool):
                return f"{key!r} is {type(state[key]).__name__}, expected a number"
        elif key in ("policy", "generator", "carry", "env"):
            problem = _like(state[key], value, key)
            if problem:
                return problem
    window = state["window"]
    if not (isinstance(window, dict) and all(isinstance(window.get(k), list) for k in ("returns", "lengths"))):
        return "'window' must hold the lists 'returns' and 'lengths'"
    if any(not isinstance(x, _NUMBER) for x in window["returns"] + window["lengths"]):
        return "'window' holds values that are not numbers"
    return _optimizer_problem(state["optimizer"], live["optimizer"], params)


def _like(saved: Any, live: Any, where: str) -> str | None:
    """Whether ``saved`` has the structure of ``live``: the same keys, tensors of the same shape and dtype."""
    if isinstance(live, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return f"{where} is {type(saved).__name__}, expected a tensor"
        if saved.shape != live.shape or saved.dtype != live.dtype:
            got, want = f"{saved.dtype} {list(saved.shape)}", f"{live.dtype} {list(live.shape)}"
            return f"{where} is a tensor of {got}, expected {want}"
        return None
    if isinstance(live, dict):
        if not isinstance(saved, dict):
            return f"{where} is {type(saved).__name__}, expected a dict"
        keys = set(live) ^ set(saved)
        if keys:
            return f"{where} has other entries than expected ({', '.join(sorted(map(str, keys)))})"
        return next((p for k in live if (p := _like(saved[k], live[k], f"{where}.{k}"))), None)
    if live is None and saved is not None:
        return f"{where} is {type(saved).__name__}, expected none (this env's state is not saved)"
    return None


def _optimizer_problem(saved: Any, live: dict[str, Any], params: list[torch.Tensor]) -> str | None:
    if not (
        isinstance(saved, dict) and isinstance(saved.get("state"), dict) and isinstance(saved.get("param_groups"), list)
    ):
        return "'optimizer' must hold 'state' and 'param_groups'"
    counts = [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in saved["param_groups"]]
    expected = [len(g["params"]) for g in live["param_groups"]]
    if counts != expected:
        return f"'optimizer' has parameter groups of {counts} parameters, expected {expected}"
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            return f"'optimizer' state has an entry for parameter {index!r}, which does not exist"
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                want = list(params[index].shape)
                return f"optimizer.state.{index}.{name} has shape {list(value.shape)}, expected {want}"
    return None
