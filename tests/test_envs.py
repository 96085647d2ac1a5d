import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from fastpg.envs import GymVectorEnv, UnsupportedEnvError, make_env, resolve_backend
from fastpg.errors import ConfigError


def _rollout(env, actions, seed=0):
    obs = [env.reset(seed=seed).clone()]
    out = {k: [] for k in ("reward", "done", "valid", "terminated")}
    for a in actions:
        s = env.step(a)
        obs.append(s.obs.clone())
        for k in out:
            out[k].append(getattr(s, k).clone())
    return torch.stack(obs), {k: torch.stack(v) for k, v in out.items()}


@pytest.mark.parametrize("backend", ["vector", "sync"])
def test_next_step_autoreset_layout(backend):
    env = make_env("CartPole-v1", 4, backend=backend)
    try:
        g = torch.Generator().manual_seed(0)
        actions = [torch.randint(0, 2, (4,), generator=g) for _ in range(300)]
        obs, s = _rollout(env, actions)
    finally:
        env.close()
    done, valid, reward = s["done"], s["valid"], s["reward"]
    assert obs.dtype == torch.float32 and obs.shape == (301, 4, 4)
    assert done.any(), "random CartPole episodes must end within 300 steps"
    # The step after a done is the reset step: invalid, reward 0, not done; every other step valid.
    expected_valid = torch.ones_like(valid)
    expected_valid[1:] = ~done[:-1]
    assert torch.equal(valid, expected_valid)
    assert torch.all(reward[~valid] == 0) and not done[~valid].any()
    assert torch.all(reward[valid] == 1.0)
    # CartPole only terminates before the time limit here, so done == terminated.
    assert torch.equal(done, s["terminated"])


def test_sync_and_async_backends_agree():
    g = torch.Generator().manual_seed(1)
    actions = [torch.randint(0, 2, (3,), generator=g) for _ in range(120)]
    results = []
    for backend in ("sync", "async"):
        env = make_env("CartPole-v1", 3, backend=backend)
        try:
            results.append(_rollout(env, actions, seed=7))
        finally:
            env.close()
    (obs_a, s_a), (obs_b, s_b) = results
    assert torch.equal(obs_a, obs_b)
    for k in s_a:
        assert torch.equal(s_a[k], s_b[k]), k


def test_same_seed_same_trajectory():
    g = torch.Generator().manual_seed(2)
    actions = [torch.randint(0, 2, (5,), generator=g) for _ in range(60)]
    runs = []
    for _ in range(2):
        env = make_env("CartPole-v1", 5, backend="vector")
        runs.append(_rollout(env, actions, seed=11)[0])
        env.close()
    assert torch.equal(runs[0], runs[1])


def test_make_env_refuses_a_backend_the_id_lacks():
    with pytest.raises(
        ConfigError, match="backend: 'vector' needs an env with its own vectorized implementation; Pendulum-v1 has none"
    ):
        make_env("Pendulum-v1", 2, backend="vector")
    with pytest.raises(ConfigError, match="backend: 'torch' has no native implementation of FrozenLake-v1"):
        make_env("FrozenLake-v1", 2, backend="torch")


def test_resolve_backend():
    for env_id in (
        "CartPole-v1",
        "CartPole-v0",
        "Acrobot-v1",
        "MountainCar-v0",
        "MountainCarContinuous-v0",
        "Pendulum-v1",
    ):
        assert resolve_backend(env_id) == "torch"  # native first
    assert resolve_backend("FrozenLake-v1", "auto") == "sync"  # no native, no vector entry point
    assert resolve_backend("CartPole-v1", "async") == "async"


