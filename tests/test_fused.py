"""The fused epoch computes what the generic path computes (fastpg.fused, fastpg/csrc/kernels.cpp)."""

import dataclasses
import math

import pytest
import torch

from fastpg import Config, Trainer
from fastpg.envs import EnvInfo, TorchCartPole, make_env
from fastpg.errors import KernelBuildError, NonFiniteError
from fastpg.fused import FusedEpoch, fused_problem
from fastpg.policy import LOG_STD_MAX, LOG_STD_MIN, MLPPolicy
from fastpg.update import reinforce_update

SMALL = dict(num_envs=8, num_steps=64, device="cpu", eval_episodes=0, quiet=True)


def _metrics_without_timing(ms):
    timing = {"wall_s", "sps", "collect_s", "update_s"}
    return [{k: v for k, v in m.items() if k not in timing} for m in ms]


# -- the automatic choice and the flag ------------------------------------------------------------


def test_fused_is_chosen_automatically_where_it_applies_and_off_forces_the_generic_path():
    with Trainer(Config(**SMALL)) as tr:
        assert isinstance(tr.fused, FusedEpoch)
    with Trainer(Config(**SMALL, fused="off")) as tr:
        assert tr.fused is None
    with Trainer(Config(**SMALL, env="Acrobot-v1")) as tr:
        assert isinstance(tr.fused, FusedEpoch) and tr.fused.env_name == "acrobot"
    for changes in (dict(env="Pendulum-v1"), dict(baseline="value"), dict(env="MountainCar-v0")):
        with Trainer(Config(**SMALL, **changes)) as tr:
            assert isinstance(tr.fused, FusedEpoch), changes
    for changes in (dict(activation="gelu"), dict(backend="vector")):
        with Trainer(Config(**SMALL, **changes)) as tr:
            assert tr.fused is None, changes


def test_fused_problem_names_the_reason():
    env = make_env("CartPole-v1", 2)
    policy = MLPPolicy(env.info, (8,), "relu")
    assert fused_problem(Config(), env, policy, torch.device("cpu")) is None
    assert "off" in fused_problem(Config(fused="off"), env, policy, torch.device("cpu"))
    assert "CPU" in fused_problem(Config(), env, policy, torch.device("cuda"))
    assert "elu" in fused_problem(Config(), env, MLPPolicy(env.info, (8,), "elu"), torch.device("cpu"))
    assert "value" in fused_problem(Config(), env, MLPPolicy(env.info, (8,), value_head=True), torch.device("cpu"))
    with_value = Config(baseline="value")
    assert fused_problem(with_value, env, MLPPolicy(env.info, (8,), value_head=True), torch.device("cpu")) is None
    assert "value" in fused_problem(with_value, env, policy, torch.device("cpu"))
    custom = torch.nn.Sequential(torch.nn.Linear(4, 2))
    assert "MLPPolicy" in fused_problem(Config(), env, custom, torch.device("cpu"))


def test_a_kernel_that_cannot_be_built_falls_back_to_the_generic_path(monkeypatch):
    def fail():
        raise KernelBuildError("no compiler here")

    monkeypatch.setattr("fastpg._kernels.kernels", fail)
    with pytest.warns(RuntimeWarning, match="no compiler here.*generic path"), Trainer(Config(**SMALL)) as tr:
        assert tr.fused is None
        assert tr.epoch()["epoch"] == 1


