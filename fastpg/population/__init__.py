"""Populations: many runs (seeds, hyperparameter grids) trained as one batched program.

``Population`` (the members' configs, ``spec``), ``PopulationTrainer`` (the batched epochs,
``trainer``, over the engines of ``engines`` and ``generic``), ``train_population`` (the
application: outputs, checkpoints, summary with statistics across members, ``run``).

Names are imported on first use (as ``fastpg``'s): ``spec`` alone needs no torch, so the command
line can read a population's flags, and refuse bad ones, before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastpg.population.run import train_population
    from fastpg.population.spec import VARYING_FIELDS, Population, seed_list
    from fastpg.population.trainer import PopulationTrainer

_EXPORTS = {
    "train_population": "fastpg.population.run",
    "VARYING_FIELDS": "fastpg.population.spec",
    "Population": "fastpg.population.spec",
    "seed_list": "fastpg.population.spec",
    "PopulationTrainer": "fastpg.population.trainer",
}

__all__ = ["Population", "PopulationTrainer", "train_population", "VARYING_FIELDS", "seed_list"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastpg.population' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
