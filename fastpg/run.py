"""``train(cfg)``: a whole run, as ``fastpg train`` does it, around the ``Trainer``.

The application layer: what a run needs beyond the algorithm. Outputs are checked before anything
runs (an existing metrics file or checkpoint is refused unless ``overwrite``); a checkpoint is
resumed; each epoch's metrics go to the JSON Lines file and the console; checkpoints are written
every ``checkpoint_every`` epochs and when training stops; Ctrl-C and SIGTERM stop the run after the
current epoch; the final evaluation runs and the summary is written and printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from fastpg.checkpoint import (
    CHECKPOINT_NAME,
    LOCK_NAME,
    TEMP_PREFIX,
    check_compatible,
    has_checkpoint,
    hold_directory,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from fastpg.config import Config
from fastpg.distributed import Group, process_group
from fastpg.errors import ConfigError, EnvWorkerError, OutputError
from fastpg.interrupts import StopOnSignals, signal_of
from fastpg.metrics import (
    ConsoleProgress,
    JsonlSink,
    TensorBoardSink,
    WandbSink,
    final_line,
    jsonable,
    new_wandb_id,
    rounded,
    run_header,
    wandb_run_ids,
)
from fastpg.placement import placement_record
from fastpg.preflight import check_config
from fastpg.trainer import Trainer

__all__ = ["train", "check_outputs", "trim_metrics"]


def check_outputs(cfg: Config) -> None:
    """Refuse outputs that collide, and an existing metrics file or checkpoint unless asked to
    replace it."""
    ckpt = _checkpoint_directory(cfg)
    if cfg.metrics_file is not None and ckpt is not None:
        m = cfg.metrics_file.absolute()
        reserved = m.name in (CHECKPOINT_NAME, LOCK_NAME) or m.name.startswith(TEMP_PREFIX)
        if reserved and m.parent.resolve() == ckpt.absolute().resolve():
            raise ConfigError(
                "metrics_file", f"{cfg.metrics_file} is a file the checkpoints in {ckpt} use; name it otherwise"
            )
    if cfg.overwrite:
        return
    if cfg.metrics_file is not None and cfg.metrics_file.exists() and cfg.resume is None:
        raise ConfigError(
            "metrics_file",
            f"{cfg.metrics_file} already exists; pass --overwrite to replace it (or --resume DIR to append to it)",
        )
    ckpt = cfg.checkpoint_dir
    if ckpt is not None and has_checkpoint(ckpt):
        if cfg.resume is None or cfg.resume.resolve() != ckpt.resolve():
            raise ConfigError(
                "checkpoint_dir",
                f"{ckpt} already holds a checkpoint; pass --resume {ckpt} to continue that run "
                "or --overwrite to replace it",
            )


def _checkpoint_directory(cfg: Config) -> Path | None:
    """Where the run's checkpoints go: ``checkpoint_dir``, else back into the resumed directory."""
    return cfg.checkpoint_dir if cfg.checkpoint_dir is not None else cfg.resume


def train(cfg: Config, *, policy: nn.Module | None = None) -> dict[str, Any]:
    """Train with ``cfg`` to its budget or target, evaluate, and return the summary.

    Prints progress lines (unless ``cfg.quiet``) and the summary; writes ``cfg.metrics_file``
    (one JSON object per epoch, then the summary object) when set. Summary keys: ``solved``
    (evaluation mean >= target), ``time_to_solve_s`` (training wall time, evaluation excluded),
    ``env_steps_to_solve``, ``eval_return_mean``, ``sps``, ``checkpoint`` and more.

    Every output is checked before anything runs (``check_config``, ``check_outputs``); the
    checkpoint directory is held by this run alone (``DirectoryLock``). Checkpoints
    (``checkpoint_dir``, or the ``resume`` directory) are written every ``checkpoint_every`` epochs
    and when training stops. SIGINT / SIGTERM stop the run after the current epoch: checkpoint,
    summary (``stop_reason`` ``"interrupted (SIGINT)"``, no evaluation), environments closed;
    ``summary["exit_code"]`` is then 128 + the signal number. A ``NonFiniteError`` or an
    ``OutputError`` (a file that cannot be written) leaves the last checkpoint as it was.

    Launched as one of several processes (``torchrun``, ``WORLD_SIZE`` > 1), it joins their
    data-parallel run (``fastpg.distributed``): ``cfg.num_envs`` copies over all of them, and rank 0
    alone writes the metrics, progress, checkpoints and summary (the others return it quietly).
    """
    check_config(cfg)
    cfg, continued, note = resolve_resume(cfg)
    with process_group(cfg.device, cfg.dist_timeout_s, cfg.dist_backend) as group:
        if group is None or group.rank == 0:
            if note is not None:  # said even when quiet: a restart is an event, as a warning is
                print(f"fastpg: {note}", file=sys.stderr, flush=True)
            return _train(cfg, policy, group, continued=continued)
        # The other ranks: the same run, writing nothing (rank 0 writes the whole run's files).
        quiet = cfg.replace(metrics_file=None, tensorboard=None, wandb=None, quiet=True)
        return _train(quiet, policy, group, writes=False, continued=continued)


