"""``fastpg`` command line: a thin layer that builds a config, checks it and calls the library.

    fastpg train [--env CartPole-v1] [--num-envs 16] ...   (fastpg train --help lists every flag)
    fastpg bench [--num-envs 16 256 4096] ...              (fastpg bench --help)

Bad values print one line naming the flag, the value and what is allowed, and exit with code 2. A
run stopped by Ctrl-C / SIGTERM exits with 128 + the signal number (after its checkpoint and
summary); a failed env worker or too many non-finite updates print one line and exit with 1.
Each command imports what it needs only when it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastpg.config import ENV_DEFAULTS, Config
from fastpg.errors import ConfigError, FastpgError, UnsupportedEnvError

__all__ = ["main", "parse_config", "parse_bench_config"]

_USAGE = """usage: fastpg COMMAND [FLAGS]

fastpg: vectorized REINFORCE for PyTorch.

commands:
  train    train a policy (fastpg train --help lists every flag)
  eval     evaluate (and film) a trained policy from its checkpoint (fastpg eval --help)
  plot     learning curves from metrics files: fastpg plot RUN.jsonl [MORE.jsonl ...] --output curve.png
  bench    measure steps/s per phase, backend and N (fastpg bench --help)

  fastpg --version   versions of fastpg, torch and gymnasium
  python -m fastpg   the same command
"""


def _unvalidated(cls: type) -> type:
    """A subclass of the dataclass ``cls`` whose construction does not validate.

    tyro reports a ValueError raised while it builds the dataclass in a multi-line box; parsing
    into this twin and validating by building the real class afterwards keeps the error to one
    line of ours. Fields, defaults and --help text are inherited.
    """
    twin = type(cls.__name__, (cls,), {"__post_init__": lambda self: None, "__doc__": cls.__doc__})
    return dataclasses.dataclass(frozen=True)(twin)


class UsageError(Exception):
    """A command line tyro could not parse (a value of the wrong type, an unknown flag or choice)."""


def _parse(cls: type, argv: Sequence[str], prog: str) -> Any:
    import tyro

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            raw = tyro.cli(_unvalidated(cls), args=list(argv), prog=prog)
    except SystemExit as e:
        if e.code not in (0, None):
            raise UsageError(_box_message(err.getvalue())) from None
        raise
    finally:
        if not isinstance(sys.exc_info()[1], UsageError):
            sys.stderr.write(err.getvalue())  # anything else tyro said (help, warnings) as it was
    return cls(**{f.name: getattr(raw, f.name) for f in dataclasses.fields(cls)})


def _box_message(text: str) -> str:
    """The message of tyro's error box on one line: its lines up to the first rule, frame removed."""
    lines = []
    for line in text.splitlines()[1:]:  # the first line is the box's title
        inner = line.strip().strip("│").strip()
        if not inner or set(inner) <= set("─╰╯"):
            break
        lines.append(inner)
    message = " ".join(" ".join(lines).split())
    return message or " ".join(text.split())[:300] or "could not parse the command line"


def parse_config(argv: Sequence[str]) -> Config:
    """Parse ``fastpg train`` flags into a ``Config`` (raises ``ConfigError``)."""
    return _parse(Config, argv, "fastpg train")


def parse_bench_config(argv: Sequence[str]):
    """Parse ``fastpg bench`` flags into a ``BenchConfig`` (raises ``ConfigError``)."""
    from fastpg.bench import BenchConfig

    return _parse(BenchConfig, argv, "fastpg bench")


