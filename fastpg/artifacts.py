"""Trained policies as artifacts: load one from a checkpoint, act with it, evaluate it, film it.

``load_policy(DIR)`` rebuilds the policy a run saved in ``DIR/checkpoint.pt`` (weights only, no
``Trainer``, no optimizer) and returns a ``TrainedPolicy`` that acts on single observations or
batches, tensors or numpy arrays. ``evaluate_checkpoint`` is ``fastpg eval``: fresh episodes of the
checkpoint's env, the actions sampled (or the most likely one), a summary; optionally a video of
some episodes (gymnasium's ``RecordVideo``; needs the ``video`` extra) or a window
(``render_mode="human"``; needs a display).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fastpg.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fastpg.config import Config
from fastpg.envs import EnvInfo
from fastpg.envs.base import action_clipper
from fastpg.errors import ConfigError
from fastpg.evaluation import evaluate, evaluation_env
from fastpg.policy import MLPPolicy, mode_action, sample_action

__all__ = ["TrainedPolicy", "load_policy", "evaluate_checkpoint", "EvalConfig"]


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a trained policy from its checkpoint on fresh episodes."""

    checkpoint: Path
    """Directory of the run's checkpoint (its --checkpoint-dir)."""
    member: int | None = None
    """The member of a population's checkpoint to evaluate (its number, 0 to K - 1)."""
    episodes: int = 100
    """Fresh episodes, one per env copy."""
    deterministic: bool = False
    """Take the most likely action (argmax / Gaussian mean) instead of sampling."""
    seed: int = 0
    """Seed of the episodes and of the sampling."""
    device: str = "cpu"
    """Device of the policy and of native envs."""
    video: Path | None = None
    """Directory to film episodes into (mp4; needs the video extra: moviepy, pygame)."""
    video_episodes: int = 1
    """Episodes to film with --video."""
    render: bool = False
    """Show one episode in a window (needs a display)."""

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, Path):
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if self.video is not None and not isinstance(self.video, Path):
            object.__setattr__(self, "video", Path(self.video))
        for name in ("episodes", "video_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
        if not (self.checkpoint / CHECKPOINT_NAME).is_file():
            raise ConfigError("checkpoint", f"no checkpoint at {self.checkpoint / CHECKPOINT_NAME}")


class TrainedPolicy:
    """A trained policy for inference: ``policy(obs)`` or ``policy.act(obs, deterministic=...)``.

    ``obs`` is one observation (``obs_shape``) or a batch (``[B, *obs_shape]``), a tensor or a numpy
    array; the action comes back as a tensor of the matching shape (int64 for Discrete spaces,
    float32 for Box spaces, clipped to the bounds as the env receives it). ``config`` and ``info``
    describe the run and the env it was trained on; ``module`` is the ``MLPPolicy`` itself.
    """

    def __init__(self, module: MLPPolicy, config: Config, info: EnvInfo, device: torch.device):
        self.module = module.eval()
        self.config, self.info, self.device = config, info, device
        self._clip = action_clipper(info, device, getattr(module, "action_bound", "clip"))

    def act(
        self, obs: Tensor | np.ndarray, *, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        x = torch.as_tensor(np.asarray(obs) if not isinstance(obs, Tensor) else obs, dtype=torch.float32)
        single = x.dim() == len(self.info.obs_shape)
        x = x.to(self.device).unsqueeze(0) if single else x.to(self.device)
        with torch.inference_mode():
            dist = self.module(x)
            action = mode_action(dist) if deterministic else sample_action(dist, generator)
        action = self._clip(action)
        return action[0] if single else action

    __call__ = act


def load_policy(
    directory: str | Path, *, member: int | None = None, device: str | torch.device = "cpu"
) -> TrainedPolicy:
    """The policy saved in ``directory/checkpoint.pt``, on ``device`` (``ConfigError`` if the
    checkpoint is missing, unreadable, or was not trained with fastpg's ``MLPPolicy``). A
    population's checkpoint holds every member's policy: ``member`` picks one (its number)."""
    state = load_checkpoint(directory)
    cfg_dict, policy_state = _member_state(state, member, Path(directory) / CHECKPOINT_NAME)
    cfg = Config.from_dict(cfg_dict)
    device = torch.device(device)
    env = evaluation_env(cfg, torch.device("cpu"), 1)
    try:
        info = env.info
    finally:
        env.close()
    module = MLPPolicy.from_config(cfg, info)
    try:
        module.load_state_dict(policy_state)
    except RuntimeError as e:
        raise ConfigError(
            "checkpoint", f"{Path(directory) / CHECKPOINT_NAME} holds a policy that is not fastpg's MLPPolicy ({e})"
        ) from None
    return TrainedPolicy(module.to(device), cfg, info, device)


def _member_state(state: dict[str, Any], member: int | None, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, policy state) of the run in ``state``: a single run's, or member ``member``'s of a population."""
    if state.get("kind") != "population":
        if member is not None:
            raise ConfigError("member", f"{path} holds a single run, not a population; drop --member")
        return state["config"], state["policy"]
    numbers = state["numbers"]
    if member is None or member not in numbers:
        given = "" if member is None else f" (got {member})"
        raise ConfigError(
            "member",
            f"{path} holds a population of {len(numbers)} members: pick one with --member 0..{len(numbers) - 1}{given}",
        )
    j = numbers.index(member)
    return state["population"]["members"][member], state["members"][j]["policy"]


def evaluate_checkpoint(
    directory: str | Path,
    *,
    episodes: int = 100,
    deterministic: bool = False,
    seed: int = 0,
    device: str = "cpu",
    video: Path | None = None,
    video_episodes: int = 1,
    render: bool = False,
    member: int | None = None,
) -> dict[str, Any]:
    """``fastpg eval``: ``episodes`` fresh episodes of the checkpoint's env (one per env copy), then
    optionally ``video_episodes`` more filmed into ``video`` (mp4 files) or shown in a window.
    ``member``: which member of a population's checkpoint."""
    if video is not None:
        _check_video_extra()
    if render and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("render", "needs a display (DISPLAY is not set); use --video DIR to film episodes instead")
    policy = load_policy(directory, member=member, device=device)
    cfg = policy.config
    env = evaluation_env(cfg, policy.device, episodes)
    try:
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        result = evaluate(env, policy.module, seed=seed, deterministic=deterministic, generator=generator)
    finally:
        env.close()
    summary: dict[str, Any] = {
        "env": cfg.env,
        "checkpoint": str(Path(directory) / CHECKPOINT_NAME),
        **({"member": member} if member is not None else {}),
        "deterministic": deterministic,
        "seed": seed,
        **result,
    }
    if video is not None or render:
        summary["filmed"] = _play(policy, video, video_episodes if video is not None else 1, seed, deterministic)
        if video is not None:
            summary["videos"] = sorted(str(p) for p in Path(video).glob("*.mp4"))
    return summary


def _check_video_extra() -> None:
    try:
        import moviepy  # noqa: F401
        import pygame  # noqa: F401
    except ImportError:
        raise ConfigError("video", "needs moviepy and pygame (the video extra: pip install -e '.[video]')") from None


def _play(policy: TrainedPolicy, video: Path | None, episodes: int, seed: int, deterministic: bool) -> list[float]:
    """Play ``episodes`` episodes in one gymnasium env, filmed (``video``) or on screen; their returns."""
    import gymnasium as gym

    if video is not None and "SDL_VIDEODRIVER" not in os.environ:
        # Off-screen drawing: no window, and no complaint from SDL about a missing display session.
        os.environ["SDL_VIDEODRIVER"] = "dummy"
        try:
            return _play(policy, video, episodes, seed, deterministic)
        finally:
            del os.environ["SDL_VIDEODRIVER"]
    env = gym.make(policy.config.env, render_mode="rgb_array" if video is not None else "human")
    if video is not None:
        env = gym.wrappers.RecordVideo(env, str(video), episode_trigger=lambda _: True, disable_logger=True)
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    returns = []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                action = policy.act(obs, deterministic=deterministic, generator=generator).cpu().numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total if math.isfinite(total) else float("nan"))
    finally:
        env.close()
    return returns
