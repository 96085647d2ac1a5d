"""Every error fastpg raises on purpose derives from ``FastpgError`` and names what is wrong.

``except fastpg.FastpgError`` catches exactly the problems fastpg diagnosed itself (bad values,
unusable environments, failed workers, diverged training); anything else is a bug or comes from a
library below. The CLI prints ``str(e)`` as one line. This module imports nothing.
"""

from __future__ import annotations

__all__ = [
    "FastpgError",
    "DistributedError",
    "ConfigError",
    "UnsupportedEnvError",
    "EnvWorkerError",
    "NonFiniteError",
    "KernelBuildError",
    "OutputError",
]


class FastpgError(Exception):
    """Base class: an error fastpg raises on purpose, with a message naming the field, value or file."""


class ConfigError(FastpgError, ValueError):
    """A configuration value is not allowed: ``str(e)`` is ``"field: detail"``."""

    def __init__(self, field: str, detail: str):
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail

    @property
    def flag(self) -> str:
        """The command-line flag of ``field`` (``num_envs`` -> ``--num-envs``)."""
        return "--" + self.field.replace("_", "-")


class UnsupportedEnvError(FastpgError, ValueError):
    """The environment cannot be built here, or its spaces or autoreset mode are not ones fastpg
    can train on; the message names the env id."""


class EnvWorkerError(FastpgError, RuntimeError):
    """An async worker raised, died or hung; the message names the env id and the worker(s)."""


class NonFiniteError(FastpgError, RuntimeError):
    """Too many consecutive updates had a non-finite loss, gradient or parameter."""


class KernelBuildError(FastpgError, RuntimeError):
    """A compiled kernel could not be built here (no C++ compiler or ninja, say)."""


class OutputError(FastpgError, RuntimeError):
    """A checkpoint or metrics file could not be written (a full disk, say); the message names the
    file and what was kept intact."""


class DistributedError(FastpgError, RuntimeError):
    """A collective of a data-parallel run failed: another process died, hung past
    ``dist_timeout_s`` or left early; the message names the rank and the operation."""