def _train(argv: Sequence[str]) -> int:
    argv, seeds, lists = split_population_flags(argv)
    cfg = parse_config(argv)
    typed = given_fields(argv)
    from fastpg.checkpoint import resolve_resume

    resolved, automatic, note = resolve_resume(cfg)  # --resume auto, a torchrun restart (a run: train() says so)
    if resolved.resume is not None:  # the saved run's settings, with the flags typed here that may change
        from fastpg.checkpoint import load_checkpoint, resumed_config

        state = load_checkpoint(resolved.resume)
        if state.get("kind") == "population":
            from fastpg.population import Population, train_population

            members = [resumed_config(m, resolved, typed) for m in state["population"]["members"]]
            if (seeds is not None or lists) and not automatic:
                raise ConfigError("resume", "a resumed population keeps its members; drop --seeds and the lists")
            if seeds is not None or lists:  # the same command restarted: it must describe the saved members
                _check_same_members(_grid(cfg, seeds, lists), members, resolved.resume)
            _say_restart(note)
            _resume_collector()
            return train_population(Population(tuple(members)))["exit_code"]
        cfg = resumed_config(state["config"], cfg, typed)
    elif cfg.env in ENV_DEFAULTS:  # the env's tuned settings, for the flags not typed
        applied = {k: v for k, v in ENV_DEFAULTS[cfg.env].items() if k not in typed}
        cfg = dataclasses.replace(cfg, **applied)
        if applied and not cfg.quiet and os.environ.get("RANK", "0") == "0":
            said = f"fastpg: {cfg.env}'s settings (flags you type win): {as_flags(applied)}"
            print(said, file=sys.stderr, flush=True)
    if seeds is not None or lists:
        from fastpg.population import train_population

        _say_restart(note)
        population = _grid(resolve_resume(cfg)[0], seeds, lists)
        _resume_collector()
        return train_population(population)["exit_code"]
    from fastpg.run import train

    _resume_collector()
    return train(cfg)["exit_code"]  # 128 + signal number after Ctrl-C / SIGTERM, else 0


def as_flags(settings: dict[str, Any]) -> str:
    """``settings`` as the command line that sets them: ``--hidden-sizes 64 64 --no-obs-norm``."""
    words = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, (tuple, list)):
            words.append(" ".join([flag, *map(str, value)]))
        else:
            words.append(f"{flag} {value}")
    return " ".join(words)


def _say_restart(note: str | None) -> None:
    """A population's restart note (a single run's is said by ``fastpg.run.train``), by rank 0 alone."""
    if note is not None and os.environ.get("RANK", "0") == "0":
        print(f"fastpg: {note}", file=sys.stderr, flush=True)


def _grid(cfg: Config, seeds: int | tuple[int, ...] | None, lists: dict[str, list[str]]):
    """The population a command line describes: ``cfg`` with the seeds and the lists typed."""
    from fastpg.population import Population

    values = {name: [getattr(cfg, name), *(_field_value(name, v) for v in typed_values[1:])]
              for name, typed_values in lists.items()}  # fmt: skip
    for name, vals in values.items():
        if len(set(vals)) != len(vals):
            raise ConfigError(name, f"give each value once, got {' '.join(lists[name])}")
    return Population.grid(cfg, seeds=seeds, **values)


def _check_same_members(described, saved: list[Config], directory) -> None:
    """A restarted population command must describe the members its checkpoint holds."""
    from fastpg.population import VARYING_FIELDS

    def key(c: Config) -> list:
        return [getattr(c, f) for f in VARYING_FIELDS if f not in ("max_env_steps", "max_epochs", "target_return")]

    if [key(c) for c in described.members] != [key(c) for c in saved]:
        raise ConfigError(
            "resume",
            f"the population checkpointed in {directory} has other members ({len(saved)}) than this command "
            f"describes ({len(described.members)}, or other settings); give the command that started it",
        )


def _is_value(token: str) -> bool:
    """Whether ``token`` is a flag's value rather than the next flag (negative numbers are values)."""
    return not token.startswith("-") or (len(token) > 1 and (token[1].isdigit() or token[1] == "."))


