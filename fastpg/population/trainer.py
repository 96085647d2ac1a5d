"""``PopulationTrainer``: K members trained as one batched program, each exactly its own run.

Each member is a ``fastpg.Trainer`` built from its own config: its own env (seeded by its seed),
policy (initialized from it), Adam, generators, storage, carry, counters, episode window and stop
rule. The population does not change what a member computes, only how the work is scheduled: an
epoch is one batched collect of every member still training, their target checks as one batched
evaluation, and one batched update (``fastpg.population.engines``). A member that has stopped (its
target confirmed, its budget spent, or too many non-finite updates) is left out of every later
call: it costs nothing more.

Time. The population has one clock, its training time (collect and update of its batched epochs,
evaluations excluded). A member's ``wall_s`` is that clock while it trained: its time to solve is
the population's training time when its target was confirmed, so the last member's is the time
until all have solved. A member's per-epoch ``sps`` is its own valid steps over the batched epoch's
time (their sum is the population's throughput).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from fastpg._crash import crash_point
from fastpg.checkpoint import check_compatible
from fastpg.config import Config
from fastpg.errors import ConfigError, NonFiniteError
from fastpg.metrics import PhaseTimer
from fastpg.placement import choose_device
from fastpg.population.engines import Engine, EvalRequest, FusedBatch
from fastpg.population.spec import Population
from fastpg.preflight import check_config
from fastpg.trainer import Trainer

__all__ = ["PopulationTrainer", "MemberMetrics"]

# (member number in the population, that member's metrics of the epoch)
MemberMetrics = tuple[int, dict[str, Any]]


class PopulationTrainer:
    """Train the members of ``population`` together (``members``: the member numbers trained in
    this process, default all; a data-parallel launch gives each process its share).

    ``run()`` yields, per batched epoch, the metrics of every member that trained in it (member
    number, metrics); ``evaluate()`` evaluates members in one batched call; ``state_dict()`` /
    ``load_state_dict()`` hold the whole population (every member's run state, in the single-run
    format, and which members have stopped and why). A context manager (closes every member).
    """

    def __init__(self, population: Population | Sequence[Config], *, members: Sequence[int] | None = None):
        self.population = population if isinstance(population, Population) else Population(tuple(population))
        pop = self.population
        self.numbers = list(range(len(pop))) if members is None else list(members)
        if not self.numbers or any(not 0 <= i < len(pop) for i in self.numbers):
            raise ConfigError("members", f"member numbers must lie in [0, {len(pop)}), got {self.numbers!r}")
        check_config(pop.base, members=len(self.numbers))
        self.device_choice = choose_device(pop.base, members=len(self.numbers))
        self.device = self.device_choice.device
        # The fused epoch on CPU batches the members' own kernels; elsewhere the generic batch (no
        # per-member CUDA graph: one batched program serves all members).
        fast = self.device.type == "cpu"
        self.members: list[Trainer] = []
        try:
            for i in self.numbers:
                self.members.append(Trainer(pop.members[i], fast_epoch=fast, device=self.device_choice))
            self.engine: Engine = _engine(self.members)
        except BaseException:
            self.close()
            raise
        self.stop_reasons: list[str | None] = [None] * len(self.members)
        self.errors: list[str | None] = [None] * len(self.members)  # a member's failure, said in one line
        self.timer = PhaseTimer(self.device)
        self.wall_s = 0.0
        self.epochs = 0

    @property
    def kind(self) -> str:
        """Which batched path runs the members: ``fused`` or ``generic``."""
        return self.engine.kind

    @property
    def live(self) -> list[int]:
        """Positions (in ``members``) of the members still training."""
        return [k for k, reason in enumerate(self.stop_reasons) if reason is None]

    # -- one batched epoch ---------------------------------------------------------------------------
    def epoch(self) -> list[MemberMetrics]:
        """One epoch of every member still training: batched collect, target checks (a batched
        evaluation, not training time), batched update; returns each member's metrics."""
        live = self.live
        ms = [self.members[k] for k in live]
        timer = self.timer.reset()
        with timer("collect"):
            self.engine.collect(ms)
            data = self.engine.collected(ms)
        crash_point("epoch")  # the reliability tests' kill point (fastpg._crash; nothing otherwise)
        confirmed = self._check_targets(ms)
        with timer("update"):
            applies = [not c and d.bad_data is None for c, d in zip(confirmed, data)]
            for m in ms:
                m.schedule_lr()
            computed = self.engine.update(ms, applies)
            stats: list[dict[str, torch.Tensor] | None] = []
            for k, m, d, (st, bad) in zip(live, ms, data, computed):
                try:
                    stats.append(m.record_update(st, bad, d.bad_data))
                except NonFiniteError as e:  # this member fails; the others go on
                    self._stop(k, f"error: {e}", error=str(e))
                    stats.append(None)
        seconds = dict(timer.seconds)
        self.wall_s += timer.total_s
        self.epochs += 1
        out = []
        for k, m, d, st in zip(live, ms, data, stats):
            if st is None:
                continue
            metrics = {"member": self.numbers[k], **m.end_epoch(st, d, seconds)}
            reason = m.check_stop()
            if reason is not None:
                self._stop(k, reason)
            metrics["stop_reason"] = reason  # set in the member's last epoch
            out.append((self.numbers[k], metrics))
        return out

    def _check_targets(self, ms: list[Trainer]) -> list[bool]:
        """Each member's target rule after its collect; the evaluations it asks for run as one
        batched evaluation."""
        asking = [
            m for m in ms if m.target.eval_episodes and not m.target.confirmed and m.target.window_reached(m.window)
        ]
        results = self.engine.evaluate([EvalRequest(m, **m.target_evaluation()) for m in asking])
        by_member = {id(m): r for m, r in zip(asking, results)}
        return [m.target(m.window, lambda m=m: by_member[id(m)]) for m in ms]

    def _stop(self, k: int, reason: str, error: str | None = None) -> None:
        self.stop_reasons[k] = reason
        self.members[k].stop_reason = reason
        if error is not None:
            self.errors[k] = error

    # -- driving ---------------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], str | None] | None = None) -> Iterator[list[MemberMetrics]]:
        """Train until every member has stopped, yielding each batched epoch's member metrics.
        ``should_stop()`` (Ctrl-C, SIGTERM) stops every member still training, between epochs."""
        self._stop_if_asked(should_stop)
        while self.live:
            metrics = self.epoch()
            self._stop_if_asked(should_stop)
            yield metrics

    def _stop_if_asked(self, should_stop: Callable[[], str | None] | None) -> None:
        if should_stop is None:
            return
        requested = should_stop()
        if requested:
            self.stop_all(requested)

    def stop_all(self, reason: str) -> None:
        """Stop every member still training, with ``reason`` (a signal, an env failure)."""
        for k in self.live:
            self._stop(k, reason)

    def stop_member(self, number: int, reason: str) -> None:
        """Stop member ``number`` (if it is still training) with ``reason``: it costs nothing
        more from the next epoch on."""
        k = self.numbers.index(number)
        if self.stop_reasons[k] is None:
            self._stop(k, reason)

    def evaluate(
        self,
        num_episodes: int = 100,
        *,
        members: Sequence[int] | None = None,
        deterministic: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> list[dict[str, float]]:
        """Evaluate members (their numbers; default: all trained here) on ``num_episodes`` fresh
        episodes each, in one batched call; each result is what the member's ``Trainer.evaluate``
        returns with the same ``seed`` (``seeds``: one per member; default: each member's own
        default), the same episodes and draws."""
        numbers = list(members) if members is not None else list(self.numbers)
        seeds = list(seeds) if seeds is not None else [None] * len(numbers)
        if len(seeds) != len(numbers):
            raise ValueError(f"give one seed per member: {len(seeds)} seeds for {len(numbers)} members")
        requests = [
            EvalRequest(self.members[self.numbers.index(i)], num_episodes, deterministic, seed)
            for i, seed in zip(numbers, seeds)
        ]
        return self.engine.evaluate(requests)

    # -- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole population: its config, every member's run state (``Trainer.state_dict``), and
        which members stopped, why, and the evaluation that confirmed a member's target."""
        return {
            "kind": "population",
            "config": self.population.base.to_dict(),  # member 0's: what a checkpoint's reader checks first
            "population": self.population.to_dict(),
            "numbers": list(self.numbers),
            "members": [m.state_dict() for m in self.members],
            "stop_reasons": list(self.stop_reasons),
            "errors": list(self.errors),
            "evaluations": [m.target.evaluation for m in self.members],
            "wall_s": self.wall_s,
            "epochs": self.epochs,
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str = "the state") -> None:
        """Continue the population saved in ``state``: this trainer's members (``ConfigError``
        naming ``source`` if it does not hold each of them). A state of the whole population
        continues any share of it (a data-parallel launch gives each process its members). A
        member that failed stays stopped, one whose target was confirmed too; one stopped by its
        budget or a signal trains on if its budget (raised on resume) is not spent."""
        saved = state.get("members")
        numbers = state.get("numbers")
        if (
            not isinstance(saved, list) or not isinstance(numbers, list) or len(saved) != len(numbers)
            or any(i not in numbers for i in self.numbers)
            or len(state.get("population", {}).get("members", ())) != len(self.population)
        ):  # fmt: skip
            raise ConfigError(
                "resume", f"{source} holds another population than this one ({len(self.population)} members)"
            )
        for k, i in enumerate(self.numbers):
            j = numbers.index(i)
            m = self.members[k]
            check_compatible(state["population"]["members"][i], m.cfg, f"{source} (member {i})")
            m.load_state_dict(saved[j], source=f"{source} (member {i})")
            evaluation = state["evaluations"][j]
            if evaluation is not None:
                m.target.confirmed, m.target.evaluation = True, dict(evaluation)
            # A failed member stays failed; the others stop again only if their target is
            # confirmed or their budget (which a resumed run may raise) is spent.
            self.errors[k] = state["errors"][j]
            self.stop_reasons[k] = m.stop_reason = state["stop_reasons"][j] if self.errors[k] else m.check_stop()
        self.wall_s = float(state["wall_s"])
        self.epochs = int(state["epochs"])

    def close(self) -> None:
        for m in self.members:
            m.close()

    def __enter__(self) -> PopulationTrainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _engine(members: list[Trainer]) -> Engine:
    """The fused batch where every member runs the fused epoch, else the generic batch."""
    if FusedBatch.applies(members):
        return FusedBatch()
    from fastpg.population.generic import GenericBatch

    return GenericBatch(members)
