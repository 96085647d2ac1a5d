"""``train_population(population)``: a whole population run, as ``fastpg train --seeds K`` does it.

The application layer of ``PopulationTrainer``, as ``fastpg.run.train`` is the single run's: the
outputs are checked first (the shared fields of the members name them: one metrics file, one
TensorBoard directory, one checkpoint directory for the whole population); a checkpoint is
resumed; every member's epoch goes to the metrics file (a ``member`` field; the header lists each
member's seed and setting) and to TensorBoard (one run per member, ``member_007/``); a population
line goes to the console (members solved, median and worst return, steps/s); checkpoints hold the
whole population; Ctrl-C and SIGTERM stop every member after the current epoch; the members that
did not confirm their target are evaluated in one batched call; the summary gives every member's
result and the population's statistics (``fastpg.stats``: median and IQM with stratified-bootstrap
95% intervals, seeded) of the final evaluation and of the time to solve, overall and per setting.

Under ``torchrun`` the members are dealt to the ranks (member i to rank i mod W): each rank trains
whole members, there is no gradient exchange, and a member's result is the one it has in one
process. The ranks keep step (one gather of the epoch's metrics per epoch), rank 0 writes every
output, and a checkpoint gathers every rank's members: the same file a one-process run writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from fastpg.checkpoint import CHECKPOINT_NAME, hold_directory, load_checkpoint, save_checkpoint
from fastpg.config import Config
from fastpg.distributed import Group, process_group
from fastpg.envs import resolve_backend
from fastpg.errors import ConfigError, EnvWorkerError, OutputError
from fastpg.interrupts import StopOnSignals, signal_of
from fastpg.metrics import (
    JsonlSink,
    TensorBoardSink,
    WandbSink,
    format_si,
    jsonable,
    new_wandb_id,
    rounded,
    run_header,
    wandb_run_ids,
)
from fastpg.population.progress import PopulationProgress
from fastpg.population.spec import Population
from fastpg.population.trainer import PopulationTrainer
from fastpg.run import _exit_code, check_outputs, trim_metrics
from fastpg.stats import aggregate

__all__ = ["train_population", "member_numbers", "population_final_line", "population_header"]


def member_numbers(size: int, rank: int, world_size: int) -> list[int]:
    """The members rank ``rank`` of ``world_size`` trains: every ``world_size``-th from ``rank``
    (dealt round-robin, so each rank gets a share of every setting)."""
    if size < world_size:
        raise ConfigError(
            "seeds", f"{size} members cannot be split over {world_size} processes; give at least {world_size}"
        )
    return list(range(rank, size, world_size))


def train_population(population: Population) -> dict[str, Any]:
    """Train every member of ``population`` to its budget or target, evaluate, and return the
    summary (see the module): ``members_solved``, ``eval_return`` and ``time_to_solve`` (median
    and IQM with intervals), ``settings`` (the same per setting), ``member_results`` (each
    member's result, as a single run's summary has it) and ``exit_code`` (1 if a member failed,
    128 + N after signal N, else 0).

    Prints the population line (unless ``quiet``) and the summary; writes the metrics file, the
    TensorBoard runs and the checkpoints the members' shared fields name."""
    if not isinstance(population, Population):
        population = Population(tuple(population))
    base = population.base
    with process_group(base.device, base.dist_timeout_s, base.dist_backend) as group:
        writes = group is None or group.rank == 0
        numbers = member_numbers(len(population), group.rank, group.world_size) if group is not None else None
        if writes:
            check_outputs(base)
        return _train(population, numbers, group, writes)


