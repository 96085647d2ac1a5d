import math

import pytest
import torch
from torch.distributions import Categorical, Independent

from fastpg.envs.base import EnvInfo
from fastpg.policy import MLPPolicy, mode_action, sample_action

DISCRETE = EnvInfo(env_id="d", obs_shape=(4,), discrete=True, num_actions=3, action_shape=())
BOX = EnvInfo(
    env_id="b",
    obs_shape=(3,),
    discrete=False,
    num_actions=None,
    action_shape=(2,),
    action_low=torch.tensor([-1.0, -2.0]),
    action_high=torch.tensor([1.0, 2.0]),
)


def _chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    n = counts.sum()
    expected = probs * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    return chi2 < 25.0  # far beyond the 99.99th percentile for <= 4 degrees of freedom


def test_sample_action_categorical_matches_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    dist = Categorical(probs=probs.expand(200_000, 4))
    a = sample_action(dist, torch.Generator().manual_seed(0))
    assert a.shape == (200_000,) and a.dtype == torch.int64
    assert _chi2_ok(torch.bincount(a, minlength=4).double(), probs.double())


def test_policy_act_samples_the_policy_distribution():
    torch.manual_seed(0)
    policy = MLPPolicy(DISCRETE, (16,), "tanh")
    obs = torch.randn(1, 4).expand(100_000, 4)
    with torch.no_grad():
        probs = policy(obs[:1]).probs[0].double()
        a = policy.act(obs, torch.Generator().manual_seed(1))
    assert _chi2_ok(torch.bincount(a, minlength=3).double(), probs)


def test_gaussian_policy_shapes_sampling_and_mode():
    torch.manual_seed(0)
    policy = MLPPolicy(BOX, (16,), log_std_init=-0.5)
    obs = torch.randn(7, 5, 3)
    dist = policy(obs)
    assert isinstance(dist, Independent) and dist.batch_shape == (7, 5) and dist.event_shape == (2,)
    a = sample_action(dist, torch.Generator().manual_seed(0))
    assert a.shape == (7, 5, 2) and dist.log_prob(a).shape == (7, 5)
    torch.testing.assert_close(mode_action(dist), dist.base_dist.loc)
    torch.testing.assert_close(dist.base_dist.scale, torch.full((7, 5, 2), math.exp(-0.5)))
    with torch.no_grad():
        many = policy.act(torch.zeros(100_000, 3), torch.Generator().manual_seed(2))
        loc = policy(torch.zeros(1, 3)).base_dist.loc[0]
    torch.testing.assert_close(many.mean(0), loc, atol=0.01, rtol=0)
    torch.testing.assert_close(many.std(0), torch.full((2,), math.exp(-0.5)), atol=0.01, rtol=0)


def test_log_std_is_clamped():
    policy = MLPPolicy(BOX, (4,), log_std_init=10.0)
    assert policy(torch.zeros(1, 3)).base_dist.scale.max().item() == pytest.approx(math.exp(2.0))


def test_sampling_is_reproducible_with_generator():
    torch.manual_seed(0)
    policy = MLPPolicy(DISCRETE, (8,))
    obs = torch.randn(64, 4)
    with torch.no_grad():
        a1 = policy.act(obs, torch.Generator().manual_seed(3))
        a2 = policy.act(obs, torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)


def test_value_head_and_its_absence():
    info = EnvInfo(env_id="img", obs_shape=(2, 3), discrete=True, num_actions=2, action_shape=())
    p = MLPPolicy(info, (8,), value_head=True)
    assert p.value(torch.zeros(5, 4, 2, 3)).shape == (5, 4)
    assert p(torch.zeros(5, 4, 2, 3)).batch_shape == (5, 4)
    with pytest.raises(RuntimeError, match="without a value head"):
        MLPPolicy(info, (8,)).value(torch.zeros(1, 2, 3))


def test_mode_action_categorical_and_fallback():
    dist = Categorical(logits=torch.tensor([[0.0, 2.0, 1.0]]))
    assert mode_action(dist).tolist() == [1]
    beta = torch.distributions.Beta(torch.tensor([2.0]), torch.tensor([2.0]))
    assert sample_action(beta).shape == (1,)  # falls back to dist.sample()
