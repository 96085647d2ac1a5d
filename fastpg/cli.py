"""``fastpg`` command line: a thin layer that builds a ``Config`` and calls the library.

    fastpg train [--env CartPole-v1] [--num-envs 16] ...   (fastpg train --help lists every flag)

Bad values print one line naming the flag, the value and what is allowed, and exit with code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import tyro

from fastpg.config import Config, ConfigError
from fastpg.envs import UnsupportedEnvError

__all__ = ["main"]


def _error(message: str) -> int:
    print(f"fastpg: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastpg`` console script; returns the exit code."""
    from fastpg.trainer import train

    try:
        cfg = tyro.extras.subcommand_cli_from_dict(
            {"train": Config}, prog="fastpg", args=argv, description="fastpg: vectorized REINFORCE."
        )
    except ConfigError as e:
        return _error(f"{e.flag}: {str(e).split(': ', 1)[-1]}")
    try:
        train(cfg)
    except ConfigError as e:
        return _error(f"{e.flag}: {str(e).split(': ', 1)[-1]}")
    except UnsupportedEnvError as e:
        return _error(f"--env: {e}")
    except FileNotFoundError as e:
        return _error(str(e).replace("metrics_file:", "--metrics-file:"))
    except KeyboardInterrupt:
        return _error("interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