def _train(population: Population, numbers: list[int] | None, group: Group | None, writes: bool) -> dict[str, Any]:
    base = population.base
    ckpt_dir = base.checkpoint_dir if base.checkpoint_dir is not None else base.resume
    with contextlib.ExitStack() as stack:
        if ckpt_dir is not None and writes:
            hold_directory(stack, ckpt_dir, fresh=base.resume is None and base.overwrite)
        state = _resume_state(base)
        resumed_at = state["epochs"] if state is not None else None
        if writes and state is not None and base.metrics_file is not None and base.metrics_file.exists():
            trim_metrics(base.metrics_file, _last_member_epoch(state))
        trainer = stack.enter_context(PopulationTrainer(population, members=numbers))
        if state is not None:
            trainer.load_state_dict(state, source=str(base.resume / CHECKPOINT_NAME))
        processes = group.world_size if group is not None else 1
        header = population_header(population, trainer, resumed_at, processes)
        resumed_from = base.resume if state is not None else None
        sinks = _open_sinks(population, header, stack, resumed_from, ckpt_dir) if writes else _Sinks([], {})
        summary, failure = _run(population, trainer, group, sinks, ckpt_dir, writes)
        if not writes:
            return summary
        unwritten = None
        try:
            sinks.write_summary(summary)
        except OutputError as e:  # the summary still reaches stdout below
            unwritten = e
    print(json.dumps(_jsonable_tree(summary)), flush=True)  # stdout: the summary alone
    if not base.quiet:
        print(population_final_line(summary), file=sys.stderr, flush=True)
    if failure is not None or unwritten is not None:
        raise failure or unwritten
    return summary


def population_header(
    population: Population, trainer: PopulationTrainer, resumed_at: int | None, processes: int
) -> dict[str, Any]:
    """The metrics file's header: the single run's (member 0's config, versions, machine), the
    fields that vary and every member's seed and setting."""
    header = run_header(population.base.to_dict(), trainer.device, resumed_at_epoch=resumed_at, processes=processes)
    varying = population.varying
    header["population"] = {
        "size": len(population),
        "varying": list(varying),
        "path": trainer.kind,
        "members": [
            {"member": i, "setting": population.setting_label(i), **{f: getattr(m, f) for f in varying or ("seed",)}}
            for i, m in enumerate(population.members)
        ],
    }
    return header


class _Sinks:
    """The metrics file (every member's records) and, per member, its TensorBoard and W&B runs."""

    def __init__(self, jsonl: list[JsonlSink], boards: dict[int, list[TensorBoardSink | WandbSink]]):
        self.jsonl, self.boards = jsonl, boards

    def write(self, number: int, metrics: dict[str, Any]) -> None:
        for sink in self.jsonl:
            sink.write(metrics)
        for board in self.boards.get(number, ()):
            board.write(metrics)

    def write_summary(self, summary: dict[str, Any]) -> None:
        for sink in self.jsonl:
            sink.write(summary)
        for boards in self.boards.values():
            for board in boards:
                board.write(summary)


def _open_sinks(
    population: Population,
    header: dict[str, Any],
    stack: contextlib.ExitStack,
    resumed_from: Path | None,
    ckpt_dir: Path | None,
) -> _Sinks:
    base = population.base
    jsonl = []
    if base.metrics_file is not None:
        sink = stack.enter_context(JsonlSink(base.metrics_file, append=base.resume is not None and not base.overwrite))
        sink.write(header)
        jsonl.append(sink)
    boards: dict[int, list[TensorBoardSink | WandbSink]] = {i: [] for i in range(len(population))}
    ids: dict[str, str] = {}
    if base.wandb is not None:  # a resumed population logs on into its members' W&B runs
        fresh = {"group": f"{base.env}-population-{time.strftime('%Y%m%d-%H%M%S')}"}
        fresh.update({f"member{i:03d}": new_wandb_id() for i in range(len(population))})
        ids = wandb_run_ids(resumed_from, ckpt_dir, fresh)
    group = ids.get("group")
    for i in range(len(population)):
        member_header = {**header, "member": i, "config": population.members[i].to_dict()}
        if base.tensorboard is not None:
            board = TensorBoardSink(Path(base.tensorboard) / f"member_{i:03d}", member_header)
            boards[i].append(stack.enter_context(board))
        if base.wandb is not None:
            run = WandbSink(
                base.wandb, member_header, name=f"{group}-member{i:03d}", group=group, run_id=ids[f"member{i:03d}"]
            )
            boards[i].append(stack.enter_context(run))
    return _Sinks(jsonl, boards)