def split_population_flags(argv: Sequence[str]) -> tuple[list[str], int | tuple[int, ...] | None, dict[str, list[str]]]:
    """Take a population's flags out of ``fastpg train``'s ``argv``: ``--seeds K`` (K seeds from
    ``--seed`` on), ``--seeds A:B`` (seeds A to B - 1) or ``--seeds S1 S2 ...``, and the lists
    after the flags of fields that may vary (``--lr 0.01 0.003``: one value per setting; the grid
    is every combination). Returns the argv tyro parses (each list's first value in place), the
    seeds (None without ``--seeds``) and the lists (field -> the values as typed). A list after a
    flag that takes one value for all members is refused, naming it."""
    from fastpg.population.spec import VARYING_FIELDS

    scalar = {f.name for f in dataclasses.fields(Config) if "tuple" not in str(f.type)}
    out: list[str] = []
    seeds: int | tuple[int, ...] | None = None
    lists: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        flag, eq, inline = token.partition("=")
        if not token.startswith("--"):
            out.append(token)
            i += 1
            continue
        values = [inline] if eq else []
        j = i + 1
        while not eq and j < len(argv) and _is_value(argv[j]):
            values.append(argv[j])
            j += 1
        i = j
        name = flag[2:].replace("-", "_")
        if name == "seeds":
            seeds = _parse_seeds(values)
        elif len(values) > 1 and name in VARYING_FIELDS:
            lists[name] = values
            out += [flag, values[0]]
        elif len(values) > 1 and name in scalar:
            may = ", ".join("--" + f.replace("_", "-") for f in VARYING_FIELDS if f != "seed")
            raise ConfigError(
                name,
                f"takes one value, shared by every member of a population (got {' '.join(values)}); "
                f"the flags that take a list are --seeds, {may}",
            )
        else:
            out += [token, *values[len(values) if eq else 0 :]]
    return out, seeds, lists


def _parse_seeds(values: list[str]) -> int | tuple[int, ...]:
    """``--seeds``' values: a count, a range ``A:B`` or a list of seeds."""
    text = " ".join(values)
    try:
        numbers = [int(x) for x in values[0].split(":")] if len(values) == 1 else [int(v) for v in values]
    except ValueError:
        numbers = []
    if not numbers or (":" in text and len(numbers) != 2):
        raise ConfigError(
            "seeds", f"give a count (--seeds 32), a range (--seeds 0:32) or seeds (--seeds 1 5 9), got {text!r}"
        )
    if ":" in text:
        if numbers[1] <= numbers[0]:
            raise ConfigError("seeds", f"a range A:B needs B > A, got {text}")
        return tuple(range(*numbers))
    return numbers[0] if len(values) == 1 else tuple(numbers)


def _field_value(name: str, token: str) -> Any:
    """One value of a list flag (``--lr 0.01 0.003``), typed as the field is."""
    kind = str(next(f.type for f in dataclasses.fields(Config) if f.name == name))
    if token.lower() == "none" and "None" in kind:
        return None
    try:
        return int(token) if kind.startswith("int") else float(token)
    except ValueError:
        raise ConfigError(name, f"{token!r} is not {'an integer' if kind.startswith('int') else 'a number'}") from None


def given_fields(argv: Sequence[str]) -> set[str]:
    """The config fields of the flags typed in ``argv`` (``--no-normalize-returns`` counts as
    ``normalize_returns``)."""
    fields = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            fields.add(name[3:] if name.startswith("no_") else name)
    return fields


def _eval(argv: Sequence[str]) -> int:
    from fastpg.artifacts import EvalConfig, evaluate_checkpoint

    e = _parse(EvalConfig, argv, "fastpg eval")
    _resume_collector()
    summary = evaluate_checkpoint(
        e.checkpoint,
        episodes=e.episodes,
        deterministic=e.deterministic,
        seed=e.seed,
        device=e.device,
        video=e.video,
        video_episodes=e.video_episodes,
        render=e.render,
        member=e.member,
    )
    print(json.dumps(summary), flush=True)
    mean, std = summary["eval_return_mean"], summary["eval_return_std"]
    films = f"; videos in {e.video}" if e.video is not None else ""
    print(
        f"fastpg: {summary['env']}: {mean:.1f} +- {std:.1f} over {summary['eval_episodes']} episodes{films}",
        file=sys.stderr,
    )
    return 0


def _plot(argv: Sequence[str]) -> int:
    from fastpg.plotting import PlotConfig, plot_runs, read_runs

    p = _parse(PlotConfig, argv, "fastpg plot")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("output", "plotting needs matplotlib (pip install -e '.[plot]')") from None
    _resume_collector()
    runs = [run for f in p.files for run in read_runs(Path(f))]
    path = plot_runs(runs, Path(p.output), p.title)
    print(f"fastpg: wrote {path} ({len(runs)} run{'s' if len(runs) > 1 else ''})", file=sys.stderr)
    return 0


