"""Evaluation on fresh episodes, and the rule that confirms a target return.

``evaluate`` plays one episode in each copy of a batched env with a policy and reports the mean
return. ``TargetCheck`` is the stop rule of training: when the mean return of the latest 100
finished training episodes reaches the target, the policy that played them is evaluated on fresh
episodes, and only an evaluation that reaches the target too confirms it (a lucky window does not
stop training). Evaluation time is never training time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastpg.config import Config
from fastpg.envs import BatchedEnv, env_from_config, resolve_backend
from fastpg.envs.base import action_clipper
from fastpg.metrics import EpisodeWindow
from fastpg.policy import mode_action, sample_action

__all__ = ["evaluate", "evaluation_env", "play_first_episodes", "episode_summary", "TargetCheck", "EVAL_SEED_OFFSET"]

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs are seeded apart from the training envs


def evaluation_env(cfg: Config, device: torch.device, num_episodes: int) -> BatchedEnv:
    """``num_episodes`` copies of the config's env (async ids are stepped with sync here: no need
    for a worker process per evaluation episode)."""
    backend = "sync" if resolve_backend(cfg.env, cfg.backend) == "async" else None
    return env_from_config(cfg, device, num_episodes, backend=backend)


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

    Returns:
        ``eval_return_mean, eval_return_std, eval_length_mean, eval_episodes, unfinished``.
    """
    limit = max_steps or env.info.max_episode_steps or 100_000
    obs = env.reset(seed=seed).to(torch.float32)  # policies take float32 (native envs may be float64)
    was_training = policy.training
    policy.eval()
    try:
        with torch.inference_mode():

            def act(o: torch.Tensor) -> torch.Tensor:
                dist = policy(o)
                return mode_action(dist) if deterministic else sample_action(dist, generator)

            ret, length, running = play_first_episodes(env, obs, act, limit, getattr(policy, "action_bound", "clip"))
    finally:
        policy.train(was_training)
    return episode_summary(ret, length, running)


def play_first_episodes(
    env: BatchedEnv,
    obs: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
    limit: int,
    bound: str = "clip",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``env`` from observation ``obs`` with actions ``act(obs)`` until every copy has finished
    its first episode, or ``limit`` steps (+1: a NEXT_STEP env may not have started yet); returns
    each copy's return, length (valid steps) and whether it is still running ``[N]``. ``bound``:
    how Box actions reach the env (``action_clipper``)."""
    N = env.num_envs
    to_env = action_clipper(env.info, obs.device, bound)
    ret = torch.zeros(N, device=obs.device)
    length = torch.zeros(N, dtype=torch.int64, device=obs.device)
    running = torch.ones(N, dtype=torch.bool, device=obs.device)
    for _ in range(limit + 1):
        step = env.step(to_env(act(obs)))
        live = running & step.valid
        ret += torch.where(live, step.reward, 0.0)
        length += live
        running &= ~(live & step.done)
        obs = step.obs.to(torch.float32)
        if not bool(running.any()):
            break
    return ret, length, running


def episode_summary(ret: torch.Tensor, length: torch.Tensor, running: torch.Tensor) -> dict[str, float]:
    """What ``evaluate`` reports of its episodes' returns, lengths and unfinished flags ``[N]``."""
    return {
        "eval_return_mean": ret.mean().item(),
        "eval_return_std": ret.std(unbiased=False).item(),
        "eval_length_mean": length.float().mean().item(),
        "eval_episodes": ret.numel(),
        "unfinished": int(running.sum().item()),
    }


class TargetCheck:
    """Stop rule: the training window reaches ``target`` and an evaluation confirms it.

    Call it after each epoch's collection with the episode window and a function that evaluates the
    current policy. With ``eval_episodes=0`` the window alone decides. ``checks`` counts the
    evaluations run, ``evaluation`` holds the one that confirmed the target.
    """

    def __init__(self, target: float | None, eval_episodes: int):
        self.target = target
        self.eval_episodes = eval_episodes
        self.checks = 0
        self.confirmed = False
        self.evaluation: dict[str, Any] | None = None

    def window_reached(self, window: EpisodeWindow) -> bool:
        """True when the window is full and its mean return is at least the target."""
        return self.target is not None and window.full and window.mean_return() >= self.target

    def __call__(self, window: EpisodeWindow, run_evaluation: Callable[[], dict[str, Any]]) -> bool:
        """True once the target is confirmed (evaluating the policy when the window reaches it)."""
        if self.confirmed or not self.window_reached(window):
            return self.confirmed
        if not self.eval_episodes:
            self.confirmed = True
            return True
        self.checks += 1
        ev = run_evaluation()
        if ev["eval_return_mean"] >= self.target:
            self.confirmed, self.evaluation = True, ev
        return self.confirmed