def _train(
    cfg: Config, policy: nn.Module | None, group: Group | None, *, writes: bool = True, continued: bool = False
) -> dict[str, Any]:
    """``train`` in this process (``writes``: the outputs are this process's to write;
    ``continued``: the start continues the run by itself after a failure, a restart)."""
    if writes:
        check_outputs(cfg)
    ckpt_dir = _checkpoint_directory(cfg)
    with contextlib.ExitStack() as stack:
        if ckpt_dir is not None and writes:
            hold_directory(stack, ckpt_dir, fresh=cfg.resume is None and cfg.overwrite)
        state = _resume_state(cfg)
        if state is not None and cfg.metrics_file is not None and cfg.metrics_file.exists() and not cfg.overwrite:
            trim_metrics(cfg.metrics_file, state["epoch"])
        resumed_at = state["epoch"] if state is not None else None
        processes = group.world_size if group is not None else 1
        sinks: list[JsonlSink | TensorBoardSink | WandbSink] = []

        def open_outputs(trainer: Trainer) -> None:
            """The metrics file and TensorBoard, each starting with the header (once the trainer
            exists: the header says which threads its epochs use, and why)."""
            header = run_header(
                cfg.to_dict(), trainer.device, resumed_at_epoch=resumed_at, processes=processes,
                placement=placement_record(trainer.device_choice, trainer.thread_choice),
            )  # fmt: skip
            if cfg.metrics_file is not None:
                jsonl = JsonlSink(cfg.metrics_file, append=cfg.resume is not None and not cfg.overwrite)
                sinks.append(stack.enter_context(jsonl))
                jsonl.write(header)  # the file describes itself (config, versions, machine, date)
            if cfg.tensorboard is not None:
                sinks.append(stack.enter_context(TensorBoardSink(cfg.tensorboard, header)))
            if cfg.wandb is not None:
                ids = wandb_run_ids(cfg.resume if state is not None else None, ckpt_dir, {"run": new_wandb_id()})
                run = WandbSink(cfg.wandb, header, name=f"{cfg.env}-seed{cfg.seed}", run_id=ids["run"])
                sinks.append(stack.enter_context(run))

        if continued and state is not None:
            state = {**state, "restarts": int(state.get("restarts", 0)) + 1}
        summary, failure = _run(cfg, policy, state, Checkpoints(ckpt_dir, writes), sinks, group, open_outputs)
        if not writes:
            return summary
        unwritten = None
        for sink in sinks:
            try:
                sink.write(summary)
            except OutputError as e:  # the summary still reaches stdout below
                unwritten = unwritten or e
    print(json.dumps({k: jsonable(v) for k, v in summary.items()}), flush=True)  # stdout: the summary alone
    if not cfg.quiet:
        print(final_line(summary), file=sys.stderr, flush=True)
    if failure is not None or unwritten is not None:
        raise failure or unwritten
    return summary


def _budget_share(cfg: Config) -> Callable[[dict[str, Any]], float]:
    """The share of the training budget a run has spent (env steps or epochs, whichever is nearer)."""

    def share(m: dict[str, Any]) -> float:
        spent = m["env_steps"] / cfg.max_env_steps
        if cfg.max_epochs is not None:
            spent = max(spent, m["epoch"] / cfg.max_epochs)
        return min(spent, 1.0)

    return share