def _bench(argv: Sequence[str]) -> int:
    b = parse_bench_config(argv)
    from fastpg.bench import main_bench

    _resume_collector()
    main_bench(b)
    return 0


_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"train": _train, "eval": _eval, "plot": _plot, "bench": _bench}


_RANK_ZERO_GRACE_S = 10.0  # torchrun ends this process sooner, once rank 0 has said the error and exited


def _error(message: str, code: int = 2) -> int:
    """Print ``message`` on stderr and return ``code``. In a multi-process launch a usage or
    config error (code 2) is the same in every process: rank 0 alone says it; any other error
    is said by the rank it happened in, named."""
    rank = os.environ.get("RANK", "0")
    if rank != "0" and code == 2:
        # Said by rank 0. Wait for it before exiting: torchrun stops every process at the first
        # one's exit, and a rank that left at once could stop rank 0 before it said anything.
        time.sleep(_RANK_ZERO_GRACE_S)
        return code
    where = f" (rank {rank})" if rank != "0" else ""
    print(f"fastpg: error{where}: {message}", file=sys.stderr, flush=True)
    return code


def _versions() -> str:
    """``fastpg 0.1.0 (torch 2.13.0+cpu, gymnasium 1.4.0, Python 3.11.7)``, without importing torch."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from fastpg import __version__

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    python = platform.python_version()
    return f"fastpg {__version__} (torch {of('torch')}, gymnasium {of('gymnasium')}, Python {python})"


def _warnings_in_one_line() -> None:
    """Say every warning as one line on stderr (``fastpg: warning: ...``), without the source
    line Python prints under it: for ``fastpg`` run as a program, which owns its process."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"fastpg: warning: {message}", file=sys.stderr if file is None else file, flush=True)

    warnings.showwarning = show


# Whether main paused the cyclic garbage collector for a command's imports (_pause_collector).
_collector_paused = False


def _pause_collector() -> None:
    """For a command of ``fastpg`` run as a program: no cyclic garbage collection while torch and
    the rest are imported (their hundreds of thousands of objects, traversed again and again as
    they accrue: ~0.2 s on the 2-core VM). ``_resume_collector`` then freezes them (``gc.freeze``:
    never traversed again, not even by the collection at exit, which took ~0.5 s more) and
    resumes."""
    global _collector_paused
    if gc.isenabled():
        gc.disable()
        _collector_paused = True


def _resume_collector() -> None:
    """Called where the set-up's imports are done, before the trainer (and any process it forks)
    exists; does nothing unless ``_pause_collector`` paused the collector."""
    global _collector_paused
    if _collector_paused:
        gc.freeze()
        gc.enable()
        _collector_paused = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastpg`` console script; returns the exit code. Run as a program (no
    ``argv`` given), warnings are said in one line each, and the command imports with the
    cyclic garbage collector paused (``_pause_collector``)."""
    program = argv is None
    if program:
        _warnings_in_one_line()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(_versions())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        return _error(f"unknown command {command!r} (commands: {', '.join(_COMMANDS)})")
    world = os.environ.get("WORLD_SIZE", "1")
    if command != "train" and world.isdigit() and int(world) > 1:  # several processes of a torchrun launch
        return _error(
            f"launched as one of {world} processes (WORLD_SIZE={world}, torchrun?): only fastpg train runs "
            f"data-parallel; run fastpg {command} as one process"
        )
    if program:
        _pause_collector()
    try:
        return _COMMANDS[command](rest)
    except UsageError as e:
        return _error(f"{e} (fastpg {command} --help lists every flag)")
    except ConfigError as e:
        return _error(f"{e.flag}: {e.detail}")  # the flag the user typed, not the field name
    except UnsupportedEnvError as e:
        return _error(f"--env: {e}")
    except FastpgError as e:  # a failed env worker, too many non-finite updates, a kernel build
        return _error(str(e), code=1)
    except KeyboardInterrupt:
        print("fastpg: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        _resume_collector()  # where a command returned before its set-up was done (a refused flag)


if __name__ == "__main__":
    sys.exit(main())