def test_box_actions_are_clipped_to_bounds():
    env = make_env("Pendulum-v1", 2, backend="sync")
    try:
        env.reset(seed=0)
        sent = []
        orig = env.vec_env.step
        env.vec_env.step = lambda a: (sent.append(np.array(a)), orig(a))[1]
        s = env.step(torch.tensor([[100.0], [-100.0]]))
    finally:
        env.close()
    np.testing.assert_array_equal(sent[0], np.array([[2.0], [-2.0]], dtype=np.float32))
    assert s.obs.shape == (2, 3) and env.info.action_shape == (1,)
    assert not env.info.discrete and torch.equal(env.info.action_high, torch.tensor([2.0]))


def test_discrete_observations_are_one_hot():
    env = make_env("FrozenLake-v1", 3, backend="sync")
    try:
        obs = env.reset(seed=0)
        assert env.info.obs_shape == (16,) and env.info.obs_encoding == "one_hot"
        assert obs.shape == (3, 16) and torch.all(obs.sum(-1) == 1) and torch.all(obs[:, 0] == 1)
        s = env.step(torch.tensor([1, 2, 0]))
        assert torch.all(s.obs.sum(-1) == 1)
    finally:
        env.close()


class _SpaceEnv(gym.Env):
    def __init__(self, obs_space, action_space):
        self.observation_space, self.action_space = obs_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


@pytest.mark.parametrize(
    "obs_space, action_space, match",
    [
        (spaces.Dict({"a": spaces.Box(-1, 1, (2,))}), spaces.Discrete(2), "observation space Dict"),
        (spaces.Tuple([spaces.Discrete(2)]), spaces.Discrete(2), "observation space Tuple"),
        (spaces.Box(-1, 1, (2,)), spaces.MultiDiscrete([2, 3]), "action space MultiDiscrete"),
        (spaces.Box(-1, 1, (2,)), spaces.MultiBinary(3), "action space MultiBinary"),
    ],
)
def test_unsupported_spaces_are_refused_up_front(obs_space, action_space, match):
    vec = SyncVectorEnv([lambda: _SpaceEnv(obs_space, action_space)])
    with pytest.raises(UnsupportedEnvError, match=match) as info:
        GymVectorEnv(vec)
    assert "fastpg supports Box or Discrete observation spaces and Discrete or Box action spaces" in str(info.value)
    vec.close()


def test_disabled_autoreset_is_refused():
    vec = SyncVectorEnv([lambda: gym.make("CartPole-v1")], autoreset_mode=AutoresetMode.DISABLED)
    with pytest.raises(UnsupportedEnvError, match="autoreset mode"):
        GymVectorEnv(vec)
    vec.close()


def test_same_step_autoreset_marks_every_step_valid():
    vec = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2, autoreset_mode=AutoresetMode.SAME_STEP)
    env = GymVectorEnv(vec)
    try:
        g = torch.Generator().manual_seed(0)
        _, s = _rollout(env, [torch.randint(0, 2, (2,), generator=g) for _ in range(100)])
    finally:
        env.close()
    assert env.same_step_reset and s["valid"].all() and s["done"].any()
    assert torch.all(s["reward"] == 1.0)


def test_discrete_action_start_offset():
    class Shifted(_SpaceEnv):
        def step(self, action):
            assert self.action_space.contains(action), action
            return self.observation_space.sample(), float(action), False, False, {}

    vec = SyncVectorEnv([lambda: Shifted(spaces.Box(-1, 1, (2,)), spaces.Discrete(3, start=-1))])
    env = GymVectorEnv(vec)
    env.reset(seed=0)
    assert env.step(torch.tensor([0])).reward.item() == -1.0
    assert env.step(torch.tensor([2])).reward.item() == 1.0
    env.close()


def test_env_that_cannot_be_built_gives_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("jax") is not None:
        pytest.skip("jax is installed, so phys2d envs build")
    # phys2d/CartPole-v1 registers a jax vector implementation: auto must not pick it without jax.
    assert resolve_backend("phys2d/CartPole-v1") == "sync"
    with pytest.raises(UnsupportedEnvError, match=r"could not create phys2d/CartPole-v1: \w+"):
        make_env("phys2d/CartPole-v1", 2, backend="sync")
