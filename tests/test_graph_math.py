"""The CUDA graph's update math (``fastpg.graph.masked_loss_and_gradients``: every ``[T, N]``
entry, the ones outside the loss multiplied by 0) against the generic update on the same batch.
Plain torch, so it runs on the CPU; the capture itself is tests/test_graph.py's (GPU)."""

import pytest
import torch

from fastpg import Config, Trainer
from fastpg.graph import masked_loss_and_gradients
from fastpg.policy import MLPPolicy
from fastpg.update import reinforce_update

CASES = {
    "discrete": dict(),
    "mean, entropy, clipping": dict(baseline="mean", entropy_coef=0.01, max_grad_norm=0.1),
    "value baseline": dict(baseline="value", value_coef=0.7),
    "value, bootstrap, no normalization": dict(baseline="value", unfinished="bootstrap", normalize_returns=False),
    "Box, value": dict(env="Pendulum-v1", baseline="value", entropy_coef=0.01),
    "Box, bootstrap": dict(env="MountainCarContinuous-v0", baseline="value", unfinished="bootstrap"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_masked_update_is_the_generic_update_on_the_same_batch(case):
    cfg = Config(num_envs=8, num_steps=64, hidden_sizes=(16,), fused="off", quiet=True, eval_episodes=0, seed=2)
    cfg = cfg.replace(**CASES[case])
    with Trainer(cfg) as tr:
        for _ in range(3):  # later epochs start mid-episode (Pendulum's first ends in the fourth)
            tr.epoch()
        tr.collect()
        generic, bad = reinforce_update(tr.policy, tr.optimizer, tr.buf, tr.carry.obs, tr.settings, apply=False)
        assert bad is None
        want = [p.grad.clone() for p in tr.policy.parameters()]
        policy = MLPPolicy.from_config(cfg, tr.env.info)
        policy.load_state_dict(tr.policy.state_dict())
        totals, frac = masked_loss_and_gradients(policy, tr.buf.clone(), tr.settings, tr.carry.obs)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(policy.parameters()), cfg.max_grad_norm)
        for (name, p), w in zip(policy.named_parameters(), want):
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-6, msg=name)
        got = dict(zip(("loss", "policy_loss", "value_loss", "entropy"), totals)) | {"mask_frac": frac}
        for key, value in got.items():
            torch.testing.assert_close(value.float(), generic[key].float(), rtol=1e-4, atol=1e-6, msg=key)
        if cfg.unfinished == "mask":
            assert 0.0 < frac < 1.0  # the case has entries outside the loss


def test_the_graph_admits_box_actions_and_the_value_network_only_once_checked_on_a_gpu(monkeypatch):
    import fastpg.graph
    from fastpg.envs import make_env
    from fastpg.graph import graph_problem

    cuda = torch.device("cuda")  # graph_problem only reads the device's type
    for changes in (dict(baseline="value"), dict(env="Pendulum-v1")):
        cfg = Config(**changes)
        env = make_env(cfg.env, 4)
        policy = MLPPolicy.from_config(cfg, env.info)
        assert "not yet checked on a GPU" in graph_problem(cfg, env, policy, cuda)
        monkeypatch.setattr(fastpg.graph, "GRAPH_BOX_AND_VALUE", True)
        assert graph_problem(cfg, env, policy, cuda) in (
            None,
            "this torch cannot register generators with a CUDA graph",
        )
        monkeypatch.setattr(fastpg.graph, "GRAPH_BOX_AND_VALUE", False)
    cfg = Config()
    env = make_env(cfg.env, 4)
    assert graph_problem(cfg, env, MLPPolicy.from_config(cfg, env.info), cuda) in (
        None,
        "this torch cannot register generators with a CUDA graph",
    )
