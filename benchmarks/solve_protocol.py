"""The time-to-solve protocol shared by ``peers.py`` and ``sweep_defaults.py``.

A system's clock runs only while it trains (collecting and updating): setup and every evaluation are
excluded. Evaluations play ``EVAL_EPISODES`` fresh episodes of the task (one per env copy, actions
sampled from the policy unless ``deterministic``); the episodes' seed depends on the seed of the run
and the number of the update, so the same policy at the same update is evaluated on the same
episodes whatever the schedule. Two schedules, both measured in one run:

- ``every update`` (the headline): evaluate after every update; the first evaluation whose mean
  return reaches the target gives the time to solve. It resolves sub-second runs.
- ``0.5 s grid``: evaluate after the first update once ``grid_s`` seconds of training time have
  passed since the last such evaluation (the protocol of earlier results). Its evaluations are a
  subset of the every-update ones, at the same updates, on the same episodes.

A run trains until both schedules have solved (``every_update=False``: the grid's alone, for
systems whose updates are too many to evaluate each), or for ``max_train_s`` of training.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributions import Categorical

from fastpg import Config, Trainer
from fastpg.envs import make_env
from fastpg.evaluation import evaluate

EVAL_EPISODES = 100


class LogitsPolicy(nn.Module):
    """A policy for ``fastpg.evaluate`` from any function obs [B, D] -> logits [B, A]."""

    def __init__(self, logits: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.logits = logits

    def forward(self, obs: torch.Tensor) -> Categorical:
        return Categorical(logits=self.logits(obs), validate_args=False)


def eval_env(env_id: str):
    """The evaluation env of a task: ``EVAL_EPISODES`` copies, fastest backend (gymnasium's vector
    CartPole for CartPole, as for every system; native for the others)."""
    backend = "vector" if env_id.startswith("CartPole") else "auto"
    return make_env(env_id, EVAL_EPISODES, backend=backend)


def evaluator(
    logits: Callable[[torch.Tensor], torch.Tensor], env, deterministic: bool = False
) -> Callable[[int], float]:
    """``seed -> mean return`` of ``fastpg.evaluate`` on ``env`` for the policy with these logits."""
    policy = LogitsPolicy(logits)

    def run(seed: int) -> float:
        with torch.no_grad():
            ev = evaluate(
                env, policy, seed=seed, deterministic=deterministic, generator=torch.Generator().manual_seed(seed)
            )
        return ev["eval_return_mean"]

    return run


class SolveClock:
    """Training time with evaluations excluded, and both evaluation schedules of the protocol.

    ``evaluate(seed)`` returns the mean return of ``EVAL_EPISODES`` fresh episodes drawn with ``seed``.
    """

    def __init__(self, evaluate: Callable[[int], float], seed: int, target: float, *, every_update: bool = True,
                 grid_s: float = 0.5, max_train_s: float = 120.0):  # fmt: skip
        self.evaluate_fn = evaluate
        self.seed, self.target = seed, target
        self.every_update, self.grid_s, self.max_train_s = every_update, grid_s, max_train_s
        self.train_s = 0.0
        self.updates = 0
        self.next_grid_s = grid_s
        self.evals: list[tuple[float, int, float]] = []  # (train_s, env_steps, eval mean)
        self.solved: dict[str, tuple[float, int] | None] = {"every": None, "grid": None}
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def _evaluate(self) -> float:
        return self.evaluate_fn(1_000_003 + 10_000 * self.seed + self.updates)

    def boundary(self, env_steps: int) -> bool:
        """Call after each update; True when the run should stop (solved or out of time)."""
        self.train_s += time.perf_counter() - self._t
        self.updates += 1
        on_grid = self.train_s >= self.next_grid_s
        if self.every_update or on_grid:
            mean = self._evaluate()
            self.evals.append((self.train_s, env_steps, mean))
            passed = mean >= self.target
            if self.every_update and passed and self.solved["every"] is None:
                self.solved["every"] = (self.train_s, env_steps)
            if on_grid:
                if passed and self.solved["grid"] is None:
                    self.solved["grid"] = (self.train_s, env_steps)
                self.next_grid_s = self.train_s + self.grid_s
        done = self.solved["grid"] is not None and (not self.every_update or self.solved["every"] is not None)
        stop = done or self.train_s >= self.max_train_s
        self._t = time.perf_counter()
        return stop

    def result(self, system: str, env_steps: int) -> dict[str, Any]:
        every, grid = self.solved["every"], self.solved["grid"]
        return {
            "system": system,
            "seed": self.seed,
            "solved": (every if self.every_update else grid) is not None,
            "time_to_solve_s": every[0] if every else None,  # every update (None: not measured or unsolved)
            "env_steps_to_solve": every[1] if every else None,
            "grid_solved": grid is not None,
            "grid_time_to_solve_s": grid[0] if grid else None,
            "grid_env_steps_to_solve": grid[1] if grid else None,
            "every_update": self.every_update,
            "train_s": self.train_s,
            "env_steps": env_steps,
            "sps": env_steps / self.train_s if self.train_s > 0 else None,
            "updates": self.updates,
            "evaluations": len(self.evals),
            "last_eval_mean": self.evals[-1][2] if self.evals else None,
        }


def solve_fastpg(system: str, seed: int, target: float, overrides: dict[str, Any], env=None, **clock) -> dict[str, Any]:
    """Train fastpg with ``overrides`` (its own early stop switched off: the protocol decides).

    Evaluations run on ``env`` with ``fastpg.evaluate`` (as for every system in ``peers.py``), or
    without one through ``Trainer.evaluate`` (the fused epoch's compiled evaluation where it runs;
    native episodes of the task)."""
    cfg = Config(seed=seed, quiet=True, eval_episodes=0, target_return=1e9, max_env_steps=10**10, **overrides)
    with contextlib.redirect_stdout(io.StringIO()), Trainer(cfg) as tr:
        if env is not None:
            evaluate_fn = evaluator(lambda obs: tr.policy.net(obs.to(tr.device)).to(obs.device), env)
        else:
            evaluate_fn = lambda s: tr.evaluate(EVAL_EPISODES, seed=s)["eval_return_mean"]  # noqa: E731
        clock_ = SolveClock(evaluate_fn, seed, target, **clock)
        clock_.start()
        while True:
            tr.epoch()
            if clock_.boundary(tr.counters.env_steps):
                break
        row = clock_.result(system, tr.counters.env_steps)
        row["fused"] = tr.fused is not None
        return row


def median_time(rows: list[dict[str, Any]], key: str = "time_to_solve_s") -> float | None:
    """Median time to solve, unsolved runs counting as infinitely long (None if the median is one)."""
    times = sorted(r[key] if r[key] is not None else math.inf for r in rows)
    if not times:
        return None
    m = statistics.median(times)
    return None if math.isinf(m) else m