def _run(
    cfg: Config,
    policy: nn.Module | None,
    state: dict[str, Any] | None,
    ckpt: Checkpoints,
    sinks: list[JsonlSink | TensorBoardSink | WandbSink],
    group: Group | None,
    open_outputs: Callable[[Trainer], None],
) -> tuple[dict[str, Any], EnvWorkerError | None]:
    """The epochs, the checkpoints and the final evaluation; returns the summary, and the env
    failure that ended the run if one did (after the checkpoint of the last whole epoch). In a
    data-parallel run an env failure on any rank ends the job at once (no checkpoint: the last
    one stands). ``open_outputs(trainer)`` fills ``sinks`` once the trainer exists."""
    progress = None if cfg.quiet else ConsoleProgress(cfg.progress_interval_s, budget=_budget_share(cfg))
    failure = None
    with Trainer(cfg, policy=policy, group=group) as trainer, StopOnSignals() as signals:
        if state is not None:
            trainer.load_state_dict(state, source=str(cfg.resume / CHECKPOINT_NAME))
        start_epoch = trainer.counters.epoch
        open_outputs(trainer)
        if not cfg.quiet and (group is None or group.rank == 0):
            if cfg.device == "auto" and trainer.device_choice.reason != "auto: no CUDA device":
                print(f"fastpg: device {trainer.device} ({trainer.device_choice.reason})", file=sys.stderr, flush=True)
            n = trainer.threads
            line = f"fastpg: {trainer.epoch_notice()}; {n} thread{'s' if n > 1 else ''}"
            workers = getattr(trainer.env, "worker_processes", 0)
            if workers:  # --backend pool: who steps the copies, and the collect's one torch thread
                line += f"; backend pool: the trainer and {workers} worker process{'es' if workers > 1 else ''} step"
                line += f" the {trainer.env.num_envs} copies (1 torch thread while collecting)"
            print(line, file=sys.stderr, flush=True)
        ckpt_path = None
        try:
            for metrics in trainer.run(should_stop=signals.requested):
                for sink in sinks:
                    sink.write(metrics)
                if progress:
                    progress(metrics, force=trainer.stop_reason is not None)
                if ckpt.directory is not None and trainer.counters.epoch % cfg.checkpoint_every == 0:
                    ckpt_path = ckpt.save(trainer)
        except EnvWorkerError as e:  # the epoch in progress is lost; the ones before it are kept
            if group is not None:
                raise
            failure = e
        every = cfg.checkpoint_every
        if ckpt.directory is not None and (ckpt_path is None or trainer.counters.epoch % every or failure):
            ckpt_path = ckpt.save(trainer)
        stopped = signal_of(trainer.stop_reason)  # on every rank, whichever received the signal
        stopped_by_signal = stopped is not None
        evaluation = _final_evaluation(trainer, interrupted=stopped_by_signal or failure is not None)
        stop_reason = f"env failure: {failure}" if failure else trainer.stop_reason
        if signals.received is not None and not stopped_by_signal:  # a signal during the evaluation
            stop_reason = f"{signals.requested()} during the final evaluation, after {stop_reason}"
        summary = _summary(
            trainer,
            evaluation,
            start_epoch=start_epoch,
            checkpoint=ckpt_path,
            exit_code=_exit_code(failure, stopped, signals),
            stop_reason=stop_reason,
        )
    return summary, failure


def _exit_code(failure: EnvWorkerError | None, stopped: signal.Signals | None, signals: StopOnSignals) -> int:
    """1 after an env failure; 128 + N after signal N (the one that stopped training, received by
    this or, in a data-parallel run, another rank; else one during the final evaluation); else 0."""
    if failure is not None:
        return 1
    if stopped is not None:
        return 128 + int(stopped)
    return signals.exit_code or 0


class Checkpoints:
    """Where the run's checkpoints go, and whether this process writes them (in a data-parallel
    run every rank takes the state, a collective, and rank 0 writes it)."""

    def __init__(self, directory: Path | None, writes: bool):
        self.directory, self.writes = directory, writes

    def save(self, trainer: Trainer) -> Path:
        state = trainer.state_dict()
        if not self.writes:
            return self.directory / CHECKPOINT_NAME
        return save_checkpoint(state, self.directory, keep=trainer.cfg.keep_checkpoints)