def _run(
    population: Population,
    trainer: PopulationTrainer,
    group: Group | None,
    sinks: _Sinks,
    ckpt_dir: Path | None,
    writes: bool,
) -> tuple[dict[str, Any], EnvWorkerError | None]:
    """The batched epochs, the checkpoints and the final evaluations; returns the summary and the
    env failure that ended the run, if one did."""
    base = population.base
    progress = (
        None
        if base.quiet or not writes
        else PopulationProgress(
            len(population),
            base.progress_interval_s,
            has_target=any(m.target.target is not None for m in trainer.members),
        )
    )
    failure, ckpt_path, requested = None, None, None
    with StopOnSignals() as signals:
        while True:
            try:
                local = trainer.epoch() if trainer.live else []
            except EnvWorkerError as e:  # the epoch in progress is lost; the ones before it are kept
                if group is not None:
                    raise
                failure, local = e, []
                trainer.stop_all(f"env failure: {e}")
            requested = signals.requested()
            if group is not None:
                requested = group.agree(requested)
            if requested:
                trainer.stop_all(requested)
            stopped = {n: r for n, r in zip(trainer.numbers, trainer.stop_reasons) if r is not None}
            if group is not None:
                parts = group.objects((local, stopped), "the exchange of the members' metrics")
                local = sorted((m for part, _ in parts for m in part), key=lambda nm: nm[0])
                stopped = {n: r for _, part in parts for n, r in part.items()}
            still = len(stopped) < len(population)
            for number, metrics in local:
                sinks.write(number, metrics)
            if progress is not None and local:
                progress(local, stopped, sps=_epoch_sps(local), force=not still)
            if group is not None:  # the ranks' epochs in step (a rank whose members all stopped waits)
                trainer.epochs += not trainer.live and bool(local)
            if ckpt_dir is not None and (not still or trainer.epochs % base.checkpoint_every == 0) and local:
                ckpt_path = _save(trainer, group, ckpt_dir, writes)
            if not still:
                break
        if ckpt_dir is not None and ckpt_path is None:
            ckpt_path = _save(trainer, group, ckpt_dir, writes)
        interrupted = signal_of(requested) is not None or failure is not None
        evaluations = _final_evaluations(trainer, interrupted=interrupted)
        results = [_member_result(population, trainer, k, evaluations[k]) for k in range(len(trainer.members))]
        wall_s = trainer.wall_s
        if group is not None:
            gathered = group.objects((results, wall_s), "the gather of the members' results")
            results = sorted((r for part, _ in gathered for r in part), key=lambda r: r["member"])
            wall_s = max(w for _, w in gathered)
        # the single run's rule (env failure, the signal that stopped training or came during the
        # final evaluation), and 1 when a member failed
        exit_code = _exit_code(failure, signal_of(requested), signals) or int(any(r["error"] for r in results))
        summary = population_summary(
            population,
            results,
            kind=trainer.kind,
            device=str(trainer.device),
            wall_s=wall_s,
            processes=group.world_size if group is not None else 1,
            stop_reason=requested or (f"env failure: {failure}" if failure else "every member stopped"),
            checkpoint=ckpt_path,
            exit_code=exit_code,
        )
    return summary, failure


def _epoch_sps(local: list[tuple[int, dict[str, Any]]]) -> float:
    """The population's steps/s in the epoch: every member's valid steps over the batched epoch's time."""
    return sum(m["sps"] for _, m in local if m["sps"] is not None and math.isfinite(m["sps"]))


def _save(trainer: PopulationTrainer, group: Group | None, directory: Path, writes: bool) -> Path:
    """Checkpoint the whole population (every rank's members gathered, in member order)."""
    state = trainer.state_dict()
    if group is not None:
        parts = group.objects(state, "the gather of the population's checkpoint")
        state = _merged_state(parts)
    return (
        save_checkpoint(state, directory, keep=trainer.population.base.keep_checkpoints)
        if writes
        else directory / CHECKPOINT_NAME
    )


