"""How a population's members are stepped together: one batched call per phase for all of them.

An engine runs the three batched phases of a population epoch over the members still training
(each a ``fastpg.Trainer``, which holds the member's state: env, policy, optimizer, storage,
carry, generators, counters):

- ``collect(members)``: every member's epoch of T steps into its own storage;
- ``collected(members)``: what each member's epoch says (``Trainer.collected``);
- ``update(members, applies)``: every member's update (``(stats, bad)`` per member, as
  ``Trainer.update`` computes them; the optimizer steps where ``applies`` says so);
- ``evaluate(requests)``: many members' evaluations (the target checks, the final evaluations).

``FusedBatch`` (CPU, where every member runs the fused epoch): one ``collect_many`` and one
``update_grads_many`` kernel call for all members, the members spread over the threads; each
member's job is the single run's kernel on the member's own tensors and generators, so it computes
bit for bit what the member's single run computes. ``GenericBatch`` (everything else; see
``fastpg.population.generic``): one env of all members' copies, one batched forward of all
members' policies, one backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from torch import Tensor

from fastpg._kernels import kernels
from fastpg.fused import FusedEpoch, read_epochs, run_many
from fastpg.trainer import EpochData, Evaluation, Trainer

__all__ = ["Engine", "EvalRequest", "UpdateResult", "FusedBatch", "run_evaluations"]


# One member's update: its detached stats, and the non-finite quantity that skipped it (or None).
UpdateResult = tuple[dict[str, Tensor], str | None]


class EvalRequest(NamedTuple):
    """One member's evaluation: ``Trainer.evaluation``'s arguments (seed None: the member's default)."""

    member: Trainer
    num_episodes: int
    deterministic: bool
    seed: int | None


class Engine(Protocol):
    kind: str

    def collect(self, members: Sequence[Trainer]) -> None: ...

    def collected(self, members: Sequence[Trainer]) -> list[EpochData]: ...

    def update(self, members: Sequence[Trainer], applies: Sequence[bool]) -> list[UpdateResult]: ...

    def evaluate(self, requests: Sequence[EvalRequest]) -> list[dict[str, Any]]: ...


def run_evaluations(evaluations: Sequence[Evaluation]) -> list[dict[str, Any]]:
    """Play prepared evaluations: those the fused collect plays in one batched kernel call, the
    others one by one."""
    run_many([e.call for e in evaluations if e.call is not None])
    return [e.call.finish() if e.call is not None else e.run() for e in evaluations]


class FusedBatch:
    """Every member's fused epoch in one kernel call per phase (CPU)."""

    kind = "fused"

    def __init__(self) -> None:
        self.kernels = kernels()  # the update and the epoch data (collects run in their env's module)

    @staticmethod
    def applies(members: Sequence[Trainer]) -> bool:
        return all(isinstance(m.fused, FusedEpoch) for m in members)

    def collect(self, members: Sequence[Trainer]) -> None:
        calls = [m.fused.collect_call(m.buf, m.carry, m.generator) for m in members]
        run_many(calls)
        for m, c in zip(members, calls):
            m.carry = c.finish()

    def collected(self, members: Sequence[Trainer]) -> list[EpochData]:
        """Every member's ``Trainer.collected``, its epoch's data read in one kernel call (the same
        episodes, counts and non-finite copies: a member whose data is not all finite has its
        copies found by ``nonfinite_envs``)."""
        reads = read_epochs(self.kernels, [m.buf for m in members])
        return [m.collected(read) for m, read in zip(members, reads)]

    def update(self, members: Sequence[Trainer], applies: Sequence[bool]) -> list[UpdateResult]:
        args = [
            m.fused.update_args(m.buf, m.settings, m.optimizer if a else None, last_obs=m.carry.obs)
            for m, a in zip(members, applies)
        ]
        raws = self.kernels.update_grads_many(args)
        return [
            m.fused.finish_update(raw, m.optimizer, a, apply=apply)
            for m, raw, a, apply in zip(members, raws, args, applies)
        ]

    def evaluate(self, requests: Sequence[EvalRequest]) -> list[dict[str, Any]]:
        evaluations = []
        try:
            for r in requests:
                evaluations.append(r.member.evaluation(r.num_episodes, deterministic=r.deterministic, seed=r.seed))
            return run_evaluations(evaluations)
        finally:
            for e in evaluations:
                e.close()