def trim_metrics(path: Path, epoch: int) -> int:
    """Make the metrics file of a run resumed at ``epoch`` read as one run; returns the lines dropped.

    A run killed after its last checkpoint wrote the records of later epochs, which the resumed
    run writes again; a run stopped by its budget or a signal wrote a summary in the middle; a
    kill mid-write leaves a torn last line. Those are dropped (the file is rewritten atomically,
    with a note on stderr saying what went); every other line is kept as it was."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kinds = [_line_kind(line, epoch) for line in lines]
    dropped = [k for k in kinds if k != "kept"]
    if dropped:
        tmp = path.with_name(f".{path.name}.trim")
        tmp.write_text("".join(line for line, k in zip(lines, kinds) if k == "kept"), encoding="utf-8")
        os.replace(tmp, path)
        what = ", ".join(
            f"{k} x{dropped.count(k)}" for k in ("later epoch", "earlier summary", "torn line") if k in dropped
        )
        print(
            f"fastpg: resume: {path} continues from the checkpoint's epoch {epoch} (removed: {what})", file=sys.stderr
        )
    return len(dropped)


def _line_kind(line: str, epoch: int) -> str:
    """Whether a metrics line belongs to the run continued at ``epoch`` ("kept"), or why not."""
    if not line.endswith("\n"):
        return "torn line"  # a kill mid-write
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return "torn line"
    if not isinstance(record, dict):
        return "kept"
    if record.get("summary"):
        return "earlier summary"
    late = isinstance(record.get("epoch"), int) and record["epoch"] > epoch
    return "later epoch" if late else "kept"


def _resume_state(cfg: Config) -> dict[str, Any] | None:
    """The checkpoint to continue (``cfg.resume``), checked against the config; None without one."""
    if cfg.resume is None:
        return None
    state = load_checkpoint(cfg.resume)
    check_compatible(state["config"], cfg, cfg.resume / CHECKPOINT_NAME)
    return state


def _final_evaluation(trainer: Trainer, *, interrupted: bool) -> dict[str, Any]:
    """The evaluation that confirmed the target, else a fresh one (none after a signal)."""
    cfg = trainer.cfg
    if trainer.target.evaluation is not None:
        return trainer.target.evaluation
    if cfg.eval_episodes and not interrupted:
        if not cfg.quiet:
            print(f"fastpg: evaluating {cfg.eval_episodes} episodes...", file=sys.stderr, flush=True)
        return trainer.evaluate(cfg.eval_episodes, deterministic=cfg.eval_deterministic)
    return {}


def _summary(
    trainer: Trainer,
    evaluation: dict[str, Any],
    *,
    start_epoch: int,
    checkpoint: Path | None,
    exit_code: int,
    stop_reason: str | None,
) -> dict[str, Any]:
    cfg, c = trainer.cfg, trainer.counters
    target = trainer.target.target
    eval_mean = evaluation.get("eval_return_mean")
    solved = None if target is None or eval_mean is None else eval_mean >= target
    summary = {
        "summary": True,
        "env": cfg.env,
        "backend": trainer.backend,
        "device": str(trainer.device),
        "epoch": trainer.fused.kind if trainer.fused is not None else "generic",
        "seed": cfg.seed,
        "target_return": target,
        "solved": solved,
        "stop_reason": stop_reason,
        "time_to_solve_s": c.wall_s if solved else None,
        "env_steps_to_solve": c.env_steps if solved else None,
        "train_wall_s": c.wall_s,
        "env_steps": c.env_steps,
        "reset_steps": c.total_steps - c.env_steps,
        "epochs": c.epoch,
        "epochs_this_run": c.epoch - start_epoch,
        "episodes": c.episodes,
        "sps": c.env_steps / c.wall_s if c.wall_s > 0 else None,
        "return_mean_100": trainer.window.mean_return(),
        "skipped_updates": c.skipped_updates,
        "target_checks": trainer.target.checks,
        "resumed_from": str(cfg.resume) if cfg.resume is not None else None,
        "restarts": c.restarts,  # times this run continued by itself after a failure (--resume auto, torchrun)
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "exit_code": exit_code,
        **evaluation,
    }
    return {key: rounded(value) for key, value in summary.items()}
