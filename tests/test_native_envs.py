"""Native torch environments against gymnasium's implementation of the same id."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastpg.envs import TorchCartPole, kernel_env_ids, make_env, native_env_ids, resolve_backend
from fastpg.errors import ConfigError

RTOL = 1e-10


def _gym_envs(env_id, n, seed):
    envs = [gym.make(env_id) for _ in range(n)]
    for i, e in enumerate(envs):
        e.reset(seed=seed + i)
    return envs


FUSED = [False, pytest.param(True, id="fused")]


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "CartPole-v0"])
def test_cartpole_one_step_matches_gymnasium_from_same_states(env_id, fused):
    rng = np.random.default_rng(0)
    n = 2000
    # States across and beyond the termination boundaries (|x| = 2.4, |theta| = 0.2094).
    states = rng.uniform([-2.6, -3.0, -0.25, -3.5], [2.6, 3.0, 0.25, 3.5], size=(n, 4))
    states[:50, 0] = 2.4 - 1e-3  # just inside; a push can cross the boundary
    states[50:100, 2] = -0.2094395 + 1e-4
    actions = rng.integers(0, 2, size=n)
    elapsed = rng.integers(0, 600 if env_id == "CartPole-v1" else 250, size=n)
    limit = gym.spec(env_id).max_episode_steps
    elapsed[:30] = limit - 1  # these truncate on this step

    native = TorchCartPole(n, dtype=torch.float64, env_id=env_id, kernel="cpp" if fused else "torch")
    native.reset(seed=0)
    native.set_state(torch.from_numpy(states), torch.from_numpy(elapsed).clamp(max=limit - 1))
    step = native.step(torch.from_numpy(actions))

    env = gym.make(env_id)
    env.reset(seed=0)
    exp_obs, exp_rew, exp_term, exp_trunc = [], [], [], []
    for s, a, el in zip(states, actions, elapsed):
        env.unwrapped.state = s.copy()
        env.unwrapped.steps_beyond_terminated = None
        env._elapsed_steps = min(int(el), limit - 1)  # TimeLimit wrapper counter
        _, r, term, trunc, _ = env.step(int(a))
        exp_obs.append(env.unwrapped.state.copy())
        exp_rew.append(r), exp_term.append(term), exp_trunc.append(trunc)
    torch.testing.assert_close(native.final_obs, torch.tensor(np.array(exp_obs)), rtol=RTOL, atol=1e-12)
    if fused:  # the C library's cos/sin, as numpy: bit for bit
        assert torch.equal(native.final_obs, torch.tensor(np.array(exp_obs)))
    assert step.terminated.tolist() == exp_term
    truncated = step.done & ~step.terminated
    assert truncated.tolist() == [tr and not te for tr, te in zip(exp_trunc, exp_term)]
    assert step.done.tolist() == [te or tr for te, tr in zip(exp_term, exp_trunc)]
    assert step.reward.tolist() == exp_rew
    assert any(exp_term) and any(exp_trunc) and not all(exp_term)


def _balance(obs):
    # A simple controller that keeps the pole up long enough to reach the time limit.
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)


@pytest.mark.parametrize("fused", FUSED)
@pytest.mark.parametrize("env_id", ["CartPole-v1", "CartPole-v0"])
def test_cartpole_trajectories_match_gymnasium(env_id, fused):
    """Thousands of steps of many envs, half balanced to the time limit, half random.

    After each done the native env's fresh state is replaced by gymnasium's reset state (the two
    draw from different RNGs); everything else evolves independently and must agree to 1e-10.
    """
    n, steps = 48, 2500 if env_id == "CartPole-v1" else 1200
    envs = _gym_envs(env_id, n, seed=100)
    gym_state = np.array([e.unwrapped.state for e in envs])
    native = TorchCartPole(n, dtype=torch.float64, env_id=env_id, kernel="cpp" if fused else "torch")
    native.reset(seed=0)
    native.set_state(torch.from_numpy(gym_state))
    rng = np.random.default_rng(1)
    counts = {"terminated": 0, "truncated": 0}
    for t in range(steps):
        obs = native.state.numpy().copy()
        actions = np.where(np.arange(n) < n // 2, _balance(obs), rng.integers(0, 2, size=n))
        step = native.step(torch.from_numpy(actions))
        results = [e.step(int(a)) for e, a in zip(envs, actions)]
        expected = np.array([e.unwrapped.state for e in envs])
        np.testing.assert_allclose(native.final_obs.numpy(), expected, rtol=RTOL, atol=1e-12, err_msg=f"step {t}")
        if fused:
            assert np.array_equal(native.final_obs.numpy(), expected), t
        term = np.array([r[2] for r in results])
        trunc = np.array([r[3] for r in results])
        assert np.array_equal(step.terminated.numpy(), term), t
        assert np.array_equal(step.done.numpy(), term | trunc), t
        assert np.array_equal(step.reward.numpy(), np.array([r[1] for r in results], dtype=np.float32)), t
        counts["terminated"] += int(term.sum())
        counts["truncated"] += int((trunc & ~term).sum())
        for i in np.flatnonzero(term | trunc):
            envs[i].reset()
            native.state[i] = torch.from_numpy(envs[i].unwrapped.state.copy())
        assert step.valid.all()
    assert counts["terminated"] > 100 and counts["truncated"] >= n // 2 * (steps // 600)


def test_cartpole_reset_distribution_bounds_and_autoreset():
    env = TorchCartPole(100_000, dtype=torch.float64)
    s = env.reset(seed=3).clone()
    assert s.min() >= -0.05 and s.max() < 0.05
    assert s.min() < -0.0499 and s.max() > 0.0499  # the whole interval is used
    assert abs(s.mean().item()) < 1e-3 and abs(s.std().item() - 0.1 / 12**0.5) < 1e-3
    # Done envs come back with a fresh in-bounds state and a zeroed step counter.
    env.set_state(torch.tensor([[2.39, 5.0, 0.0, 0.0]]).expand(100_000, 4))
    step = env.step(torch.ones(100_000, dtype=torch.int64))
    assert step.done.all() and step.terminated.all() and (env.elapsed == 0).all()
    assert step.obs.abs().max() < 0.05 and (env.final_obs[:, 0] > 2.4).all()


def test_cartpole_float32_stays_close_to_float64():
    n = 4096
    e64, e32 = TorchCartPole(n, dtype=torch.float64), TorchCartPole(n, dtype=torch.float32)
    start = e64.reset(seed=0).clone()
    e32.reset(seed=0)
    e32.set_state(start.float())
    g = torch.Generator().manual_seed(0)
    worst, alive = 0.0, torch.ones(n, dtype=torch.bool)
    for _ in range(20):
        a = torch.randint(0, 2, (n,), generator=g)
        s64, s32 = e64.step(a), e32.step(a)
        # Compare the pre-reset states of episodes that have not ended yet in either dtype
        # (after a reset the two draw different fresh states).
        diff = (e64.final_obs - e32.final_obs.double()).abs().max(1).values
        worst = max(worst, diff[alive].max().item())
        alive &= ~(s64.done | s32.done)
    assert alive.sum() > n // 4
    assert worst < 1e-5, worst


def test_native_backend_is_auto_for_its_ids():
    assert set(native_env_ids()) >= {"CartPole-v1", "CartPole-v0"}
    assert resolve_backend("CartPole-v1") == "torch"
    env = make_env("CartPole-v0", 3, backend="auto", dtype=torch.float64)
    assert isinstance(env, TorchCartPole) and env.info.max_episode_steps == 200
    assert env.reset(seed=0).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cartpole_cuda_matches_cpu_dynamics():
    cpu = TorchCartPole(256, dtype=torch.float64)
    gpu = TorchCartPole(256, device="cuda", dtype=torch.float64)
    s = cpu.reset(seed=0).clone()
    gpu.reset(seed=0)
    gpu.set_state(s.cuda())
    a = torch.randint(0, 2, (256,), generator=torch.Generator().manual_seed(0))
    c, g = cpu.step(a), gpu.step(a.cuda())
    torch.testing.assert_close(gpu.final_obs.cpu(), cpu.final_obs, rtol=RTOL, atol=1e-12)
    assert torch.equal(c.done, g.done.cpu())


@pytest.mark.parametrize("n", [64, 1024])  # reset by selection / by index (SELECT_RESET_MAX_ENVS)
def test_fused_cartpole_resets_seeds_and_refusals(n):
    def run(seed):
        env = make_env("CartPole-v1", n, kernel="cpp")
        obs = [env.reset(seed=seed).clone()]
        g = torch.Generator().manual_seed(0)
        dones = 0
        for _ in range(120):
            step = env.step(torch.randint(0, 2, (n,), generator=g))
            obs.append(step.obs.clone())
            d = step.done
            dones += int(d.sum())
            # Done copies come back fresh with a zeroed counter; final_obs keeps where they ended.
            assert (step.obs[d].abs() <= 0.05).all() and (env.elapsed[d] == 0).all()
            assert (
                (env.final_obs[step.terminated].abs() > torch.tensor([2.4, float("inf"), 0.2094, float("inf")]))
                .any(1)
                .all()
            )
            assert step.valid.all()
        assert dones > n  # random actions end episodes every ~20 steps
        return torch.stack(obs)

    before = torch.random.get_rng_state()
    a = run(5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, run(5)) and not torch.equal(a, run(6))


def test_the_compiled_kernel_is_refused_where_it_does_not_exist():
    ids = "CartPole-v1, CartPole-v0, Acrobot-v1, MountainCar-v0, MountainCarContinuous-v0, Pendulum-v1"
    assert set(kernel_env_ids("cpp")) == set(ids.split(", ")) == set(native_env_ids())  # every native env
    with pytest.raises(ConfigError, match="env_kernel: 'cpp' exists for the native \\(backend torch\\) .* only; got"):
        make_env("Acrobot-v1", 2, backend="sync", kernel="cpp")
    with pytest.raises(ConfigError, match="only; got CartPole-v1 with backend sync"):
        make_env("CartPole-v1", 2, backend="sync", kernel="cpp")
    with pytest.raises(ValueError, match="kernel must be one of torch, cpp for Acrobot-v1, got 'numba'"):
        make_env("Acrobot-v1", 2).set_kernel("numba")
    assert make_env("Acrobot-v1", 2, kernel="cpp").kernel == "cpp"


def test_trainer_with_the_fused_kernel_matches_its_config():
    from fastpg import Config, Trainer

    cfg = Config(env_kernel="cpp", device="cpu", num_envs=8, num_steps=64, max_epochs=2, eval_episodes=4, quiet=True)
    with Trainer(cfg) as tr:
        ms = list(tr.run())
        assert tr.env.kernel == "cpp" and len(ms) == 2 and ms[-1]["episodes"] > 0
