"""Populations: many runs (seeds, hyperparameter grids) trained as one batched program.

``Population`` (the members' configs, ``spec``), ``PopulationTrainer`` (the batched epochs,
``trainer``, over the engines of ``engines`` and ``generic``), ``train_population`` (the
application: outputs, checkpoints, summary with statistics across members, ``run``).
"""

from fastpg.population.run import train_population
from fastpg.population.spec import VARYING_FIELDS, Population, seed_list
from fastpg.population.trainer import PopulationTrainer

__all__ = ["Population", "PopulationTrainer", "train_population", "VARYING_FIELDS", "seed_list"]
