import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict

from fastpg.envs.base import EnvInfo, Step
from fastpg.policy import MLPPolicy
from fastpg.rollout import (
    SCAN_MIN_ENVS,
    collect,
    episode_totals,
    episode_totals_cumsum,
    episode_totals_reference,
    episode_totals_scan,
    init_carry,
    nonfinite_envs,
)
from fastpg.storage import allocate_storage


class ScriptedEnv:
    """Env n runs episodes of exactly ``lengths[n]`` steps with reward ``n + 1`` per step.

    ``next_step=True`` imitates gymnasium's NEXT_STEP autoreset (one ignored reset step after each
    done); otherwise it resets within the done step. obs = [steps into episode, env index].
    """

    def __init__(self, lengths, next_step=True):
        self.lengths = torch.tensor(lengths)
        self.num_envs = len(lengths)
        self.device = torch.device("cpu")
        self.same_step_reset = not next_step
        self.info = EnvInfo(env_id="Scripted", obs_shape=(2,), discrete=True, num_actions=2, action_shape=())
        self.t = torch.zeros(self.num_envs, dtype=torch.int64)
        self.prev_done = torch.zeros(self.num_envs, dtype=torch.bool)

    def _obs(self):
        return torch.stack([self.t.float(), torch.arange(self.num_envs).float()], -1)

    def reset(self, seed=None):
        self.t.zero_()
        self.prev_done.zero_()
        return self._obs()

    def step(self, action):
        valid = ~self.prev_done if not self.same_step_reset else torch.ones(self.num_envs, dtype=torch.bool)
        reward = torch.where(valid, torch.arange(self.num_envs).float() + 1, 0.0)
        self.t = torch.where(valid, self.t + 1, 0)
        done = valid & (self.t == self.lengths)
        obs = self._obs()
        if self.same_step_reset:
            self.t = torch.where(done, 0, self.t)
            obs = self._obs()
        else:
            self.prev_done = done
        return Step(obs, reward, done, valid, done.clone())

    def close(self):
        pass


def _setup(lengths, T, next_step=True):
    env = ScriptedEnv(lengths, next_step)
    torch.manual_seed(0)
    policy = MLPPolicy(env.info, (8,))
    buf = allocate_storage(env.info, T, env.num_envs, "cpu")
    return env, policy, buf, init_carry(env, seed=0)


def test_storage_shapes_dtypes_and_lock():
    info = EnvInfo(env_id="x", obs_shape=(3, 2), discrete=False, num_actions=None, action_shape=(4,))
    buf = allocate_storage(info, 5, 7, "cpu")
    assert buf.batch_size == torch.Size([5, 7])
    assert buf["obs"].shape == (5, 7, 3, 2) and buf["obs"].dtype == torch.float32
    assert buf["action"].shape == (5, 7, 4) and buf["action"].dtype == torch.float32
    for k in ("done", "valid", "terminated"):
        assert buf[k].dtype == torch.bool and buf[k].shape == (5, 7)
    assert buf["episode_length"].dtype == torch.int64
    with pytest.raises(RuntimeError):
        buf["new_key"] = torch.zeros(5, 7)  # locked


@pytest.mark.parametrize("next_step", [True, False])
def test_collect_layout_and_episode_totals_across_epochs(next_step):
    lengths, T = [3, 5], 7
    env, policy, buf, carry = _setup(lengths, T, next_step)
    ptrs = {k: v.data_ptr() for k, v in buf.items()}
    all_done, all_valid, all_ret, all_len, all_obs = [], [], [], [], []
    for _ in range(3):
        carry = collect(env, policy, buf, carry, torch.Generator().manual_seed(0))
        all_done.append(buf["done"].clone())
        all_valid.append(buf["valid"].clone())
        all_ret.append(buf["episode_return"].clone())
        all_len.append(buf["episode_length"].clone())
        all_obs.append(buf["obs"].clone())
    assert {k: v.data_ptr() for k, v in buf.items()} == ptrs  # written in place, never reallocated
    done, valid = torch.cat(all_done), torch.cat(all_valid)
    ep_ret, ep_len, obs = torch.cat(all_ret), torch.cat(all_len), torch.cat(all_obs)
    for n, L in enumerate(lengths):
        # Episodes of exactly L valid steps, even when they span epoch boundaries.
        assert torch.all(ep_len[done[:, n], n] == L)
        assert torch.all(ep_ret[done[:, n], n] == L * (n + 1))
        period = L + 1 if next_step else L
        expected_done = torch.tensor([(t + 1) % period == L % period for t in range(3 * T)])
        assert torch.equal(done[:, n], expected_done)
        if next_step:
            assert torch.equal(valid[1:, n], ~done[:-1, n]) and valid[0, n]
        else:
            assert valid[:, n].all()
        # obs[t] is the observation action t was taken in: steps into the episode so far.
        assert torch.equal(obs[:, n, 1], torch.full((3 * T,), float(n)))
    assert carry.episode_length.tolist() == [ep_len[-1, n].item() * (not done[-1, n]) for n in range(2)]


