"""The Trainer: ``epoch()`` is one pass down the straight line, ``run()`` repeats it.

    env --collect--> storage [T, N] --reward_to_go--> ret --reinforce_loss--> loss --> Adam

Each step lives in its own module (``rollout``, ``returns``, ``loss``, ``update``); evaluation and
the stop rule in ``evaluation``; files, signals and the summary of a whole run in ``run``. The
Trainer ties them together and owns the state of a run: env, policy, optimizer, storage, carry,
generator and counters.

Unfinished episodes. At the end of an epoch some episodes are still running, and the return of
their steps is not known yet. ``unfinished="mask"`` (default) leaves those steps out of this update:
every return in the loss is a full Monte-Carlo return, so each term is unbiased, but steps close to
an episode's end are kept more often than early ones (an episode that starts late in the epoch only
contributes if it is short), which under-weights the early states of long episodes. A T of the
order of the longest episode keeps that effect small (CartPole-v1 default: T = 512 > 500). With a
value network, ``unfinished="bootstrap"`` completes them with ``V(s_T)`` instead: every valid step
counts, at the price of the value network's bias. Truncation (time limit) is an episode end in
both cases.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fastpg._crash import crash_point
from fastpg.checkpoint import check_state
from fastpg.config import Config
from fastpg.distributed import Group
from fastpg.envs import BatchedEnv, Checkpointable, env_from_config, resolve_backend
from fastpg.errors import ConfigError, NonFiniteError
from fastpg.evaluation import EVAL_SEED_OFFSET, TargetCheck, evaluate, evaluation_env
from fastpg.fused import FusedEpoch, KernelCall, fused_problem
from fastpg.graph import GraphedEpoch, graph_problem
from fastpg.loss import SumAcross
from fastpg.metrics import EpisodeWindow, PhaseTimer
from fastpg.placement import DeviceChoice, choose_device, choose_threads, collect_threads, threads
from fastpg.policy import MLPPolicy
from fastpg.preflight import (
    check_config,
    check_env,
    check_env_interface,
    check_policy,
    is_batched_env,
    resolve_device,
)
from fastpg.rollout import Carry, collect, finished_episodes, init_carry, nonfinite_envs
from fastpg.storage import allocate_storage
from fastpg.update import UpdateSettings, reinforce_update

__all__ = ["Trainer", "Counters", "EpochData", "Evaluation"]


class EpochData(NamedTuple):
    """What one epoch's collect says, before the update: the episodes that ended (their returns and
    lengths, in the order they ended), the valid steps, the env copies with a non-finite reward or
    observation, and (if any) the skipped update's reason."""

    returns: list[float]
    lengths: list[int]
    valid_steps: Tensor | int
    nonfinite_envs: int
    bad_data: str | None


@dataclass
class Counters:
    """Progress of a run (saved in checkpoints)."""

    epoch: int = 0
    env_steps: int = 0  # valid steps
    total_steps: int = 0  # valid + NEXT_STEP reset steps (reset_steps = total - valid)
    episodes: int = 0
    wall_s: float = 0.0  # training time: collect + update, evaluation excluded
    skipped_updates: int = 0  # updates skipped for non-finite values
    restarts: int = 0  # times the run was restarted after a failure and continued (fastpg.run)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Counters:
        """The counters saved in a checkpoint's ``state`` (see ``Trainer.state_dict``)."""
        return cls(
            epoch=int(state["epoch"]),
            env_steps=int(state["env_steps"]),
            total_steps=int(state["total_steps"]),
            episodes=int(state["episodes"]),
            wall_s=float(state["wall_s"]),
            skipped_updates=int(state.get("skipped_updates", 0)),
            restarts=int(state.get("restarts", 0)),
        )


