"""The trainer: ``epoch()`` is one pass down the straight line, ``run()`` repeats it.

    env --collect--> storage [T, N] --reward_to_go--> ret [T, N] --reinforce_loss--> loss --> Adam

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

import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastpg.checkpoint import CHECKPOINT_NAME, check_compatible, config_to_dict, load_checkpoint, save_checkpoint
from fastpg.config import Config, ConfigError
from fastpg.envs import BatchedEnv, make_env, resolve_backend
from fastpg.interrupts import StopOnSignals
from fastpg.loss import advantage, surrogate
from fastpg.metrics import ConsoleProgress, EpisodeWindow, JsonlSink, jsonable, synchronize
from fastpg.policy import MLPPolicy, mode_action, sample_action
from fastpg.returns import episode_complete_mask, reward_to_go
from fastpg.rollout import Carry, collect, init_carry
from fastpg.storage import allocate_storage

__all__ = ["Trainer", "train", "evaluate", "resolve_device", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a non-finite loss, gradient or parameter."""

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs are seeded apart from the training envs


# Entries per slice of the update: about this many bytes per float32 activation tensor. Measured on
# the 2-core CPU (2.1M entries): MLP 32-tanh 1.65M samples/s in one pass, 3.1-3.2M in slices of
# 16k-64k rows; MLP 128-relu 0.30M in one pass, 1.22M in slices of 16k rows (0.51M at 64k).
UPDATE_SLICE_BYTES = 8 * 2**20