def test_a_built_kernel_module_is_imported_without_torchs_build_step(tmp_path, monkeypatch):
    """Once built, fastpg's kernels are imported directly from torch's extension directory (found
    as torch finds it), without importing torch.utils.cpp_extension; a module being built (torch's
    lock file) or one that does not import is left to torch's build."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from torch.utils.cpp_extension import _get_build_directory

    from fastpg import _kernels

    module = _kernels.kernels()  # built here if it is not yet
    name = f"fastpg_kernels_{_kernels._digest()}"
    assert Path(module.__file__) == Path(_get_build_directory(name, verbose=False)) / f"{name}.so"
    assert _kernels._extensions_root() / name == Path(_get_build_directory(name, verbose=False))
    code = (
        "import sys, torch\nfrom fastpg._kernels import kernels\nm = kernels()\n"
        "print(hasattr(m, 'collect'), 'torch.utils.cpp_extension' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "False"], done.stderr[-2000:]

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert _kernels._extensions_root() / name == Path(_get_build_directory(name, verbose=False))
    assert _kernels._built_module(name) is None  # not built under this root
    shutil.copy(module.__file__, tmp_path / name / f"{name}.so")
    assert hasattr(_kernels._built_module(name), "update_grads")
    (tmp_path / name / "lock").touch()  # torch's build holds it
    assert _kernels._built_module(name) is None
    broken = tmp_path / "broken"  # (a library loaded above must not be rewritten in place)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(broken))
    (broken / name).mkdir(parents=True)
    (broken / name / f"{name}.so").write_bytes(b"not a library")
    assert _kernels._built_module(name) is None


# -- the collect ----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_envs", [8, 600])  # resets drawn for every copy / for the done ones (> 512)
def test_fused_collect_is_the_generic_collect_with_the_same_env_kernel(num_envs):
    """Same generators, same draws, the same compiled dynamics: the same epochs, step for step
    (a sampled action could only differ where float rounding of the logits flips a comparison)."""
    cfg = Config(**{**SMALL, "num_envs": num_envs, "num_steps": 32}, env_kernel="cpp")
    with Trainer(cfg) as fused, Trainer(cfg.replace(fused="off")) as generic:
        assert fused.fused is not None and generic.fused is None
        for _ in range(3):
            fused.collect()
            generic.collect()
            for key in ("obs", "action", "reward", "done", "terminated", "valid", "episode_return", "episode_length"):
                assert torch.equal(fused.buf[key], generic.buf[key]), key
            assert torch.equal(fused.carry.obs, generic.carry.obs)
            assert torch.equal(fused.env.elapsed, generic.env.elapsed)
            assert torch.equal(fused.env.final_obs, generic.env.final_obs)


@pytest.mark.parametrize("num_envs", [6, 520])
def test_fused_env_transitions_are_exact_in_float64(num_envs):
    """Replaying the fused epoch's actions through the compiled CartPole step (bit-identical to
    gymnasium in float64, tests/test_native_envs.py) gives the same states bit for bit."""
    cfg = Config(**{**SMALL, "num_envs": num_envs, "num_steps": 200}, env_dtype="float64")
    with Trainer(cfg) as tr:
        replay = TorchCartPole(num_envs, dtype=torch.float64, kernel="cpp")
        start = replay.reset(seed=cfg.seed).clone()  # the trainer's env was reset with the same seed
        assert torch.equal(start, tr.env.state)
        tr.collect()
        buf = tr.buf
        for t in range(cfg.num_steps):
            step = replay.step(buf["action"][t])
            assert torch.equal(step.done, buf["done"][t]) and torch.equal(step.terminated, buf["terminated"][t])
            nxt = buf["obs"][t + 1] if t + 1 < cfg.num_steps else tr.carry.obs.float()
            assert torch.equal(step.obs.float(), nxt)
        assert buf["done"].any()
        assert torch.equal(replay.state, tr.env.state) and replay.state.dtype == torch.float64
        assert torch.equal(replay.final_obs, tr.env.final_obs)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1"])
def test_fused_steps_are_gymnasiums_in_float64(env_id):
    """Each fused step from the exact float64 state, against gymnasium's own step from that state:
    CartPole bit for bit; Acrobot bit for bit but for the last bit of a cos/sin (its 4 Runge-Kutta
    stages call 12 of them; numpy's and the C library's differ for a few inputs in 1000)."""
    import gymnasium as gym
    import numpy as np

    cfg = Config(**{**SMALL, "num_envs": 12, "num_steps": 1}, env=env_id, env_dtype="float64")
    ref = gym.make(env_id).unwrapped
    ref.reset(seed=0)
    exact = 0
    with Trainer(cfg) as tr:
        for _ in range(150):
            before = tr.env.state.clone()  # [N, 4] float64
            tr.collect()
            after = tr.env.kernel_state().t()  # after resets
            reached = tr.env._final.t()  # the state each copy reached, before any reset
            for n in range(cfg.num_envs):
                ref.state, ref.steps_beyond_terminated = before[n].numpy().copy(), None
                obs, reward, term, _, _ = ref.step(int(tr.buf["action"][0, n]))
                state = np.asarray(ref.state, dtype=np.float64)
                if env_id == "CartPole-v1":
                    assert np.array_equal(state, reached[n].numpy())
                else:
                    np.testing.assert_allclose(reached[n].numpy(), state, rtol=1e-13, atol=1e-15)
                    exact += np.array_equal(state, reached[n].numpy())
                assert term == bool(tr.buf["terminated"][0, n]) and reward == float(tr.buf["reward"][0, n])
                if not tr.buf["done"][0, n]:  # the next observation is gymnasium's, rounded as it rounds
                    assert torch.equal(after[n], reached[n])
                    np.testing.assert_allclose(tr.carry.obs[n].float().numpy(), obs, rtol=1e-6, atol=1e-7)
    assert env_id == "CartPole-v1" or exact >= 0.99 * 150 * cfg.num_envs


@pytest.mark.parametrize(
    "num_actions, hidden, activation", [(2, (16,), "relu"), (2, (8, 8), "tanh"), (3, (32,), "tanh")]
)
def test_fused_sampling_has_the_policy_distribution(num_actions, hidden, activation):
    """Frequencies of the compiled sampler against the policy's softmax, 40,000 draws per state."""
    from fastpg._kernels import kernels

    info = EnvInfo("test", (4,), True, num_actions, ())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        policy = MLPPolicy(info, hidden, activation)
        obs = torch.randn(5, 4) * 2
    with torch.no_grad():
        probs = torch.softmax(policy.net(obs), -1).double()  # [5, A]
    linears = [m for m in policy.net if isinstance(m, torch.nn.Linear)]
    reps = 40_000
    actions = kernels().mlp_act(
        [m.weight for m in linears], [m.bias for m in linears], {"relu": 0, "tanh": 1}[activation],
        obs.repeat(reps, 1), torch.Generator().manual_seed(0),
    )  # fmt: skip
    freq = torch.nn.functional.one_hot(actions.view(reps, 5), num_actions).double().mean(0)  # [5, A]
    sigma = (probs * (1 - probs) / reps).sqrt()
    assert ((freq - probs).abs() <= 5 * sigma + 1e-12).all(), (freq, probs)
    assert (probs > 0.05).any() and (probs < 0.95).any()  # the check has something to check