class Trainer:
    """Vectorized REINFORCE on one device.

    Args:
        cfg: the run configuration (checked against this machine with ``check_config``).
        env: optional ``BatchedEnv`` to train on (default: built from the config), on the
            training device.
        policy: optional ``nn.Module`` following the policy contract of ``fastpg.policy``
            (default: ``MLPPolicy`` from the config).
        eval_env: where evaluations run (the target check, ``evaluate()``): a ``BatchedEnv``
            (one episode per copy), or a function ``num_episodes -> BatchedEnv`` (closed after
            each evaluation). Default: fresh copies of ``cfg.env``. A trainer given its own ``env``
            needs one too, unless ``cfg.eval_episodes`` is 0: evaluating on ``cfg.env`` would test
            another task.
        group: a data-parallel group (``fastpg.distributed.process_group``, under torchrun): this
            trainer is one rank of the job, stepping its ``Shard`` of ``cfg.num_envs`` (the global
            count) on the group's device (``group.device``: on CUDA, the GPU of its local rank).
            Every rank must then make the same calls in the same order (``run``, ``epoch``,
            ``evaluate``, ``state_dict`` and ``load_state_dict`` are collectives).
        fast_epoch: False never builds a fast epoch (the generic path runs; a population that
            batches its members' epochs itself asks for this).
        device: the device chosen by the caller (``fastpg.placement.DeviceChoice``; a population
            chooses one for all its members); default: ``cfg.device``, ``auto`` by the measured
            rule of ``fastpg.placement.choose_device`` (``device_choice`` says which and why).

    The CPU threads of its calls follow ``cfg.threads`` or the measured rule of
    ``fastpg.placement.choose_threads`` (``thread_choice``, ``threads``), set around each call.

    Where a fast path applies (``cfg.fused``: the fused C++ epoch of ``fastpg.fused`` on CPU, the
    CUDA-graph epoch of ``fastpg.graph`` on a GPU), ``collect`` and ``update`` run it
    (``self.fused``); otherwise the generic path.

    Use ``run()`` to train to the budget or the target, or drive it yourself with ``collect()`` and
    ``update()`` (``epoch()`` is those two, the target check, which may evaluate the policy on
    fresh episodes, and the metrics). Call ``close()`` when done (or use it as a context manager)
    to stop environment workers.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        env: BatchedEnv | None = None,
        policy: nn.Module | None = None,
        eval_env: BatchedEnv | Callable[[int], BatchedEnv] | None = None,
        group: Group | None = None,
        fast_epoch: bool = True,
        device: DeviceChoice | None = None,
    ):
        if env is not None:
            check_env_interface(env)
        check_config(cfg, env=env)
        self.cfg = cfg
        if device is None and group is not None:
            device = DeviceChoice(group.device, "data-parallel: the rank's device")
        elif device is None and env is not None:
            device = DeviceChoice(resolve_device(cfg.device), "--device (the trainer was given its env)")
        self.device_choice = device if device is not None else choose_device(cfg)
        self.device = self.device_choice.device
        self.group = group
        self.shard = group.shard(cfg.num_envs) if group is not None else None
        num_envs = self.shard.size if self.shard is not None else cfg.num_envs  # the env copies stepped here
        self.env = env if env is not None else self._make_env(num_envs)
        try:
            info = self.env.info
            check_env(cfg, self.env, self.device, num_envs)
            self.eval_env = _evaluation_source(cfg, env, eval_env)
            self.env_given = env is not None
            self.policy = (policy if policy is not None else MLPPolicy.from_config(cfg, info)).to(self.device)
            if group is not None:
                group.broadcast_parameters(self.policy)  # identical on every rank from the start
            self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
            self.settings = UpdateSettings.from_config(cfg)
            self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
            self.buf = allocate_storage(info, cfg.num_steps, num_envs, self.device)
            self.carry: Carry = init_carry(self.env, cfg.seed)
            if policy is not None:
                check_policy(self.policy, info, self.carry.obs)
            # The fast path where one applies (None: the generic path): compiled C++ on CPU, a
            # captured CUDA graph on a GPU (one process only).
            self.fused: FusedEpoch | GraphedEpoch | None = None
            if fast_epoch:
                self.fused = FusedEpoch.create(cfg, self.env, self.policy, self.device)
            if fast_epoch and self.fused is None and group is None:
                self.fused = GraphedEpoch.create(cfg, self, self.device)
            # The CPU threads of this trainer's calls (set around each, then put back).
            self.thread_choice = choose_threads(
                cfg, self.policy, fused=isinstance(self.fused, FusedEpoch), device=self.device
            )
            self.threads = self.thread_choice.count
        except BaseException:
            self.env.close()
            raise
        target = cfg.target_return if cfg.target_return is not None else info.reward_threshold
        self.target = TargetCheck(target, cfg.eval_episodes)
        self.window = EpisodeWindow(100)
        self.counters = Counters()
        self.timer = PhaseTimer(self.device)
        self.bad_updates = 0  # consecutive updates skipped for non-finite values
        self.stop_reason: str | None = None

    def epoch_notice(self) -> str:
        """One line: which epoch runs this trainer (``fused``, ``cuda-graph`` or ``generic``) and why."""
        if isinstance(self.fused, FusedEpoch):
            return f"epoch: fused (compiled collect and update; env kernel {self.fused.env_kernel.describe()})"
        if self.fused is not None:
            return f"epoch: {self.fused.kind} (the collect and the update captured in one CUDA graph)"
        if self.device.type == "cpu":
            why = fused_problem(self.cfg, self.env, self.policy, self.device) or "its kernels could not be built here"
            return f"epoch: generic (torch ops; the fused epoch does not apply: {why})"
        why = graph_problem(self.cfg, self.env, self.policy, self.device) if self.group is None else "data-parallel"
        return f"epoch: generic (torch ops; the CUDA graph does not apply: {why})"

    @property
    def backend(self) -> str:
        """The backend stepping this trainer's copies: ``cfg.backend`` with ``auto`` resolved for
        the copies stepped here (a data-parallel rank's share), as ``_make_env`` resolved it."""
        return resolve_backend(self.cfg.env, self.cfg.backend, self.env.num_envs)

    def _make_env(self, num_envs: int) -> BatchedEnv:
        """The env of ``cfg``: in a data-parallel run this rank's shard of the copies, drawing
        what the whole env draws (``fastpg.distributed``)."""
        env = env_from_config(self.cfg, self.device, num_envs)
        if self.shard is not None and hasattr(env, "set_shard"):
            env.set_shard(self.shard.lo, self.shard.total, self.group.counts_before)
        return env

    # -- the straight line ---------------------------------------------------------------------
    def collect(self) -> None:
        """Fill the storage with T steps of every env (no gradients)."""
        with threads(collect_threads(self.threads, self.env)):
            if self.fused is not None:
                self.carry = self.fused.collect(self.buf, self.carry, self.generator)
            else:
                rows = (self.shard.lo, self.shard.total) if self.shard is not None else None
                self.carry = collect(self.env, self.policy, self.buf, self.carry, self.generator, rows=rows)

    def update(self, *, apply: bool = True, bad_data: str | None = None) -> dict[str, torch.Tensor]:
        """Returns, loss and one optimizer step over the stored epoch; returns detached stats.

        With ``apply=False`` everything is computed and reported but the parameters are left
        unchanged (the epoch whose policy confirmed the target). An update with a non-finite
        loss, gradient or parameter is skipped, and so is one whose epoch holds non-finite env
        data (``bad_data`` names it; masked steps could otherwise hide it from the loss);
        ``max_bad_updates`` of them in a row raise ``NonFiniteError``.
        """
        apply = apply and bad_data is None
        # Data-parallel runs sum the update across the ranks (the CUDA graph is a one-process path).
        across = {"sum_across": self._sum_across} if self.group is not None else {}
        self.schedule_lr()
        with threads(self.threads):
            if self.fused is not None:
                stats, bad = self.fused.update(
                    self.optimizer, self.buf, self.settings, apply=apply, last_obs=self.carry.obs, **across
                )
            else:
                stats, bad = reinforce_update(
                    self.policy, self.optimizer, self.buf, self.carry.obs, self.settings, apply=apply, **across
                )
            if apply and bad is None:
                self.merge_observations(**across)
        return self.record_update(stats, bad, bad_data)

    def merge_observations(self, sum_across: SumAcross | None = None) -> None:
        """``obs_norm``: merge the epoch's valid observations into the policy's statistics, after
        its update step (the epoch acted and was differentiated with the statistics before it).
        Called by ``update``, and by a population for each member whose step it applied."""
        normalizer = getattr(self.policy, "obs_normalizer", None)
        if normalizer is not None:
            normalizer.update(self.buf["obs"], self.buf["valid"], sum_across)

    def schedule_lr(self) -> None:
        """``lr_schedule="linear"``: the learning rate of this update, ``lr`` times the share of
        the budget left (env steps, or epochs where ``max_epochs`` ends sooner), from the counters,
        so a resumed run continues the same schedule."""
        if self.cfg.lr_schedule != "linear":
            return
        done = self.counters.env_steps / self.cfg.max_env_steps
        if self.cfg.max_epochs is not None:
            done = max(done, self.counters.epoch / self.cfg.max_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * max(0.0, 1.0 - done)

    def record_update(
        self, stats: dict[str, Tensor], bad: str | None, bad_data: str | None = None
    ) -> dict[str, Tensor]:
        """Count an update computed for this run (by ``update``, or for many runs at once by a
        population): a skipped one (``bad``, the non-finite quantity, or ``bad_data``) adds to the
        skipped updates, and ``max_bad_updates`` of them in a row raise ``NonFiniteError``."""
        if bad_data is not None:
            bad = bad_data
            stats["skipped"] = torch.ones_like(stats["skipped"])
        if bad is None:
            self.bad_updates = 0
            return stats
        self.bad_updates += 1
        self.counters.skipped_updates += 1
        if self.bad_updates >= self.cfg.max_bad_updates:
            raise NonFiniteError(
                f"epoch {self.counters.epoch + 1}: {self.bad_updates} updates in a row had a non-finite "
                f"{bad} and were skipped (--max-bad-updates {self.cfg.max_bad_updates}); the parameters are "
                "those of the last good update"
            )
        return stats

    def epoch(self) -> dict[str, Any]:
        """One epoch: collect, check the target, update; returns its metrics as Python numbers.

        When the latest 100 finished episodes reach the target return, the policy that played them
        is evaluated on ``eval_episodes`` fresh episodes (``TargetCheck``; not training time). If
        the evaluation confirms the target, this epoch's update is computed and reported but not
        applied, and training stops with the evaluated policy (an update after the check would be
        untested).
        """
        timer = self.timer.reset()
        # ENV -> STORAGE
        with timer("collect"):
            self.collect()
            data = self.collected()  # one host sync
        crash_point("epoch")  # the reliability tests' kill point (fastpg._crash; nothing otherwise)
        confirmed = self.target(self.window, self._evaluate_for_target)
        # STORAGE -> RETURNS -> LOSS -> OPTIMIZER
        with timer("update"):
            stats = self.update(apply=not confirmed, bad_data=data.bad_data)
        return self.end_epoch(stats, data)

    def collected(self, epoch_data: tuple | None = None) -> EpochData:
        """What the epoch just collected says (the episodes that ended, the valid steps, the env
        copies with non-finite data); the finished episodes enter the window. ``epoch_data``:
        those four, as ``_epoch_data`` reads them, where a population read them for many members
        at once."""
        returns, lengths, valid_steps, bad_envs = self._epoch_data() if epoch_data is None else epoch_data
        self.window.extend(returns, lengths)
        self._warn_nonfinite_envs(bad_envs)
        bad_data = f"reward or observation (env {_listed(bad_envs)})" if bad_envs else None
        return EpochData(returns, lengths, valid_steps, len(bad_envs), bad_data)

    def _epoch_data(self) -> tuple[list[float], list[int], Tensor | int, list[int]]:
        """Return and length of the episodes that ended this epoch, the valid steps, and the env
        copies with a non-finite reward or observation; in a data-parallel run every rank's,
        gathered in one-process order (global copy indices)."""
        if self.fused is not None and self.group is None:
            return self.fused.epoch_data(self.buf)
        bad = nonfinite_envs(self.buf)  # one more host sync
        if self.group is not None:
            return self.group.epoch_data(self.buf, self.shard, bad)
        return *finished_episodes(self.buf), self.buf["valid"].sum(), bad

    def _sum_across(self, tensors: list[Tensor]) -> None:
        self.group.sum_(tensors, "the all-reduce of the update")

    def _warn_nonfinite_envs(self, bad: list[int]) -> None:
        """Warn about the env copies with a non-finite reward or observation this epoch (their NaN
        / inf reaches the loss, and the update is skipped); rank 0 alone in a data-parallel run."""
        if bad and (self.group is None or self.group.rank == 0):
            warnings.warn(
                f"epoch {self.counters.epoch + 1}: {self.env.info.env_id} returned a non-finite reward or "
                f"observation in env cop{'ies' if len(bad) > 1 else 'y'} {_listed(bad)}",
                RuntimeWarning,
                stacklevel=3,
            )

    def end_epoch(
        self, stats: dict[str, torch.Tensor], data: EpochData, seconds: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Advance the counters and return the epoch's metrics (one host sync for all the scalars).
        ``seconds``: the epoch's ``collect`` and ``update`` time (default: this trainer's timer; a
        population passes the time of its batched epoch)."""
        names = list(stats)
        if self.device.type == "cpu":  # no sync to save: a float per scalar (~1 us, not ~8 for the stack)
            values = [float(stats[k]) for k in names] + [float(data.valid_steps)]
        else:
            valid = torch.as_tensor(data.valid_steps, device=self.device).double()
            # float64: counts stay exact far beyond 2**24 steps per epoch.
            values = torch.stack([stats[k].double() for k in names] + [valid]).tolist()
        s = dict(zip(names, values[:-1]))
        epoch_steps = int(values[-1])
        c, ret, length, n = self.counters, data.returns, data.lengths, len(data.returns)
        seconds = dict(self.timer.seconds) if seconds is None else seconds
        elapsed = seconds.get("collect", 0.0) + seconds.get("update", 0.0)
        nonfinite = data.nonfinite_envs
        c.epoch += 1
        c.env_steps += epoch_steps
        c.total_steps += self.cfg.batch_size
        c.episodes += n
        c.wall_s += elapsed
        return {
            "epoch": c.epoch,
            "env_steps": c.env_steps,
            "wall_s": c.wall_s,
            "sps": epoch_steps / elapsed if elapsed > 0 else math.nan,
            "episodes": n,
            "return_mean": sum(ret) / n if n else None,
            "return_mean_100": self.window.mean_return(),
            "length_mean": sum(length) / n if n else None,
            **{k: s[k] for k in ("loss", "policy_loss", "value_loss", "entropy", "grad_norm")},
            "update_skipped": bool(s["skipped"]),
            "skipped_updates": c.skipped_updates,
            "nonfinite_envs": nonfinite,
            "target_checks": self.target.checks,
            "mask_frac": s["mask_frac"],
            "collect_s": seconds.get("collect", 0.0),
            "update_s": seconds.get("update", 0.0),
            # data-parallel runs: seconds of the epoch spent in collectives (waiting included)
            **({"comm_s": self.group.take_seconds()} if self.group is not None else {}),
        }

    # -- driving ---------------------------------------------------------------------------------
    def run(self, should_stop: Callable[[], str | None] | None = None) -> Iterator[dict[str, Any]]:
        """Train until the budget is spent or the target is reached, yielding each epoch's metrics.

        ``stop_reason`` is set before the last epoch's metrics are yielded: ``"target_return"``,
        ``"max_env_steps"`` or ``"max_epochs"``, or what ``should_stop()`` returned (``train`` uses
        it for Ctrl-C and SIGTERM, which end the run between epochs).
        """
        if should_stop is not None and self.group is not None:  # any rank's request stops every rank
            should_stop = _agreed(self.group, should_stop)
        self.stop_reason = self.check_stop(should_stop)
        while self.stop_reason is None:
            metrics = self.epoch()
            self.stop_reason = self.check_stop(should_stop)
            yield metrics
            self.stop_reason = self.stop_reason or self.check_stop(should_stop)

    def check_stop(self, should_stop: Callable[[], str | None] | None = None) -> str | None:
        """Why this run stops now (its target confirmed, ``should_stop()``'s request, a budget spent), or None."""
        if self.target.confirmed:
            return "target_return"
        if should_stop is not None and (requested := should_stop()):
            return requested
        if self.counters.env_steps >= self.cfg.max_env_steps:
            return "max_env_steps"
        if self.cfg.max_epochs is not None and self.counters.epoch >= self.cfg.max_epochs:
            return "max_epochs"
        return None

    def evaluate(
        self, num_episodes: int = 100, *, deterministic: bool = False, seed: int | None = None
    ) -> dict[str, float]:
        """Mean return of fresh episodes, one per env copy (see ``evaluate``): ``num_episodes``
        copies of ``cfg.env``, or from the ``eval_env`` function given to the trainer; an
        ``eval_env`` env is used as it is (its ``num_envs`` episodes) and left open. Sampled by the
        fused epoch's compiled collect where it runs (the same episodes and draws). In a
        data-parallel run rank 0 evaluates and every rank gets its result (one verdict)."""
        if self.group is not None:
            here = self._evaluate_here(num_episodes, deterministic, seed) if self.group.rank == 0 else None
            return self.group.broadcast(here, "the broadcast of the evaluation")
        return self._evaluate_here(num_episodes, deterministic, seed)

    def _evaluate_here(self, num_episodes: int, deterministic: bool, seed: int | None) -> dict[str, float]:
        with threads(self.threads), self.evaluation(num_episodes, deterministic=deterministic, seed=seed) as ev:
            return ev.run()

    def evaluation(self, num_episodes: int, *, deterministic: bool = False, seed: int | None = None) -> Evaluation:
        """The evaluation ``evaluate`` runs in this process, prepared (its env built and seeded):
        ``run()`` plays it; where the fused epoch's compiled collect plays it, ``call`` is that
        kernel call (a population runs many in one batched call). A context manager: closes the env
        where it built one."""
        owned = True
        if self.eval_env is None and self.env_given:
            raise ConfigError("eval_env", f"this trainer was given its own env: evaluating needs one ({EVAL_ENV_HELP})")
        if self.eval_env is None:
            env = evaluation_env(self.cfg, self.device, num_episodes)
        elif is_batched_env(self.eval_env):
            env, owned = self.eval_env, False  # the caller's: reused, not closed
        else:
            env = self.eval_env(num_episodes)
            check_env_interface(env)
        seed = self.cfg.seed + EVAL_SEED_OFFSET if seed is None else seed
        try:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            call = None
            if isinstance(self.fused, FusedEpoch) and not deterministic and type(env) is type(self.env):
                call = self.fused.evaluation_call(env, seed, generator)
            play = partial(evaluate, env, self.policy, seed=seed, deterministic=deterministic, generator=generator)
        except BaseException:
            if owned:
                env.close()
            raise
        return Evaluation(env, owned, call, play, seed=seed, generator=generator, deterministic=deterministic)

    def _evaluate_for_target(self) -> dict[str, float]:
        return self.evaluate(**self.target_evaluation())

    def target_evaluation(self) -> dict[str, Any]:
        """The arguments of the evaluation that checks the target after this epoch's collect: its
        episodes are seeded by the epoch, so the same policy at the same epoch meets the same ones."""
        return {
            "num_episodes": self.cfg.eval_episodes,
            "deterministic": self.cfg.eval_deterministic,
            "seed": self.cfg.seed + EVAL_SEED_OFFSET + self.counters.epoch + 1,
        }

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run (see ``fastpg.checkpoint``); plain values and
        tensors only. Take it between epochs. In a data-parallel run (every rank calls it) the env
        copies' state is gathered: the state of the whole run, as one process would hold it."""
        carry = {f.name: getattr(self.carry, f.name).cpu() for f in dataclasses.fields(Carry)}
        env = self.env.state_dict() if isinstance(self.env, Checkpointable) else None
        if self.group is not None:
            self.group.check_identical(self._replicated(), "the checkpoint")
            carry = self.group.gather_tensors(carry, dict.fromkeys(carry, 0), "the gather of the checkpoint")
            dims = getattr(self.env, "SHARD_DIMS", None)
            if env is not None and dims is not None:
                env = {**env, **self.group.gather_tensors(env, dims, "the gather of the checkpoint")}
            else:  # an env whose state cannot be split: re-seeded on resume, as a gymnasium one
                env = None
        return {
            "config": self.cfg.to_dict(),
            **dataclasses.asdict(self.counters),
            "target_checks": self.target.checks,
            "window": {"returns": list(self.window.returns), "lengths": list(self.window.lengths)},
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "carry": carry,
            "env": env,
        }

    def _replicated(self) -> dict[str, bytes]:
        """What every rank of a data-parallel run holds identically, as bytes: the parameters, the
        optimizer's moments and the generators (the env's too: every rank draws for all copies)."""
        tensors = {
            "parameters": [p.detach() for p in self.policy.parameters()],
            "optimizer state": [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)],
            "sampling generator": [self.generator.get_state()],
        }
        if isinstance(getattr(self.env, "generator", None), torch.Generator):
            tensors["env generator"] = [self.env.generator.get_state()]
        return {
            k: b"".join(t.cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() for t in v)
            for k, v in tensors.items()
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str = "the state") -> None:
        """Continue the run saved in ``state`` (check its config first with
        ``checkpoint.check_compatible``; its contents are checked here, ``ConfigError`` naming
        ``source`` and the problem, before anything is changed).

        A native env gets its exact state back, so the run goes on bit for bit as if never stopped
        (same device). A gymnasium env's state cannot be restored: it is re-seeded with
        ``seed + epoch`` and the episodes that were running are dropped.
        """
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        check_state(state, self.state_dict(), params, source)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the config's learning rate, not the saved one
            group["lr"] = self.cfg.lr
        self.generator.set_state(state["generator"])
        self.counters = Counters.from_state(state)
        self.target.checks = int(state.get("target_checks", 0))
        self.window = EpisodeWindow(self.window.returns.maxlen)
        self.window.extend(list(state["window"]["returns"]), list(state["window"]["lengths"]))
        if state["env"] is not None and isinstance(self.env, Checkpointable):
            env_state, carry = state["env"], state["carry"]
            if self.shard is not None:  # this rank's copies of the whole run's state
                dims = getattr(self.env, "SHARD_DIMS", {})
                env_state = {k: self.shard.take(v, dims[k]) if k in dims else v for k, v in env_state.items()}
                carry = {k: self.shard.take(v) for k, v in carry.items()}
            self.env.load_state_dict(env_state)
            self.carry = Carry(**{k: v.to(self.device) for k, v in carry.items()})
        else:
            self.carry = init_carry(self.env, (self.cfg.seed + self.counters.epoch) % 2**32)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Evaluation:
    """One prepared evaluation (``Trainer.evaluation``): its env, seed, generator and choice of
    action; ``call``, the fused kernel call that plays it (None where the generic
    ``fastpg.evaluate`` does); ``run()`` to play it here; ``close()``."""

    def __init__(self, env: BatchedEnv, owned: bool, call: KernelCall | None, play: Callable[[], dict[str, float]],
                 *, seed: int, generator: torch.Generator, deterministic: bool):  # fmt: skip
        self.env, self.owned, self.call, self._play = env, owned, call, play
        self.seed, self.generator, self.deterministic = seed, generator, deterministic

    def run(self) -> dict[str, float]:
        if self.call is None:
            with threads(collect_threads(torch.get_num_threads(), self.env)):
                return self._play()
        return self.call.run()

    def close(self) -> None:
        if self.owned:
            self.env.close()

    def __enter__(self) -> Evaluation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _agreed(group: Group, should_stop: Callable[[], str | None]) -> Callable[[], str | None]:
    """``should_stop`` asked on every rank, the first rank's request answered on all of them."""
    return lambda: group.agree(should_stop())


def _listed(indices: list[int], shown: int = 10) -> str:
    """'1, 5, 7' (the first ``shown``, then how many more)."""
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(map(str, indices[:shown])) + more


EVAL_ENV_HELP = "an env, or a function num_episodes -> env"


def _evaluation_source(
    cfg: Config, env: BatchedEnv | None, eval_env: BatchedEnv | Callable[[int], BatchedEnv] | None
) -> BatchedEnv | Callable[[int], BatchedEnv] | None:
    """Where evaluations run: ``eval_env`` (an env, or a function ``num_episodes -> env``), else
    fresh copies of ``cfg.env``; a trainer given its own env must be given one too (evaluating on
    ``cfg.env`` would be another task), unless it never evaluates (``eval_episodes=0``)."""
    if eval_env is not None:
        if is_batched_env(eval_env):
            check_env_interface(eval_env)
        elif not callable(eval_env):
            raise ConfigError("eval_env", f"must be a BatchedEnv or a function num_episodes -> env, got {eval_env!r}")
        return eval_env
    if env is not None and cfg.eval_episodes > 0:
        raise ConfigError(
            "eval_env",
            f"the trainer was given its own env ({type(env).__name__}), so it cannot evaluate on fresh copies of "
            f"cfg.env ({cfg.env}): pass eval_env ({EVAL_ENV_HELP}), or set eval_episodes=0 (the training "
            "window alone then decides the target)",
        )
    return None