def update_rows(hidden_sizes: tuple[int, ...]) -> int:
    """Rows per update slice for an MLP with these hidden widths (at least 1024)."""
    widest = max(hidden_sizes, default=1)
    return max(1024, UPDATE_SLICE_BYTES // (4 * widest))


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; anything else as ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_against_env(cfg: Config, env: BatchedEnv, device: torch.device) -> None:
    info = env.info
    if env.num_envs != cfg.num_envs:
        raise ConfigError("num_envs", f"is {cfg.num_envs} but the env given has {env.num_envs} copies")
    if torch.device(env.device) != device:
        raise ConfigError("device", f"is {device} but the env given returns tensors on {env.device}")
    if info.discrete and cfg.log_std_init is not None:
        raise ConfigError(
            "log_std_init",
            f"applies to Box (continuous) action spaces only; {info.env_id} has "
            f"{info.describe_actions()} actions (got log_std_init={cfg.log_std_init})",
        )


class Trainer:
    """Vectorized REINFORCE on one device.

    Args:
        cfg: the run configuration.
        env: optional ``BatchedEnv`` to train on (default: built from ``cfg.env`` / ``cfg.backend``).
        policy: optional ``nn.Module`` following the policy contract of ``fastpg.policy``
            (default: ``MLPPolicy`` from the config).

    Use ``run()`` to train to the budget or the target, or drive it yourself with ``collect()`` and
    ``update()`` (``epoch()`` is exactly those two plus the metrics). Call ``close()`` when done (or
    use it as a context manager) to stop environment workers.
    """

    def __init__(self, cfg: Config, *, env: BatchedEnv | None = None, policy: nn.Module | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.env = env if env is not None else make_env(
            cfg.env,
            cfg.num_envs,
            backend=cfg.backend,
            device=self.device,
            dtype=cfg.torch_env_dtype,
            fused=cfg.env_kernel == "cpp",
        )
        try:
            _check_against_env(cfg, self.env, self.device)
            info = self.env.info
            if policy is None:
                # Initialize from the run seed without touching the global RNG.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed)
                    policy = MLPPolicy(
                        info,
                        cfg.hidden_sizes,
                        cfg.activation,
                        value_head=cfg.baseline == "value",
                        log_std_init=0.0 if cfg.log_std_init is None else cfg.log_std_init,
                    )
            self.policy = policy.to(self.device)
            self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr)
            self.update_rows = update_rows(cfg.hidden_sizes)
            self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
            self.buf = allocate_storage(info, cfg.num_steps, cfg.num_envs, self.device)
            self.carry: Carry = init_carry(self.env, cfg.seed)
        except BaseException:
            self.env.close()
            raise
        self.target_return = cfg.target_return if cfg.target_return is not None else info.reward_threshold
        self.window = EpisodeWindow(100)
        self.epoch_count = 0
        self.env_steps = 0  # valid steps
        self.total_steps = 0  # valid + NEXT_STEP reset steps (reported as reset_steps)
        self.episodes = 0
        self.wall_s = 0.0  # training time: collect + update, evaluation excluded
        self.target_reached = False  # the window and an evaluation reached the target (see epoch)
        self.target_checks = 0  # evaluations run because the window reached the target
        self.last_eval: dict[str, float] | None = None  # the evaluation that confirmed the target
        self.bad_updates = 0  # consecutive updates skipped for non-finite values
        self.skipped_updates = 0
        self.stop_reason: str | None = None

    # -- the straight line ---------------------------------------------------------------------
    def collect(self) -> None:
        """Fill the storage with T steps of every env (no gradients)."""
        self.carry = collect(self.env, self.policy, self.buf, self.carry, self.generator)

    def update(self, *, apply: bool = True) -> dict[str, torch.Tensor]:
        """Returns, loss and one optimizer step over the stored epoch; returns detached stats.

        With ``apply=False`` the loss and gradient norm are computed and reported but the
        parameters are left unchanged (used for the epoch that reaches the target return).
        """
        cfg, buf, policy = self.cfg, self.buf, self.policy
        bootstrap = None
        if cfg.unfinished == "bootstrap":
            with torch.no_grad():
                bootstrap = policy.value(self.carry.obs)  # [N]: V(s_T) for unfinished episodes
        ret = reward_to_go(buf["reward"], buf["done"], cfg.gamma, bootstrap=bootstrap, out=buf["ret"])
        mask = buf["valid"]  # [T, N]: reset steps never enter the loss
        if cfg.unfinished == "mask":
            mask = mask & episode_complete_mask(buf["done"])
        # The loss is a sum over entries divided by the batch's count, so it runs slice by slice
        # (self.update_rows entries at a time), accumulating gradients: one batched pass over
        # T x N entries allocates activations of hundreds of MB, and fresh memory that size costs
        # more in page faults than the arithmetic (measured 2-4x; benchmarks/NOTES.md).
        obs, action = buf["obs"].flatten(0, 1), buf["action"].flatten(0, 1)
        ret_flat, mask_flat = ret.flatten(), mask.flatten()
        # Only the masked entries enter the loss: the others add exactly zero to it and to its
        # gradient, so they are left out of the passes below (one host sync for their count).
        mask_frac = mask_flat.float().mean()
        keep = mask_flat.nonzero().squeeze(1)
        if keep.numel() < mask_flat.numel():
            obs, action, ret_flat = obs[keep], action[keep], ret_flat[keep]
            mask_flat = torch.ones_like(mask_flat[: keep.numel()])
        rows = self.update_rows
        value_all = None
        if cfg.baseline == "value":  # the baseline enters the advantage of every slice: one no-grad pass first
            with torch.no_grad():
                value_all = torch.cat([policy.value(obs[i : i + rows]) for i in range(0, obs.shape[0], rows)])
        adv, stats = advantage(ret_flat, mask_flat, baseline=cfg.baseline, normalize=cfg.normalize_returns, value=value_all)
        count = mask_flat.to(ret.dtype).sum().clamp_min(1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=ret.device)
        zero = torch.zeros((), device=ret.device)
        parts_total = {"policy_loss": zero, "value_loss": zero, "entropy": zero}  # stay 0 if no entry is masked
        for i in range(0, obs.shape[0], rows):
            sl = slice(i, i + rows)
            part, parts = self._slice_loss(obs[sl], action[sl], adv[sl], mask_flat[sl], ret_flat[sl], count)
            part.backward()
            loss += part.detach()
            for k, v in parts.items():
                parts_total[k] = parts_total[k] + v
        stats.update(parts_total)
        stats["mask_frac"] = mask_frac
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), max_norm).to(ret.device)  # CPU 0 when no entry is in the loss
        bad = self._first_nonfinite(loss, grad_norm)  # one host sync per update
        stats["skipped"] = torch.tensor(float(bad is not None), device=ret.device)
        if bad is None:
            self.bad_updates = 0
            if apply:
                self.optimizer.step()
        else:  # never let a NaN / inf reach the optimizer's state or the parameters
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_updates += 1
            self.skipped_updates += 1
            if self.bad_updates >= cfg.max_bad_updates:
                raise NonFiniteError(
                    f"epoch {self.epoch_count + 1}: {self.bad_updates} updates in a row had a non-finite "
                    f"{bad} and were skipped (--max-bad-updates {cfg.max_bad_updates}); the parameters are "
                    "those of the last good update"
                )
        stats["loss"] = loss.detach()
        stats["grad_norm"] = grad_norm.detach()
        return stats

    def _first_nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> str | None:
        """None if loss, gradients and parameters are all finite, else the first that is not."""
        named = list(self.policy.named_parameters())
        checks = [torch.isfinite(loss), torch.isfinite(grad_norm)] + [torch.isfinite(p).all() for _, p in named]
        ok = torch.stack(checks).tolist()
        if all(ok):
            return None
        if not ok[0]:
            return "loss"
        if not ok[1]:
            for name, p in named:
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    return f"gradient (of {name})"
            return "gradient norm"
        return f"parameter ({named[ok.index(False, 2) - 2][0]})"

    def _slice_loss(
        self, obs: torch.Tensor, action: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, ret: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One slice's share of the loss: a batched forward pass and ``surrogate``."""
        cfg, policy = self.cfg, self.policy
        dist = policy(obs)
        return surrogate(
            dist.log_prob(action),
            adv,
            mask,
            count,
            ret=ret,
            value=policy.value(obs) if cfg.baseline == "value" else None,
            entropy=dist.entropy(),
            entropy_coef=cfg.entropy_coef,
            value_coef=cfg.value_coef,
        )

    def epoch(self) -> dict[str, Any]:
        """One epoch: collect, then update; returns its metrics as Python numbers.

        When the latest 100 finished episodes reach the target return, the policy that played them
        is evaluated on ``eval_episodes`` fresh episodes (that time is not training time). If the
        evaluation reaches the target too, the target is confirmed: this epoch's update is computed
        and reported but not applied, and training stops with the evaluated policy (an update after
        the check would be untested). Otherwise the update is applied and training goes on. With
        ``eval_episodes=0`` the window alone decides.
        """
        t0 = time.perf_counter()
        # ENV -> STORAGE
        self.collect()
        finished = self._record_episodes()  # one host sync: the episodes that ended this epoch
        bad_envs = self._nonfinite_envs()  # and one for the env data check
        synchronize(self.device)
        t1 = time.perf_counter()
        confirmed = self._confirm_target()
        t1b = time.perf_counter()
        # STORAGE -> RETURNS -> LOSS -> OPTIMIZER
        stats = self.update(apply=not confirmed)
        synchronize(self.device)
        t2 = time.perf_counter()
        return self._end_epoch(stats, finished, nonfinite_envs=len(bad_envs), collect_s=t1 - t0, update_s=t2 - t1b)

    def _confirm_target(self) -> bool:
        """Evaluate the current policy when the window reaches the target; True if it passes."""
        if not self.window_reached_target():
            return False
        if not self.cfg.eval_episodes:
            self.target_reached = True
            return True
        self.target_checks += 1
        ev = self.evaluate(
            self.cfg.eval_episodes,
            deterministic=self.cfg.eval_deterministic,
            seed=self.cfg.seed + EVAL_SEED_OFFSET + self.epoch_count + 1,
        )
        if ev["eval_return_mean"] >= self.target_return:
            self.target_reached = True
            self.last_eval = ev
        return self.target_reached

    def _nonfinite_envs(self) -> list[int]:
        """Indices of the env copies that produced a non-finite reward or observation this epoch
        (checked once per epoch, not per step); warns naming them. Their NaN / inf reaches the loss,
        so the update skips (see ``update``)."""
        buf = self.buf
        ok = torch.isfinite(buf["reward"]).all(0) & torch.isfinite(buf["obs"]).flatten(2).all(-1).all(0)
        bad = (~ok).nonzero().squeeze(1).tolist()
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            warnings.warn(
                f"epoch {self.epoch_count + 1}: {self.env.info.env_id} returned a non-finite reward or "
                f"observation in env cop{'ies' if len(bad) > 1 else 'y'} {shown}",
                RuntimeWarning,
                stacklevel=3,
            )
        return bad

    def _record_episodes(self) -> tuple[list[float], list[int]]:
        done = self.buf["done"]
        # Finished episodes in chronological order (t-major boolean indexing).
        finished_ret = self.buf["episode_return"][done].tolist()
        finished_len = self.buf["episode_length"][done].tolist()
        self.window.extend(finished_ret, finished_len)
        return finished_ret, finished_len

    def _end_epoch(
        self,
        stats: dict[str, torch.Tensor],
        finished: tuple[list[float], list[int]],
        *,
        nonfinite_envs: int,
        collect_s: float,
        update_s: float,
    ) -> dict[str, Any]:
        buf = self.buf
        finished_ret, finished_len = finished
        names = list(stats)  # one host sync for all the scalars
        # float64: counts stay exact far beyond 2**24 steps per epoch.
        values = torch.stack([stats[k].double() for k in names] + [buf["valid"].sum().double()]).tolist()
        scalars = dict(zip(names, values[:-1]))
        epoch_steps = int(values[-1])
        self.epoch_count += 1
        self.env_steps += epoch_steps
        self.total_steps += buf.numel()
        n = len(finished_ret)
        self.episodes += n
        elapsed = collect_s + update_s
        self.wall_s += elapsed
        return {
            "epoch": self.epoch_count,
            "env_steps": self.env_steps,
            "wall_s": self.wall_s,
            "sps": epoch_steps / elapsed if elapsed > 0 else math.nan,
            "episodes": n,
            "return_mean": sum(finished_ret) / n if n else None,
            "return_mean_100": self.window.mean_return(),
            "length_mean": sum(finished_len) / n if n else None,
            "loss": scalars["loss"],
            "policy_loss": scalars["policy_loss"],
            "value_loss": scalars["value_loss"],
            "entropy": scalars["entropy"],
            "grad_norm": scalars["grad_norm"],
            "update_skipped": bool(scalars["skipped"]),
            "skipped_updates": self.skipped_updates,
            "nonfinite_envs": nonfinite_envs,
            "target_checks": self.target_checks,
            "mask_frac": scalars["mask_frac"],
            "collect_s": collect_s,
            "update_s": update_s,
        }

    # -- driving ---------------------------------------------------------------------------------
    def window_reached_target(self) -> bool:
        """True when the latest 100 finished episodes average at least the target return."""
        return (
            self.target_return is not None
            and self.window.full
            and self.window.mean_return() >= self.target_return
        )

    def solved(self) -> bool:
        """True once the target is confirmed (window and evaluation; see ``epoch``)."""
        return self.target_reached

    def run(self, should_stop: Callable[[], str | None] | None = None) -> Iterator[dict[str, Any]]:
        """Train until the budget is spent or the target is reached, yielding each epoch's metrics.

        ``stop_reason`` is then ``"target_return"``, ``"max_env_steps"`` or ``"max_epochs"``, or
        what ``should_stop()`` returned: it is asked after every epoch (``train`` uses it for
        Ctrl-C and SIGTERM, which end the run between epochs).
        """
        cfg = self.cfg
        self.stop_reason = None
        while True:
            if self.stop_reason:
                pass
            elif should_stop is not None and (requested := should_stop()):
                self.stop_reason = requested
            elif self.env_steps >= cfg.max_env_steps:
                self.stop_reason = "max_env_steps"
            elif cfg.max_epochs is not None and self.epoch_count >= cfg.max_epochs:
                self.stop_reason = "max_epochs"
            if self.stop_reason:
                return
            metrics = self.epoch()
            if self.solved():
                self.stop_reason = "target_return"
            yield metrics

    def evaluate(self, num_episodes: int = 100, *, deterministic: bool = False, seed: int | None = None) -> dict[str, float]:
        """Mean return of ``num_episodes`` fresh episodes (one per env copy; see ``evaluate``)."""
        backend = resolve_backend(self.cfg.env, self.cfg.backend)
        backend = "sync" if backend == "async" else backend  # no need for 100 worker processes
        env = make_env(
            self.cfg.env,
            num_episodes,
            backend=backend,
            device=self.device,
            dtype=self.cfg.torch_env_dtype,
            fused=self.cfg.env_kernel == "cpp",
        )
        seed = self.cfg.seed + EVAL_SEED_OFFSET if seed is None else seed
        try:
            return evaluate(
                env,
                self.policy,
                seed=seed,
                deterministic=deterministic,
                generator=torch.Generator(device=self.device).manual_seed(seed),
            )
        finally:
            env.close()

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run (see ``fastpg.checkpoint``); plain values and
        tensors only. Take it between epochs."""
        env_state = self.env.state_dict() if hasattr(self.env, "state_dict") else None
        return {
            "config": config_to_dict(self.cfg),
            "epoch": self.epoch_count,
            "env_steps": self.env_steps,
            "total_steps": self.total_steps,
            "episodes": self.episodes,
            "wall_s": self.wall_s,
            "target_checks": self.target_checks,
            "skipped_updates": self.skipped_updates,
            "window": {"returns": list(self.window.returns), "lengths": list(self.window.lengths)},
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "carry": {
                "obs": self.carry.obs.cpu(),
                "episode_return": self.carry.episode_return.cpu(),
                "episode_length": self.carry.episode_length.cpu(),
            },
            "env": env_state,
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str = "the checkpoint") -> None:
        """Continue the run saved in ``state`` (``ConfigError`` if this config cannot).

        A native env gets its exact state back, so the run goes on bit for bit as if never stopped
        (same device). A gymnasium env's state cannot be restored: it is re-seeded with
        ``seed + epoch`` and the episodes that were running are dropped.
        """
        check_compatible(state["config"], self.cfg, source)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.epoch_count = int(state["epoch"])
        self.env_steps = int(state["env_steps"])
        self.total_steps = int(state["total_steps"])
        self.episodes = int(state["episodes"])
        self.wall_s = float(state["wall_s"])
        self.target_checks = int(state.get("target_checks", 0))
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.window = EpisodeWindow(self.window.returns.maxlen)
        self.window.extend(list(state["window"]["returns"]), list(state["window"]["lengths"]))
        if state["env"] is not None and hasattr(self.env, "load_state_dict"):
            self.env.load_state_dict(state["env"])
            carry = state["carry"]
            self.carry = Carry(
                obs=carry["obs"].to(self.device),
                episode_return=carry["episode_return"].to(self.device),
                episode_length=carry["episode_length"].to(self.device),
            )
        else:
            self.carry = init_carry(self.env, (self.cfg.seed + self.epoch_count) % 2**32)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate(
    env: BatchedEnv,
    policy: nn.Module,
    *,
    seed: int | None = None,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
) -> dict[str, float]:
    """Run one episode in each of the ``env.num_envs`` copies and report their mean return.

    Actions are sampled from the policy (with ``generator``), or with ``deterministic`` the most
    likely action is taken.

    Stops when every copy has finished its first episode, or after ``max_steps`` steps (default:
    the env's time limit, else 100,000); unfinished episodes then count with their partial return
    and are reported in ``unfinished``.
    """
    N = env.num_envs
    limit = max_steps or env.info.max_episode_steps or 100_000
    obs = env.reset(seed=seed).to(torch.float32)  # policies take float32 (native envs may be float64)
    ret = torch.zeros(N, device=obs.device)
    length = torch.zeros(N, dtype=torch.int64, device=obs.device)
    running = torch.ones(N, dtype=torch.bool, device=obs.device)
    was_training = policy.training
    policy.eval()
    try:
        with torch.inference_mode():
            for _ in range(limit + 1):  # +1: a NEXT_STEP env may not have started yet
                dist = policy(obs)
                action = mode_action(dist) if deterministic else sample_action(dist, generator)
                step = env.step(action)
                live = running & step.valid
                ret += torch.where(live, step.reward, 0.0)
                length += live
                running &= ~(live & step.done)
                obs = step.obs.to(torch.float32)
                if not bool(running.any()):
                    break
    finally:
        policy.train(was_training)
    return {
        "eval_return_mean": ret.mean().item(),
        "eval_return_std": ret.std(unbiased=False).item(),
        "eval_length_mean": length.float().mean().item(),
        "eval_episodes": N,
        "unfinished": int(running.sum().item()),
    }


def _check_outputs(cfg: Config) -> None:
    """Refuse to replace an existing metrics file or checkpoint unless asked to."""
    if cfg.overwrite:
        return
    if cfg.metrics_file is not None and Path(cfg.metrics_file).exists() and cfg.resume is None:
        raise ConfigError(
            "metrics_file",
            f"{cfg.metrics_file} already exists; pass --overwrite to replace it (or --resume DIR to append to it)",
        )
    ckpt = cfg.checkpoint_dir
    if ckpt is not None and (Path(ckpt) / CHECKPOINT_NAME).exists():
        if cfg.resume is None or Path(cfg.resume).resolve() != Path(ckpt).resolve():
            raise ConfigError(
                "checkpoint_dir",
                f"{ckpt} already holds a checkpoint; pass --resume {ckpt} to continue that run or --overwrite to replace it",
            )


def train(cfg: Config, *, policy: nn.Module | None = None) -> dict[str, Any]:
    """Train with ``cfg`` to its budget or target, evaluate, and return the summary.

    Prints progress lines (unless ``cfg.quiet``) and the summary; writes ``cfg.metrics_file``
    (one JSON object per epoch, then the summary object) when set. Summary keys: ``solved``
    (evaluation mean >= target), ``time_to_solve_s`` (training wall time, evaluation excluded),
    ``env_steps_to_solve``, ``eval_return_mean``, ``sps``, ``checkpoint`` and more.

    Checkpoints (``checkpoint_dir``, or the ``resume`` directory) are written every
    ``checkpoint_every`` epochs and when training stops. SIGINT / SIGTERM stop the run after the
    current epoch: checkpoint, summary (``stop_reason`` ``"interrupted (SIGINT)"``, no evaluation),
    environments closed; ``summary["exit_code"]`` is then 128 + the signal number. A
    ``NonFiniteError`` leaves the last checkpoint as it was.
    """
    import json

    _check_outputs(cfg)
    state = None
    if cfg.resume is not None:
        state = load_checkpoint(cfg.resume)
        check_compatible(state["config"], cfg, Path(cfg.resume) / CHECKPOINT_NAME)
    ckpt_dir = cfg.checkpoint_dir if cfg.checkpoint_dir is not None else cfg.resume
    ckpt_path = None
    sink = JsonlSink(cfg.metrics_file, append=cfg.resume is not None and not cfg.overwrite) if cfg.metrics_file is not None else None
    progress = None if cfg.quiet else ConsoleProgress(cfg.progress_interval_s)
    try:
        with Trainer(cfg, policy=policy) as trainer, StopOnSignals() as signals:
            if state is not None:
                trainer.load_state_dict(state, source=str(Path(cfg.resume) / CHECKPOINT_NAME))
            start_epoch = trainer.epoch_count
            metrics = None
            for metrics in trainer.run(should_stop=signals.requested):
                if sink:
                    sink.write(metrics)
                if progress:
                    progress(metrics, force=trainer.stop_reason is not None)
                if ckpt_dir is not None and trainer.epoch_count % cfg.checkpoint_every == 0:
                    ckpt_path = save_checkpoint(trainer.state_dict(), ckpt_dir)
            if ckpt_dir is not None and (ckpt_path is None or trainer.epoch_count % cfg.checkpoint_every):
                ckpt_path = save_checkpoint(trainer.state_dict(), ckpt_dir)
            interrupted = signals.exit_code is not None
            ev = {}
            if trainer.last_eval is not None:  # the evaluation that confirmed the target
                ev = trainer.last_eval
            elif cfg.eval_episodes and not interrupted:
                ev = trainer.evaluate(cfg.eval_episodes, deterministic=cfg.eval_deterministic)
            target = trainer.target_return
            eval_mean = ev.get("eval_return_mean")
            solved = None if target is None or eval_mean is None else eval_mean >= target
            summary = {
                "summary": True,
                "env": cfg.env,
                "backend": resolve_backend(cfg.env, cfg.backend),
                "device": str(trainer.device),
                "seed": cfg.seed,
                "target_return": target,
                "solved": solved,
                "stop_reason": trainer.stop_reason,
                "time_to_solve_s": trainer.wall_s if solved else None,
                "env_steps_to_solve": trainer.env_steps if solved else None,
                "train_wall_s": trainer.wall_s,
                "env_steps": trainer.env_steps,
                "reset_steps": trainer.total_steps - trainer.env_steps,
                "epochs": trainer.epoch_count,
                "epochs_this_run": trainer.epoch_count - start_epoch,
                "episodes": trainer.episodes,
                "sps": trainer.env_steps / trainer.wall_s if trainer.wall_s > 0 else None,
                "return_mean_100": trainer.window.mean_return(),
                "skipped_updates": trainer.skipped_updates,
                "target_checks": trainer.target_checks,
                "resumed_from": str(cfg.resume) if cfg.resume is not None else None,
                "checkpoint": str(ckpt_path) if ckpt_path is not None else None,
                "exit_code": signals.exit_code or 0,
                **ev,
            }
        if sink:
            sink.write(summary)
    finally:
        if sink:
            sink.close()
    print(json.dumps({k: jsonable(v) for k, v in summary.items()}), flush=True)
    return summary