# -- the update -----------------------------------------------------------------------------------

UPDATE_CASES = [
    dict(),
    dict(activation="tanh", hidden_sizes=(8, 8)),
    dict(baseline="mean", normalize_returns=False),
    dict(entropy_coef=0.01, max_grad_norm=0.05),
    dict(hidden_sizes=(20,), normalize_returns=False, max_grad_norm=0.5),
    dict(hidden_sizes=(0,)),  # a linear policy
    dict(env="Acrobot-v1", num_envs=4, num_steps=600, entropy_coef=0.01),  # three actions
    dict(env="MountainCar-v0", num_steps=200),
    dict(baseline="value"),
    dict(baseline="value", unfinished="bootstrap", value_coef=0.7),
    dict(baseline="value", normalize_returns=False, max_grad_norm=0.5, hidden_sizes=(8, 8), activation="tanh"),
    # Box actions: the Gaussian's mean and log-std
    dict(env="Pendulum-v1", num_steps=200, hidden_sizes=(16, 16), activation="tanh"),
    dict(env="Pendulum-v1", num_steps=200, baseline="value", entropy_coef=0.01, hidden_sizes=(16, 16)),
    dict(env="Pendulum-v1", num_steps=200, log_std_init=2.5, entropy_coef=0.01),  # log-std clamped: no gradient
    dict(env="MountainCarContinuous-v0", num_steps=120, baseline="value", unfinished="bootstrap", log_std_init=1.0),
]