@settings(max_examples=100, deadline=None)
@given(T=st.integers(1, 40), N=st.integers(1, 6), p=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 9999))
def test_episode_totals_matches_reference(T, N, p, seed):
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(T, N, generator=g)
    done = torch.rand(T, N, generator=g) < p
    valid = torch.rand(T, N, generator=g) < 0.8
    start_ret, start_len = torch.randn(N, generator=g), torch.randint(0, 9, (N,), generator=g)
    ref = episode_totals_reference(reward, done, valid, start_ret, start_len)
    for a, b in zip(episode_totals_cumsum(reward, done, valid, start_ret, start_len), ref):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)
    for a, b in zip(episode_totals_scan(reward, done, valid, start_ret, start_len), ref):
        assert a.dtype == b.dtype and torch.equal(a, b)  # the same additions in the same order


def test_episode_totals_uses_the_scan_from_scan_min_envs(monkeypatch):
    g = torch.Generator().manual_seed(0)
    T = 16
    for n, expected in ((SCAN_MIN_ENVS - 1, "cumsum"), (SCAN_MIN_ENVS, "scan")):
        calls: list[str] = []
        monkeypatch.setattr("fastpg.rollout.episode_totals_scan", lambda *a, calls=calls: calls.append("scan"))
        monkeypatch.setattr("fastpg.rollout.episode_totals_cumsum", lambda *a, calls=calls: calls.append("cumsum"))
        episode_totals(
            torch.rand(T, n, generator=g),
            torch.zeros(T, n, dtype=torch.bool),
            torch.ones(T, n, dtype=torch.bool),
            torch.zeros(n),
            torch.zeros(n, dtype=torch.int64),
        )
        assert calls == [expected]


def test_collect_with_policy_without_act_fast_path():
    class NoAct(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, obs):
            return self.inner(obs)

    env, policy, buf, carry = _setup([4, 4], 6)
    collect(env, NoAct(policy), buf, carry, torch.Generator().manual_seed(0))
    assert buf["action"].dtype == torch.int64 and set(buf["action"].unique().tolist()) <= {0, 1}


@pytest.mark.parametrize(
    "field, value",
    [("reward", float("nan")), ("reward", float("inf")), ("obs", float("-inf")), ("obs", float("nan"))],
)
def test_nonfinite_envs_names_the_copies_with_a_nonfinite_value(field, value):
    buf = TensorDict({"obs": torch.randn(6, 5, 3), "reward": torch.randn(6, 5)}, batch_size=[6, 5])
    assert nonfinite_envs(buf) == []
    buf[field][2, 1] = value
    buf[field][4, 3] = value
    assert nonfinite_envs(buf) == [1, 3]


def test_nonfinite_envs_opposite_infinities_and_overflowing_sums():
    buf = TensorDict({"obs": torch.zeros(4, 3, 2), "reward": torch.zeros(4, 3)}, batch_size=[4, 3])
    buf["obs"][0, 2, 0], buf["reward"][1, 2] = float("inf"), float("-inf")  # they would cancel into NaN
    assert nonfinite_envs(buf) == [2]
    buf = TensorDict({"obs": torch.full((4, 3, 2), 3e38), "reward": torch.zeros(4, 3)}, batch_size=[4, 3])
    assert not torch.isfinite(buf["obs"].sum())  # the screening sum overflows: every value is finite
    assert nonfinite_envs(buf) == []


class _FarOutOfBounds(torch.nn.Module):
    """A Box policy whose samples lie far beyond MountainCarContinuous's bounds of [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.tensor([5.0]))

    def forward(self, obs):
        loc = self.loc.expand(obs.shape[0], 1)
        return torch.distributions.Independent(torch.distributions.Normal(loc, 1e-3), 1)


@pytest.mark.parametrize("backend", ["torch", "sync"])
def test_box_actions_reach_every_backend_clipped_and_are_stored_as_sampled(backend):
    from fastpg.envs import make_env

    env = make_env("MountainCarContinuous-v0", 3, backend=backend)
    buf = allocate_storage(env.info, 40, 3, "cpu")
    collect(env, _FarOutOfBounds(), buf, init_carry(env, seed=0), torch.Generator().manual_seed(0))
    env.close()
    assert (buf["action"] > 4.9).all()  # the sample, for the loss
    valid = buf["valid"] & ~buf["terminated"]
    assert torch.allclose(buf["reward"][valid], torch.tensor(-0.1))  # -0.1 a^2 of the clipped a = 1


def test_action_clipper_uses_each_dimension_bounds():
    from fastpg.envs.base import action_clipper

    info = EnvInfo("box", (3,), False, None, (2,), torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0]))
    clip = action_clipper(info, "cpu")
    assert torch.equal(clip(torch.tensor([[5.0, -5.0], [0.5, 1.5]])), torch.tensor([[1.0, -2.0], [0.5, 1.5]]))
    same = EnvInfo("box", (3,), False, None, (2,), torch.tensor([-2.0, -2.0]), torch.tensor([2.0, 2.0]))
    assert torch.equal(action_clipper(same, "cpu")(torch.tensor([[3.0, -0.5]])), torch.tensor([[2.0, -0.5]]))
    discrete = EnvInfo("d", (3,), True, 4, ())
    a = torch.tensor([7])
    assert action_clipper(discrete, "cpu")(a) is a  # Discrete actions pass as they are
