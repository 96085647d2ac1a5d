import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpg.returns import episode_complete_mask, reward_to_go, reward_to_go_reference


def _inputs(T, N, p_done, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(T, N, generator=g, dtype=dtype)
    done = torch.rand(T, N, generator=g) < p_done
    return reward, done


@pytest.mark.parametrize("T,N", [(1, 1), (5, 3), (33, 1), (257, 17)])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("p_done", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reward_to_go_matches_reference(T, N, gamma, p_done, dtype):
    reward, done = _inputs(T, N, p_done, dtype, seed=T * 1000 + N)
    fast = reward_to_go(reward, done, gamma)
    ref = reward_to_go_reference(reward, done, gamma)
    assert fast.dtype == dtype and fast.shape == (T, N)
    torch.testing.assert_close(fast, ref)


@settings(max_examples=150, deadline=None)
@given(
    T=st.integers(1, 130),
    N=st.integers(1, 9),
    gamma=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
    p_done=st.sampled_from([0.0, 0.02, 0.3, 1.0]),
    use_bootstrap=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_reward_to_go_property(T, N, gamma, p_done, use_bootstrap, seed):
    reward, done = _inputs(T, N, p_done, torch.float64, seed)
    bootstrap = (
        torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
        if use_bootstrap
        else None
    )
    torch.testing.assert_close(
        reward_to_go(reward, done, gamma, bootstrap=bootstrap),
        reward_to_go_reference(reward, done, gamma, bootstrap=bootstrap),
        rtol=1e-12,
        atol=1e-12,
    )


def test_reward_to_go_hand_computed():
    # One env: episode of 3 steps ends at t=2, then an unfinished episode of 2 steps.
    reward = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    done = torch.tensor([[False], [False], [True], [False], [False]])
    expected = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3], [2 + 0.5 * 3], [3.0], [4 + 0.5 * 5], [5.0]])
    torch.testing.assert_close(reward_to_go(reward, done, 0.5), expected)
    # Bootstrap enters only where the last step is not done.
    boot = torch.tensor([10.0])
    expected_boot = expected.clone()
    expected_boot[4] = 5 + 0.5 * 10
    expected_boot[3] = 4 + 0.5 * expected_boot[4]
    torch.testing.assert_close(reward_to_go(reward, done, 0.5, bootstrap=boot), expected_boot)
    done_last = done.clone()
    done_last[4] = True
    torch.testing.assert_close(reward_to_go(reward, done_last, 0.5, bootstrap=boot)[4], torch.tensor([5.0]))


def test_reward_to_go_gamma_edges():
    reward = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    done = torch.tensor([[False, False], [False, True], [False, False]])
    # gamma = 0: the return is the immediate reward.
    torch.testing.assert_close(reward_to_go(reward, done, 0.0), reward)
    # gamma = 1: undiscounted sum to the episode end.
    torch.testing.assert_close(reward_to_go(reward, done, 1.0), torch.tensor([[3.0, 2.0], [2.0, 1.0], [1.0, 1.0]]))


def test_reward_to_go_out_and_purity():
    reward, done = _inputs(70, 4, 0.1, torch.float32, seed=3)
    r0, d0 = reward.clone(), done.clone()
    out = torch.full_like(reward, float("nan"))
    res = reward_to_go(reward, done, 0.9, out=out)
    assert res.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, reward_to_go_reference(reward, done, 0.9))
    assert torch.equal(reward, r0) and torch.equal(done, d0)  # inputs untouched


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reward=torch.zeros(3), done=torch.zeros(3, dtype=torch.bool)), r"reward must be \[T, N\]"),
        (dict(reward=torch.zeros(3, 2), done=torch.zeros(3, 3, dtype=torch.bool)), "done must have the shape"),
        (dict(reward=torch.zeros(3, 2), done=torch.zeros(3, 2)), "done must be torch.bool"),
        (dict(reward=torch.zeros(3, 2, dtype=torch.int64), done=torch.zeros(3, 2, dtype=torch.bool)), "floating"),
        (
            dict(reward=torch.zeros(3, 2), done=torch.zeros(3, 2, dtype=torch.bool), gamma=1.5),
            r"gamma must be in \[0, 1\]",
        ),
        (
            dict(reward=torch.zeros(3, 2), done=torch.zeros(3, 2, dtype=torch.bool), bootstrap=torch.zeros(3)),
            "bootstrap must be",
        ),
    ],
)
@pytest.mark.parametrize("fn", [reward_to_go, reward_to_go_reference])
def test_reward_to_go_shape_errors(fn, kwargs, match):
    kwargs = {"gamma": 0.9, **kwargs}
    with pytest.raises(ValueError, match=match):
        fn(kwargs.pop("reward"), kwargs.pop("done"), kwargs.pop("gamma"), **kwargs)


def test_reward_to_go_out_mismatch():
    with pytest.raises(ValueError, match="out must be"):
        reward_to_go(
            torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool), 0.9, out=torch.zeros(3, 2, dtype=torch.float64)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reward_to_go_cuda(dtype):
    reward, done = _inputs(200, 64, 0.05, dtype, seed=0)
    fast = reward_to_go(reward.cuda(), done.cuda(), 0.99, bootstrap=reward[0].cuda())
    assert fast.device.type == "cuda"
    torch.testing.assert_close(fast.cpu(), reward_to_go_reference(reward, done, 0.99, bootstrap=reward[0]))


def test_episode_complete_mask():
    done = torch.tensor([[False, False], [True, False], [False, False], [False, True], [False, False]])
    expected = torch.tensor([[True, True], [True, True], [False, True], [False, True], [False, False]])
    assert torch.equal(episode_complete_mask(done), expected)


@settings(max_examples=50, deadline=None)
@given(T=st.integers(1, 40), N=st.integers(1, 6), p=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 999))
def test_episode_complete_mask_property(T, N, p, seed):
    done = torch.rand(T, N, generator=torch.Generator().manual_seed(seed)) < p
    expected = torch.stack([done[t:].any(0) for t in range(T)])
    assert torch.equal(episode_complete_mask(done), expected)