@pytest.mark.parametrize(
    "changes", UPDATE_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults"
)
def test_fused_update_is_the_autograd_update_on_the_same_batch(changes):
    cfg = Config(**{**SMALL, "hidden_sizes": (16,), **changes})
    with Trainer(cfg) as tr:
        tr.collect()
        assert tr.fused is not None and (tr.buf["done"].any() or cfg.unfinished == "bootstrap")
        policy_copy = MLPPolicy.from_config(cfg, tr.env.info)
        policy_copy.load_state_dict(tr.policy.state_dict())
        opt_copy = torch.optim.Adam(policy_copy.parameters(), lr=cfg.lr)
        generic, bad = reinforce_update(policy_copy, opt_copy, tr.buf.clone(), tr.carry.obs, tr.settings)
        assert bad is None
        generic_grads = [p.grad.clone() for p in policy_copy.parameters()]
        fused, bad = tr.fused.update(tr.optimizer, tr.buf, tr.settings, last_obs=tr.carry.obs)
        assert bad is None
        for a, b in zip(tr.fused.grads, generic_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        for key in ("loss", "policy_loss", "value_loss", "entropy", "grad_norm", "mask_frac", "skipped"):
            torch.testing.assert_close(fused[key].float(), generic[key].float(), rtol=1e-4, atol=1e-6, msg=key)
        for a, b in zip(tr.policy.parameters(), policy_copy.parameters()):  # after one Adam step each
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_update_skips_a_nonfinite_update_as_the_generic_one_does():
    with Trainer(Config(**SMALL, max_bad_updates=2)) as tr:
        tr.epoch()
        with torch.no_grad():
            tr.policy.net[2].bias[0] = math.inf  # the logits, hence the loss, become non-finite
        before = [p.detach().clone() for p in tr.policy.parameters()]
        adam_steps = tr.optimizer.state_dict()["state"][0]["step"].item()
        assert tr.epoch()["update_skipped"] is True
        assert all(torch.equal(a, b) for a, b in zip(before, tr.policy.parameters()))
        assert tr.optimizer.state_dict()["state"][0]["step"].item() == adam_steps
        with pytest.raises(NonFiniteError, match=r"2 updates in a row had a non-finite loss"):
            tr.epoch()


@pytest.mark.parametrize("nan", [False, True])
def test_the_fused_epoch_reads_its_epoch_as_the_generic_path_does(nan):
    """One kernel call reads what ``finished_episodes``, the valid-step count and
    ``nonfinite_envs`` read: the same episodes in the same order, the same counts and copies."""
    from fastpg.rollout import finished_episodes, nonfinite_envs

    with Trainer(Config(**SMALL)) as tr:
        for _ in range(2):  # the second epoch starts mid-episode
            tr.collect()
        if nan:
            tr.buf["obs"][2, 3, 1] = math.inf
        returns, lengths, valid, bad = tr.fused.epoch_data(tr.buf)
        assert returns and (returns, lengths) == finished_episodes(tr.buf)
        assert valid == int(tr.buf["valid"].sum()) and bad == nonfinite_envs(tr.buf) == ([3] if nan else [])


def test_a_skipped_first_update_leaves_no_optimizer_state_as_the_generic_one():
    for fused in ("auto", "off"):
        with Trainer(Config(**SMALL, fused=fused)) as tr:
            with torch.no_grad():
                tr.policy.net[2].bias[0] = math.inf
            assert tr.epoch()["update_skipped"] is True
            assert tr.optimizer.state_dict()["state"] == {}, fused


def test_the_kernels_adam_step_is_torchs_bit_for_bit(monkeypatch):
    """The kernel takes Adam's step, the first included (it creates the state as ``Adam.step``
    does): parameters and optimizer state equal, bit for bit, those of ``optimizer.step()`` (the
    kernel's step refused: the run in Python)."""
    cfg = Config(**SMALL, seed=4, max_epochs=5, max_grad_norm=0.5)
    runs = []
    for kernel_adam in (True, False):
        with Trainer(cfg) as tr:
            if not kernel_adam:
                monkeypatch.setattr(tr.fused, "adam_job", lambda optimizer: None)
            python_steps = 0
            step = tr.optimizer.step

            def counted(*args, _step=step, **kwargs):
                nonlocal python_steps
                python_steps += 1
                return _step(*args, **kwargs)

            monkeypatch.setattr(tr.optimizer, "step", counted)
            metrics = _metrics_without_timing(list(tr.run()))
            state = [v.clone() for st in tr.optimizer.state.values() for v in st.values()]
            runs.append((metrics, [p.detach().clone() for p in tr.policy.parameters()], state, python_steps))
    (m_k, p_k, s_k, steps_k), (m_p, p_p, s_p, steps_p) = runs
    assert steps_k == 0 and steps_p == 5  # the kernel took every step
    assert m_k == m_p and len(s_k) == len(s_p) == 3 * len(p_k)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(p_k + s_k, p_p + s_p))