def _merged_state(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' population states as one (members in member order; the population's clock
    and epochs those of the rank that trained longest)."""
    fields = ("numbers", "members", "stop_reasons", "errors", "evaluations")
    rows = sorted((row for p in parts for row in zip(*(p[f] for f in fields))), key=lambda row: row[0])
    first = parts[0]
    return {
        **first,
        "numbers": [r[0] for r in rows],
        "members": [r[1] for r in rows],
        "stop_reasons": [r[2] for r in rows],
        "errors": [r[3] for r in rows],
        "evaluations": [r[4] for r in rows],
        "wall_s": max(p["wall_s"] for p in parts),
        "epochs": max(p["epochs"] for p in parts),
    }


def _resume_state(base: Config) -> dict[str, Any] | None:
    if base.resume is None:
        return None
    state = load_checkpoint(base.resume)
    if state.get("kind") != "population":
        raise ConfigError(
            "resume", f"{base.resume / CHECKPOINT_NAME} holds a single run, not a population; resume it without --seeds"
        )
    return state


def _last_member_epoch(state: dict[str, Any]) -> int:
    """The latest member epoch a population checkpoint holds (the metrics file keeps those)."""
    return max(int(m["epoch"]) for m in state["members"])


def _final_evaluations(trainer: PopulationTrainer, *, interrupted: bool) -> list[dict[str, Any]]:
    """Each member's: the evaluation that confirmed its target, else a fresh one (the members
    without one evaluated in one batched call; none after a signal or an env failure)."""
    base = trainer.population.base
    out: list[dict[str, Any]] = [dict(m.target.evaluation or {}) for m in trainer.members]
    todo = [trainer.numbers[k] for k, m in enumerate(trainer.members) if m.target.evaluation is None]
    if todo and base.eval_episodes and not interrupted:
        if not base.quiet:
            print(f"fastpg: evaluating {len(todo)} members, {base.eval_episodes} episodes each...", file=sys.stderr)
        results = trainer.evaluate(base.eval_episodes, members=todo, deterministic=base.eval_deterministic)
        for number, result in zip(todo, results):
            out[trainer.numbers.index(number)] = result
    return out


def _member_result(population: Population, trainer: PopulationTrainer, k: int, evaluation: dict[str, Any]):
    """Member k's result: what a single run's summary says of it, with its number, seed and setting."""
    m, number = trainer.members[k], trainer.numbers[k]
    c, target = m.counters, m.target.target
    eval_mean = evaluation.get("eval_return_mean")
    solved = None if target is None or eval_mean is None else eval_mean >= target
    result = {
        "member": number,
        "seed": m.cfg.seed,
        "setting": population.setting_label(number),
        **population.setting(number),
        "solved": solved,
        "target_return": target,
        "stop_reason": m.stop_reason,
        "error": trainer.errors[k],
        "time_to_solve_s": c.wall_s if solved else None,
        "env_steps_to_solve": c.env_steps if solved else None,
        "train_wall_s": c.wall_s,
        "env_steps": c.env_steps,
        "epochs": c.epoch,
        "episodes": c.episodes,
        "return_mean_100": m.window.mean_return(),
        "skipped_updates": c.skipped_updates,
        "target_checks": m.target.checks,
        **evaluation,
    }
    return {key: rounded(value) for key, value in result.items()}


def population_summary(
    population: Population,
    results: list[dict[str, Any]],
    *,
    kind: str,
    device: str,
    wall_s: float,
    processes: int,
    stop_reason: str,
    checkpoint: Path | None,
    exit_code: int,
) -> dict[str, Any]:
    """The population's summary from its members' ``results`` (see ``train_population``)."""
    base = population.base
    labels = population.settings()
    by_setting = {label: [r for r in results if r["setting"] == label] for label in labels}
    solved = [r for r in results if r["solved"]]
    env_steps = sum(r["env_steps"] for r in results)
    all_solved = len(solved) == len(results) and bool(results)
    has_target = any(r["solved"] is not None for r in results)

    def stats(rows_by_setting: list[list[dict[str, Any]]]) -> dict[str, Any]:
        returns = [[_number(r.get("eval_return_mean"), math.nan) for r in rows] for rows in rows_by_setting]
        times = [[_number(r["time_to_solve_s"], math.inf) for r in rows] for rows in rows_by_setting]
        evaluated = [[x for x in group if not math.isnan(x)] for group in returns]
        return {
            "members": sum(len(rows) for rows in rows_by_setting),
            "members_solved": sum(bool(r["solved"]) for rows in rows_by_setting for r in rows) if has_target else None,
            "eval_return": aggregate(evaluated, seed=base.seed) if any(evaluated) else None,
            "time_to_solve_s": aggregate(times, seed=base.seed) if has_target else None,
        }

    summary = {
        "summary": True,
        "population": True,
        "env": base.env,
        "backend": resolve_backend(base.env, base.backend, base.num_envs),
        "device": device,
        "epoch": kind,
        "processes": processes,
        "varying": list(population.varying),
        **stats(list(by_setting.values())),
        "stop_reason": stop_reason,
        "train_wall_s": rounded(wall_s),
        "time_until_all_solved_s": rounded(max(r["time_to_solve_s"] for r in solved)) if all_solved else None,
        "env_steps": env_steps,
        "sps": rounded(env_steps / wall_s) if wall_s > 0 else None,
        "confidence": 0.95,
        "settings": [
            {"setting": label, **population.setting(by_setting[label][0]["member"]), **stats([rows])}
            for label, rows in by_setting.items()
        ]
        if len(labels) > 1
        else [],  # fmt: skip
        "member_results": results,
        "resumed_from": str(base.resume) if base.resume is not None else None,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "exit_code": exit_code,
    }
    return summary


def _number(x: Any, missing: float) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else missing


def _jsonable_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable_tree(v) for v in value]
    return rounded(jsonable(value))


def _interval(stat: dict[str, Any] | None, name: str, unit: str = "") -> str:
    if not stat or stat.get(name) is None:
        return f"{name} -"
    lo, hi = stat.get(f"{name}_ci_low"), stat.get(f"{name}_ci_high")
    ends = f" [{_digits(lo, 3)}, {_digits(hi, 3)}]" if lo is not None and hi is not None else " [-, -]"
    return f"{name} {_digits(stat[name], 4)}{unit}{ends}"


def _digits(x: float, significant: int) -> str:
    """``x`` to about ``significant`` digits, whole numbers beyond them (-1130, not -1.13e+03)."""
    return f"{x:.0f}" if math.isfinite(x) and abs(x) >= 10**significant else f"{x:.{significant}g}"


def _outcome(stats: dict[str, Any]) -> str:
    """Members solved, the evaluation and the time to solve; without a target (an env with no
    reward threshold and no ``target_return``), the evaluation alone."""
    evaluation = f"evaluation {_interval(stats['eval_return'], 'iqm')}"
    if stats["members_solved"] is None:
        return f"no target; {evaluation}"
    solved = f"{stats['members_solved']}/{stats['members']} solved"
    return f"{solved}; {evaluation}; time to solve {_interval(stats['time_to_solve_s'], 'iqm', ' s')}"


def population_final_line(summary: dict[str, Any]) -> str:
    """The population's outcome for a person: members solved, the final evaluation's and the time
    to solve's IQM with their 95% intervals, per setting when there are several."""
    s = summary
    lines = [
        f"fastpg: population of {s['members']} on {s['env']}: {_outcome(s)}"
        f"; {s['train_wall_s']:.3g} s of training, {format_si(s['env_steps'])} steps"
        + (f" ({format_si(s['sps'])} steps/s)" if s.get("sps") else "")
    ]
    lines += [f"  {setting['setting']}: {_outcome(setting)}" for setting in s["settings"]]
    failed = [r for r in s["member_results"] if r["error"]]
    for r in failed:
        lines.append(f"  member {r['member']} failed: {r['error']}")
    return "\n".join(lines)
