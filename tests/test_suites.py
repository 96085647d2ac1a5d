"""The MuJoCo and Box2D ids train on their shipped settings (``Config.for_env``): one short epoch
each, where the package is installed (skipped, with the reason, where it is not)."""

from __future__ import annotations

import importlib.util

import pytest

from fastpg import Config, train
from fastpg.config import ENV_DEFAULTS
from fastpg.envs import native_env_ids

PACKAGE = {"LunarLander-v3": "Box2D", "BipedalWalker-v3": "Box2D"}  # every other suite id: mujoco
SUITE_IDS = sorted(set(ENV_DEFAULTS) - set(native_env_ids()))


@pytest.mark.parametrize("env_id", SUITE_IDS)
def test_each_suite_id_trains_an_epoch_on_its_settings(env_id):
    package = PACKAGE.get(env_id, "mujoco")
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{env_id} needs {package}: pip install 'fastpg-rl[{'box2d' if package == 'Box2D' else 'mujoco'}]'")
    cfg = Config.for_env(env_id, num_envs=4, num_steps=16, max_epochs=2, eval_episodes=0, quiet=True)
    summary = train(cfg)
    assert summary["epochs"] == 2 and summary["skipped_updates"] == 0


def test_the_suite_ids_are_the_ones_the_docs_name():
    assert SUITE_IDS == sorted(
        ["BipedalWalker-v3", "HalfCheetah-v5", "Hopper-v5", "InvertedPendulum-v5", "LunarLander-v3", "Walker2d-v5"]
    )