def test_the_kernel_leaves_other_optimizers_to_their_own_step():
    with Trainer(Config(**SMALL)) as tr:
        tr.epoch()
        assert tr.fused.adam_job(tr.optimizer) is not None
        other = torch.optim.Adam(tr.policy.parameters(), lr=0.01, weight_decay=0.1)
        other.step()  # its state exists: only its options stand in the way
        assert tr.fused.adam_job(other) is None
        assert tr.fused.adam_job(torch.optim.SGD(tr.policy.parameters(), lr=0.1)) is None
        handle = tr.optimizer.register_step_post_hook(lambda *args: None)
        assert tr.fused.adam_job(tr.optimizer) is None
        handle.remove()


def test_fused_nonfinite_names_match_the_generic_ones():
    with Trainer(Config(**SMALL)) as tr:
        name = tr.fused._nonfinite_name
        assert name(0, -1) is None and name(1, -1) == "loss" and name(2, -1) == "gradient norm"
        assert name(2, 1) == "gradient (of net.0.bias)" and name(3, 2) == "parameter (net.2.weight)"


# -- whole runs -----------------------------------------------------------------------------------


def test_fused_runs_are_deterministic_with_one_seed():
    cfg = Config(**SMALL, seed=5, max_epochs=4)
    runs = []
    for _ in range(2):
        with Trainer(cfg) as tr:
            runs.append(_metrics_without_timing(list(tr.run())))
    assert runs[0] == runs[1] and len(runs[0]) == 4


def test_fused_and_generic_runs_follow_the_same_trajectory_at_first():
    """Same draws and the same compiled dynamics: the episodes of the first epochs coincide; the
    updates differ only by float rounding, so the runs agree to rounding until they drift."""
    cfg = Config(**SMALL, env_kernel="cpp", max_epochs=3)
    with Trainer(cfg) as fused, Trainer(cfg.replace(fused="off")) as generic:
        a, b = list(fused.run()), list(generic.run())
    for ma, mb in zip(a, b):
        assert ma["episodes"] == mb["episodes"] and ma["return_mean"] == mb["return_mean"]
        assert math.isclose(ma["loss"], mb["loss"], rel_tol=1e-3, abs_tol=1e-5)


def test_fused_run_resumes_bit_for_bit(tmp_path):
    from fastpg import load_checkpoint, save_checkpoint

    cfg = Config(**SMALL, seed=2)
    with Trainer(cfg) as tr:
        whole = _metrics_without_timing([tr.epoch() for _ in range(4)])
    with Trainer(cfg) as tr:
        first = _metrics_without_timing([tr.epoch() for _ in range(2)])
        save_checkpoint(tr.state_dict(), tmp_path)
    with Trainer(cfg) as tr:
        tr.load_state_dict(load_checkpoint(tmp_path))
        rest = _metrics_without_timing([tr.epoch() for _ in range(2)])
    assert first + rest == whole


def test_fused_float64_env_carries_float64_observations():
    cfg = dataclasses.replace(Config(**SMALL), env_dtype="float64")
    with Trainer(cfg) as tr:
        tr.epoch()
        assert tr.carry.obs.dtype == torch.float64 and tr.fused is not None


# -- every env kernel -----------------------------------------------------------------------------

KERNEL_ENVS = ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1"]


