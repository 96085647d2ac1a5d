"""The options MuJoCo-class tasks need (issue 22): observation normalization, the linear learning-rate
schedule, orthogonal init and the last-layer scale, and tanh action bounding; each against its
specification, through checkpoints and loaded policies, and on the paths that cannot run it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_reliability import _epochs

from fastpg import Config, ConfigError, Trainer, load_policy, train
from fastpg.checkpoint import load_checkpoint
from fastpg.envs.base import action_clipper
from fastpg.normalization import OBS_CLIP, ObsNormalizer, running_moments_reference

PENDULUM = dict(env="Pendulum-v1", num_envs=8, num_steps=50, eval_episodes=0, quiet=True)


# -- observation normalization -----------------------------------------------------------------------


def test_running_statistics_match_the_specification_over_masked_batches():
    g = torch.Generator().manual_seed(0)
    norm = ObsNormalizer(3)
    kept = []
    for k in range(6):
        x = torch.randn(7, 5, 3, generator=g) * (k + 1) + 10 * k  # drifting, widening batches
        mask = torch.rand(7, 5, generator=g) > 0.3
        if k == 3:
            mask[:] = False  # an epoch without a valid step changes nothing
        norm.update(x, mask)
        kept.append(x[mask])
    mean, var = running_moments_reference(kept)
    torch.testing.assert_close(norm.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm.var, var, rtol=1e-12, atol=1e-12)
    assert norm.count == sum(len(b) for b in kept)
    x = torch.randn(4, 3, generator=g) * 5 + 20
    want = ((x.double() - mean) / (var + 1e-8).sqrt()).clamp(-OBS_CLIP, OBS_CLIP).float()
    torch.testing.assert_close(norm(x), want)


def test_before_any_update_the_normalizer_only_clips():
    x = torch.tensor([[0.5, -3.0, 40.0]])
    assert torch.equal(ObsNormalizer(3)(x), torch.tensor([[0.5, -3.0, OBS_CLIP]]))


def test_a_run_merges_every_valid_step_after_each_update_and_acts_with_the_statistics_before():
    cfg = Config(**PENDULUM, obs_norm=True, max_epochs=3)
    with Trainer(cfg) as tr:
        norm = tr.policy.obs_normalizer
        seen = []
        for _ in range(3):
            before = norm.mean.clone()
            tr.collect()
            tr.collected()
            assert torch.equal(norm.mean, before)  # collecting does not move the statistics
            seen.append(tr.buf["obs"][tr.buf["valid"]].clone())
            tr.update()
        mean, var = running_moments_reference(seen)
        torch.testing.assert_close(norm.mean, mean)
        torch.testing.assert_close(norm.var, var)


def test_the_statistics_are_saved_resumed_and_applied_by_a_loaded_policy(tmp_path):
    full, part, ckpt = tmp_path / "full.jsonl", tmp_path / "part.jsonl", tmp_path / "ckpt"
    opts = dict(**PENDULUM, obs_norm=True, lr_schedule="linear", seed=2)
    train(Config(**opts, max_epochs=6, metrics_file=full))
    train(Config(**opts, max_epochs=3, metrics_file=part, checkpoint_dir=ckpt))
    saved = load_checkpoint(ckpt)["policy"]
    assert saved["obs_normalizer.count"] == 3 * 8 * 50
    train(Config(**opts, max_epochs=6, metrics_file=part, resume=ckpt))
    assert _epochs(part) == _epochs(full)  # the statistics and the schedule continue bit for bit
    policy = load_policy(ckpt)
    obs = torch.tensor([[1.0, 0.0, 5.0]])
    norm = policy.module.obs_normalizer
    assert norm is not None and norm.count == 6 * 8 * 50
    normalized = ((obs - norm.shift) * norm.scale).clamp(-OBS_CLIP, OBS_CLIP)
    want = policy.module.net(normalized)  # the Gaussian mean of the normalized observation
    torch.testing.assert_close(policy.act(obs, deterministic=True), want.clamp(-2, 2))


def test_the_fused_epoch_leaves_normalization_and_tanh_to_the_generic_path():
    for opts, why in (({"obs_norm": True}, "--obs-norm"), ({"action_bound": "tanh"}, "action bound 'tanh'")):
        with Trainer(Config(**PENDULUM, max_epochs=1, **opts)) as tr:
            assert tr.fused is None and why in tr.epoch_notice()


# -- learning-rate schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [dict(max_env_steps=2000), dict(max_epochs=4, max_env_steps=10**6)])
@pytest.mark.parametrize("fused", ["auto", "off"])
def test_linear_schedule_decays_to_zero_over_the_budget(budget, fused):
    """The rate of each update, on the fused epoch (whose kernel takes Adam's step) and the generic
    path; both paths then hold the same parameters (the kernel read the scheduled rate)."""
    cfg = Config(**PENDULUM, lr=0.01, lr_schedule="linear", fused=fused, **budget)
    rates = []
    with Trainer(cfg) as tr:
        update = tr.update

        def spy(*args, **kwargs):
            out = update(*args, **kwargs)
            rates.append(tr.optimizer.param_groups[0]["lr"])
            return out

        tr.update = spy
        list(tr.run())
        assert (tr.fused is not None) == (fused == "auto")
    total = 5 if budget.get("max_env_steps") == 2000 else 4  # 400 steps an epoch
    assert rates == pytest.approx([0.01 * (1 - e / total) for e in range(total)])


def test_the_fused_epoch_follows_the_schedule_as_the_generic_path_does():
    params = []
    for fused in ("auto", "off"):
        with Trainer(Config(**PENDULUM, lr=0.01, lr_schedule="linear", fused=fused, max_epochs=3)) as tr:
            list(tr.run())
            params.append([p.detach().clone() for p in tr.policy.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- initialization --------------------------------------------------------------------------------------


def test_orthogonal_init_and_the_last_layer_scale():
    info_cfg = dict(**PENDULUM, hidden_sizes=(64, 64), baseline="value")
    with Trainer(Config(**info_cfg, init="orthogonal", last_layer_scale=0.01)) as tr:
        linears = [m for m in tr.policy.net if isinstance(m, torch.nn.Linear)]
        w = linears[0].weight  # [64, 3]: orthonormal columns, times sqrt(2)
        torch.testing.assert_close(w.T @ w, 2 * torch.eye(3), rtol=1e-5, atol=1e-5)
        w = linears[1].weight  # square
        torch.testing.assert_close(w @ w.T, 2 * torch.eye(64), rtol=1e-5, atol=1e-5)
        out = linears[2].weight  # [1, 64], gain 1, then scaled
        assert math.isclose(out.norm().item(), 0.01, rel_tol=1e-5)
        assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)
        value_out = [m for m in tr.policy.value_net if isinstance(m, torch.nn.Linear)][-1]
        assert math.isclose(value_out.weight.norm().item(), 1.0, rel_tol=1e-5)  # the value head is not scaled
    with Trainer(Config(**PENDULUM)) as plain, Trainer(Config(**PENDULUM, last_layer_scale=0.01)) as scaled:
        torch.testing.assert_close(scaled.policy.net[-1].weight, 0.01 * plain.policy.net[-1].weight)
        torch.testing.assert_close(scaled.policy.net[0].weight, plain.policy.net[0].weight)


def test_last_layer_scale_must_be_positive():
    with pytest.raises(ConfigError, match="last_layer_scale: must be > 0"):
        Config(last_layer_scale=0.0)


# -- action bounding ---------------------------------------------------------------------------------------


def test_tanh_squashes_into_the_bounds_and_clip_clips():
    with Trainer(Config(**PENDULUM, max_epochs=1)) as tr:
        info = tr.env.info
    a = torch.tensor([[-100.0], [-0.5], [0.0], [0.5], [100.0]])
    torch.testing.assert_close(action_clipper(info, "cpu", "tanh")(a), 2 * torch.tanh(a))  # bounds [-2, 2]
    torch.testing.assert_close(action_clipper(info, "cpu")(a), a.clamp(-2, 2))


def test_a_tanh_run_hands_the_env_squashed_actions_and_stores_the_raw_sample():
    with Trainer(Config(**PENDULUM, action_bound="tanh", log_std_init=1.5, max_epochs=1)) as tr:
        sent = []
        step = tr.env.step
        tr.env.step = lambda action: sent.append(action.clone()) or step(action)
        tr.collect()
        raw = tr.buf["action"]
    assert raw.abs().max() > 2  # wide samples: some beyond the bounds
    torch.testing.assert_close(torch.stack(sent), 2 * torch.tanh(raw))


def test_tanh_is_refused_for_discrete_actions():
    with pytest.raises(ConfigError, match="action_bound: 'tanh' bounds Box actions; CartPole-v1 has Discrete"):
        Trainer(Config(action_bound="tanh", num_envs=2, num_steps=8))


def test_every_option_round_trips_through_the_config_dict():
    cfg = Config(obs_norm=True, lr_schedule="linear", init="orthogonal", last_layer_scale=0.01, action_bound="tanh")
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
