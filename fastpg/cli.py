"""``fastpg`` command line: a thin layer that builds a ``Config`` and calls the library.

    fastpg train [--env CartPole-v1] [--num-envs 16] ...   (fastpg train --help lists every flag)

Bad values print one line naming the flag, the value and what is allowed, and exit with code 2. A
run stopped by Ctrl-C / SIGTERM exits with 128 + the signal number (after its checkpoint and
summary); a failed env worker or too many non-finite updates print one line and exit with 1.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import tyro

from fastpg.bench import BenchConfig, main_bench
from fastpg.config import Config, ConfigError
from fastpg.envs import EnvWorkerError, UnsupportedEnvError

__all__ = ["main", "parse_config"]

_USAGE = """usage: fastpg COMMAND [FLAGS]

fastpg: vectorized REINFORCE for PyTorch.

commands:
  train    train a policy (fastpg train --help lists every flag)
  bench    measure steps/s per phase, backend and N (fastpg bench --help)
"""


@dataclasses.dataclass(frozen=True)
class _ParsedConfig(Config):
    """Train a policy with vectorized REINFORCE."""

    # tyro reports a ValueError raised while it builds the dataclass in a multi-line box; parsing
    # into this unvalidated twin and validating by building the real Config here keeps the error
    # to one line of ours. Fields, defaults and --help text are inherited from Config.
    def __post_init__(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class _ParsedBenchConfig(BenchConfig):
    """Measure fastpg's throughput per phase, backend and number of envs."""

    def __post_init__(self) -> None:  # validated by building the real BenchConfig (see above)
        pass


def _parse(parsed_cls: type, cls: type, argv: Sequence[str], prog: str):
    raw = tyro.cli(parsed_cls, args=list(argv), prog=prog)
    return cls(**{f.name: getattr(raw, f.name) for f in dataclasses.fields(cls)})


def parse_config(argv: Sequence[str]) -> Config:
    """Parse ``fastpg train`` flags into a validated ``Config`` (raises ``ConfigError``)."""
    return _parse(_ParsedConfig, Config, argv, "fastpg train")


def parse_bench_config(argv: Sequence[str]) -> BenchConfig:
    """Parse ``fastpg bench`` flags into a validated ``BenchConfig`` (raises ``ConfigError``)."""
    return _parse(_ParsedBenchConfig, BenchConfig, argv, "fastpg bench")


def _train(cfg: Config) -> int:
    from fastpg.trainer import train

    return train(cfg)["exit_code"]  # 128 + signal number after Ctrl-C / SIGTERM, else 0


# command -> (parse flags into a validated config, run it)
_COMMANDS = {"train": (parse_config, _train), "bench": (parse_bench_config, main_bench)}


def _error(message: str, code: int = 2) -> int:
    print(f"fastpg: error: {message}", file=sys.stderr, flush=True)
    return code


def _config_error(e: ConfigError) -> int:
    return _error(f"{e.flag}: {e.detail}")  # the flag the user typed, not the field name


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastpg`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        return _error(f"unknown command {command!r} (commands: {', '.join(_COMMANDS)})")
    parse, run = _COMMANDS[command]
    try:
        cfg = parse(rest)
    except ConfigError as e:
        return _config_error(e)
    from fastpg.trainer import NonFiniteError

    try:
        result = run(cfg)
    except ConfigError as e:
        return _config_error(e)
    except UnsupportedEnvError as e:
        return _error(f"--env: {e}")
    except (EnvWorkerError, NonFiniteError) as e:
        return _error(str(e), code=1)
    except KeyboardInterrupt:
        print("fastpg: interrupted", file=sys.stderr, flush=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