@pytest.mark.parametrize("env_id", KERNEL_ENVS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_env_kernel_resets_draw_what_the_torch_env_draws(env_id, dtype):
    """``reset(gen, draws, n)`` is ``draws`` calls of the Python env's ``_sample_reset(n)``, bit for bit."""
    env = make_env(env_id, 7, dtype=dtype)
    name = type(env).env_kernel.name
    env.generator.manual_seed(5)
    want = torch.stack([env._sample_reset(7) for _ in range(3)])
    float64 = env.state_dtype == torch.float64
    got = type(env).env_kernel.module().env_reset(name, torch.Generator().manual_seed(5), 3, 7, float64)
    assert torch.equal(got.to(want.dtype), want)


@pytest.mark.parametrize("env_id", KERNEL_ENVS)
@pytest.mark.parametrize("num_envs", [6, 520])  # resets drawn for every copy / for the done ones
def test_fused_epochs_replay_through_the_env_bit_for_bit(env_id, num_envs):
    """The fused epoch's actions (clipped as every backend clips them), replayed through the env's
    own compiled step (gymnasium's in float64: tests/test_native_classic_control.py) and its
    resets, give the epoch's observations, rewards, flags and final state bit for bit."""
    from fastpg.envs.base import action_clipper

    steps = make_env(env_id, 1).max_episode_steps + 20  # every copy's first episode ends
    cfg = Config.for_env(env_id, **{**SMALL, "num_envs": num_envs, "num_steps": steps}, env_dtype="float64")
    with Trainer(cfg) as tr:
        assert isinstance(tr.fused, FusedEpoch)
        clip = action_clipper(tr.env.info, "cpu")
        replay = make_env(env_id, num_envs, dtype=torch.float64, kernel="cpp")
        replay.reset(seed=cfg.seed)
        assert torch.equal(replay.state, tr.env.state)
        tr.collect()
        buf = tr.buf
        for t in range(cfg.num_steps):
            step = replay.step(clip(buf["action"][t]))
            assert torch.equal(step.done, buf["done"][t]) and torch.equal(step.terminated, buf["terminated"][t])
            assert torch.equal(step.reward.float(), buf["reward"][t])
            nxt = buf["obs"][t + 1] if t + 1 < cfg.num_steps else tr.carry.obs.float()
            assert torch.equal(step.obs.float(), nxt), t
        assert buf["done"].any()
        assert torch.equal(replay.state, tr.env.state) and torch.equal(replay.final_obs, tr.env.final_obs)


def test_fused_gaussian_sampling_has_the_policy_distribution():
    """The fused collect's Box actions are the policy's Gaussian: (a - mean(obs)) / std over 64,000
    draws is standard normal (Kolmogorov-Smirnov distance and the first two moments)."""
    import math as m

    cfg = Config.for_env("Pendulum-v1", **{**SMALL, "num_envs": 64, "num_steps": 1000}, log_std_init=-0.5)
    with Trainer(cfg) as tr:
        with torch.no_grad():
            tr.policy.log_std.copy_(torch.tensor([0.3]))
        tr.collect()
        with torch.no_grad():
            mean = tr.policy.net(tr.buf["obs"]).squeeze(-1)
        z = ((tr.buf["action"].squeeze(-1) - mean) / m.exp(0.3)).flatten().double()
    n = z.numel()
    assert abs(z.mean().item()) < 4 / m.sqrt(n) and abs(z.std().item() - 1) < 4 / m.sqrt(2 * n)
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    cdf = 0.5 * (1 + torch.erf(z.sort().values / m.sqrt(2)))
    assert (ecdf - cdf).abs().max().item() < 1.63 / m.sqrt(n)  # KS at the 1% level


@pytest.mark.parametrize("num_envs", [5, 32])  # N * dim not a multiple of 16: a draw per step; else one per epoch
def test_fused_gaussian_noise_is_the_generic_paths_draws(num_envs):
    """The normals behind the fused collect's Box actions are the draws the generic path makes,
    [N, dim] per step from the trainer's generator, in that order (one [T, N dim] draw where
    N dim is a multiple of 16 gives the same numbers), and the generator ends where it would."""
    cfg = Config.for_env("Pendulum-v1", **{**SMALL, "num_envs": num_envs, "num_steps": 50})
    with Trainer(cfg) as tr:
        assert isinstance(tr.fused, FusedEpoch)
        reference = torch.Generator().set_state(tr.generator.get_state())
        want = torch.stack([torch.empty(num_envs, 1).normal_(generator=reference) for _ in range(cfg.num_steps)])
        tr.collect()
        with torch.no_grad():
            mean = tr.policy.net(tr.buf["obs"])
            std = tr.policy.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        got = (tr.buf["action"] - mean) / std
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        assert torch.equal(tr.generator.get_state(), reference.get_state())


def test_the_fused_path_runs_every_native_env_and_the_value_baseline():
    for env_id in KERNEL_ENVS:
        with Trainer(Config.for_env(env_id, **SMALL)) as tr:
            assert isinstance(tr.fused, FusedEpoch), env_id
            tr.epoch()
