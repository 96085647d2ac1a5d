"""The example user env (examples/point_mass): an env kernel written outside fastpg joins the fused
epoch, and the fused epoch on it is its generic torch version's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastpg import Config, Trainer
from fastpg.envs.base import action_clipper
from fastpg.fused import FusedEpoch
from fastpg.policy import MLPPolicy
from fastpg.update import reinforce_update

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "point_mass"))

from point_mass import PointMass

CFG = dict(env="PointMass-v0", num_envs=24, num_steps=120, hidden_sizes=(16,), activation="tanh", quiet=True)


def _trainer(**changes) -> Trainer:
    cfg = Config(**{**CFG, "eval_episodes": 0, **changes})
    return Trainer(
        cfg, env=PointMass(cfg.num_envs, dtype=torch.float64 if cfg.env_dtype == "float64" else torch.float32)
    )


def test_the_kernel_steps_as_the_torch_version_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    state = torch.rand(2, 5000, generator=gen, dtype=torch.float64) * 4 - 2
    state[:, :500] *= 0.03  # near the origin: terminations
    action = torch.rand(5000, 1, generator=gen) * 2 - 1
    elapsed = torch.zeros(5000, dtype=torch.int64)
    env = PointMass(5000, dtype=torch.float64)
    new, reward, terminated = env._dynamics(state, action)
    k_new, k_reward, k_terminated = PointMass.env_kernel.module().env_step("point_mass", state, action, elapsed)
    assert torch.equal(k_new, new) and torch.equal(k_reward, reward) and torch.equal(k_terminated, terminated)
    assert 100 < int(terminated.sum()) < 4900


def test_fused_runs_on_it_and_its_epochs_are_the_torch_versions():
    """The trainer picks the fused epoch; its actions replayed through the torch version (the
    generic path's env) give the same epoch bit for bit in float64: resets, steps, flags."""
    with _trainer(env_dtype="float64") as tr:
        assert isinstance(tr.fused, FusedEpoch) and tr.fused.env_name == "point_mass"
        replay = PointMass(tr.cfg.num_envs, dtype=torch.float64)
        replay.reset(seed=tr.cfg.seed)
        assert torch.equal(replay.state, tr.env.state)
        clip = action_clipper(replay.info, "cpu")
        for _ in range(2):
            tr.collect()
            for t in range(tr.cfg.num_steps):
                step = replay.step(clip(tr.buf["action"][t]))
                assert torch.equal(step.done, tr.buf["done"][t]) and torch.equal(
                    step.reward.float(), tr.buf["reward"][t]
                )
                nxt = tr.buf["obs"][t + 1] if t + 1 < tr.cfg.num_steps else tr.carry.obs.float()
                assert torch.equal(step.obs.float(), nxt)
        assert tr.buf["done"].any()


def test_fused_update_on_it_is_the_autograd_update():
    with _trainer(baseline="value", unfinished="bootstrap", entropy_coef=0.01) as tr:
        tr.collect()
        copy = MLPPolicy.from_config(tr.cfg, tr.env.info)
        copy.load_state_dict(tr.policy.state_dict())
        generic, _ = reinforce_update(
            copy, torch.optim.Adam(copy.parameters()), tr.buf.clone(), tr.carry.obs, tr.settings
        )
        fused, _ = tr.fused.update(tr.optimizer, tr.buf, tr.settings, last_obs=tr.carry.obs)
        for a, p in zip(tr.fused.grads, copy.parameters()):
            torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
        for key in ("loss", "policy_loss", "value_loss", "entropy"):
            torch.testing.assert_close(fused[key].float(), generic[key].float(), rtol=1e-4, atol=1e-6)


def test_it_trains_to_its_threshold_fused():
    cfg = Config(**{**CFG, "num_envs": 32, "num_steps": 100, "hidden_sizes": (32,)}, baseline="value", lr=3e-3,
                 max_env_steps=1_000_000, eval_episodes=32)  # fmt: skip
    with Trainer(cfg, env=PointMass(32), eval_env=PointMass) as tr:
        assert isinstance(tr.fused, FusedEpoch)
        list(tr.run())
        assert tr.stop_reason == "target_return"


def test_a_kernel_that_disagrees_with_its_class_is_refused_naming_both():
    class Wrong(PointMass):  # its torch version observes 3 numbers (as its EnvInfo says); the kernel 2
        def __init__(self, num_envs: int):
            super().__init__(num_envs)
            self.info = self._make_info(3, action_bound=1.0)

        def _observe(self, state):
            return torch.cat([super()._observe(state), torch.zeros(state.shape[1], 1, dtype=self.dtype)], dim=1)

    cfg = Config(**{**CFG, "eval_episodes": 0})
    with pytest.raises(
        ValueError, match=r"Wrong and its env kernel point_mass \(point_mass.h\) disagree.*obs_dim is 2"
    ):
        Trainer(cfg, env=Wrong(cfg.num_envs))


def test_building_a_users_env_module_leaves_fastpgs_kernels_name_alone():
    """torch's build appends its libraries to the flag list it is given: fastpg hands it copies, so
    the digest that names fastpg's kernels is the same after an env module's build (before, a
    process with a user's env built fastpg's kernels a second time, under another name)."""
    import subprocess

    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1] / 'examples' / 'point_mass')!r})\n"
        "import torch\nfrom fastpg import _kernels\nfrom point_mass import PointMass\n"
        "before = _kernels._digest()\nPointMass.env_kernel.module()\n"
        "print(before == _kernels._digest(), _kernels.kernels().__name__ == f'fastpg_kernels_{before}')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]
