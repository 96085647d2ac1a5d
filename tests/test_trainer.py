import dataclasses
import json
import math

import pytest
import torch

from fastpg import Config, ConfigError, Trainer, train
from fastpg.envs import make_env

EPOCH_KEYS = {
    "epoch",
    "env_steps",
    "wall_s",
    "sps",
    "episodes",
    "return_mean",
    "return_mean_100",
    "length_mean",
    "loss",
    "entropy",
    "grad_norm",
    "collect_s",
    "update_s",
}
SUMMARY_KEYS = {"solved", "time_to_solve_s", "env_steps_to_solve", "eval_return_mean", "sps"}
_TIMING = {"wall_s", "sps", "collect_s", "update_s"}


def test_smoke_train_cartpole_in_process(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    cfg = Config(
        num_envs=8, num_steps=16, max_epochs=2, seed=1, metrics_file=path, eval_episodes=5, progress_interval_s=0
    )
    summary = train(cfg)
    captured = capsys.readouterr()
    out, err = captured.out.strip().splitlines(), captured.err.strip().splitlines()
    assert len(out) == 1 and json.loads(out[0])["epochs"] == 2  # stdout: the summary alone
    notices = [line for line in err if line.startswith("fastpg: ")]  # a kernel build's, the epoch's, the result
    assert any(
        line.startswith("fastpg: epoch: fused (compiled collect and update; env kernel cartpole") for line in notices
    )
    assert notices[-1].startswith("fastpg: stopped (max_epochs) after")
    progress = [line for line in err if not line.startswith("fastpg: ")]
    assert progress[0].startswith("epoch     1 |") and progress[1].startswith("epoch     2 |")  # progress on stderr
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["header"] is True and lines[-1]["summary"] is True
    header = lines[0]
    assert header["config"] == cfg.to_dict() and header["machine"]["torch"] == torch.__version__
    assert {"date_utc", "fastpg", "gymnasium", "cpu", "device"} <= set(header["machine"])
    for i, m in enumerate(lines[1:3], start=1):
        assert EPOCH_KEYS <= set(m) and m["epoch"] == i
        assert 0 < m["env_steps"] <= 8 * 16 * i
    assert SUMMARY_KEYS <= set(summary) and summary["stop_reason"] == "max_epochs"
    assert summary["eval_episodes"] == 5 and summary["target_return"] == 475.0
    assert summary["solved"] is False and summary["time_to_solve_s"] is None


@pytest.mark.parametrize("backend", ["vector", "torch"])
def test_env_steps_count_valid_steps_only(backend):
    with Trainer(Config(num_envs=4, num_steps=64, max_epochs=1, quiet=True, backend=backend)) as tr:
        m = tr.epoch()
        valid = tr.buf["valid"]
        if backend == "vector":
            assert not valid.all()  # random episodes end, so NEXT_STEP reset steps exist
            assert m["env_steps"] == int(valid.sum()) < 4 * 64
        else:
            assert valid.all() and m["env_steps"] == 4 * 64  # native envs reset in the done step
        assert m["episodes"] == int(tr.buf["done"].sum()) > 0


def test_storage_is_not_reallocated_across_epochs():
    with Trainer(Config(num_envs=4, num_steps=8, quiet=True)) as tr:
        ptrs = {k: v.data_ptr() for k, v in tr.buf.items()}
        for _ in range(3):
            tr.epoch()
        assert {k: v.data_ptr() for k, v in tr.buf.items()} == ptrs


@pytest.mark.parametrize("backend", ["torch", "vector", "sync"])
def test_same_seed_same_metrics(backend):
    def run(seed):
        cfg = Config(num_envs=4, num_steps=32, max_epochs=3, seed=seed, backend=backend, quiet=True)
        with Trainer(cfg) as tr:
            return [{k: v for k, v in m.items() if k not in _TIMING} for m in tr.run()]

    a, b = run(0), run(0)
    assert a == b
    assert run(1) != a


@pytest.mark.parametrize(
    "changes",
    [
        dict(baseline="mean"),
        dict(baseline="value"),
        dict(baseline="value", unfinished="bootstrap"),
        dict(normalize_returns=False, entropy_coef=0.01, max_grad_norm=0.5),
        dict(hidden_sizes=(0,), activation="tanh"),  # linear
    ],
)
def test_options_train_and_report_finite_metrics(changes):
    cfg = Config(num_envs=4, num_steps=32, max_epochs=2, quiet=True, **changes)
    with Trainer(cfg) as tr:
        ms = list(tr.run())
    assert len(ms) == 2
    for key in ("loss", "entropy", "grad_norm"):
        assert math.isfinite(ms[-1][key])
    if changes.get("max_grad_norm"):
        total = torch.cat([p.grad.flatten() for p in tr.policy.parameters() if p.grad is not None]).norm()
        assert total <= 0.5 + 1e-5


def test_gaussian_policy_on_pendulum(tmp_path):
    cfg = Config(
        env="Pendulum-v1", num_envs=4, num_steps=50, max_epochs=2, eval_episodes=2, quiet=True, log_std_init=-0.5
    )
    summary = train(cfg)
    assert summary["backend"] == "sync" or summary["backend"] == "torch"
    assert summary["target_return"] is None and summary["solved"] is None  # Pendulum has no threshold
    assert math.isfinite(summary["eval_return_mean"]) and summary["eval_length_mean"] == 200


def test_custom_policy_module():
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, obs):
            return torch.distributions.Categorical(logits=self.lin(obs))

    cfg = Config(num_envs=4, num_steps=16, max_epochs=2, quiet=True)
    with Trainer(cfg, policy=Linear()) as tr:
        before = tr.policy.lin.weight.detach().clone()
        list(tr.run())
        assert not torch.equal(before, tr.policy.lin.weight)


def test_env_mismatch_is_a_config_error():
    env = make_env("CartPole-v1", 3, backend="vector")
    with pytest.raises(ConfigError, match="num_envs: is 4 but the env given has 3"):
        Trainer(Config(num_envs=4, quiet=True), env=env)


def test_target_return_stops_training():
    cfg = Config(num_envs=8, num_steps=64, target_return=5.0, max_env_steps=100_000, quiet=True, eval_episodes=3)
    summary = train(cfg)
    # Random CartPole episodes last ~20 steps, so a target of 5 is reached once 100 episodes finished.
    assert summary["stop_reason"] == "target_return" and summary["solved"] is True
    assert summary["episodes"] >= 100 and summary["time_to_solve_s"] == summary["train_wall_s"]
    assert summary["env_steps_to_solve"] == summary["env_steps"]


@pytest.mark.slow
def test_return_improves_on_cartpole():
    cfg = Config(num_envs=16, num_steps=512, max_epochs=12, seed=0, quiet=True)
    with Trainer(cfg) as tr:
        ms = list(tr.run())
    first, last = ms[0]["return_mean"], ms[-1]["return_mean"]
    assert last > 3 * first, (first, last)  # random policy ~20; this reaches > 100 in 12 epochs


@pytest.mark.parametrize("backend", ["auto", "sync"])
@pytest.mark.parametrize(
    "env_id",
    [
        "Acrobot-v1",
        "MountainCar-v0",
        "MountainCarContinuous-v0",
        "Pendulum-v1",
        "FrozenLake-v1",
        "Taxi-v4",
        "CliffWalking-v1",
    ],
)
def test_registered_gymnasium_envs_train_without_code_changes(env_id, backend):
    # auto is the native torch env for the classic-control ids, gymnasium's for the others.
    cfg = Config(env=env_id, backend=backend, num_envs=3, num_steps=20, max_epochs=2, eval_episodes=0, quiet=True)
    with Trainer(cfg) as tr:
        ms = list(tr.run())
    assert len(ms) == 2 and math.isfinite(ms[-1]["loss"])
    assert tr.buf["obs"].shape[:2] == (20, 3)


def test_epoch_that_reaches_the_target_does_not_update():
    cfg = Config(num_envs=8, num_steps=64, target_return=5.0, quiet=True)
    with Trainer(cfg) as tr:
        snapshots = []
        for metrics in tr.run():  # noqa: B007 (the last one is checked below)
            snapshots.append([p.detach().clone() for p in tr.policy.parameters()])
        assert tr.stop_reason == "target_return" and len(snapshots) >= 2
        # The final epoch reported its loss but left the evaluated policy as it collected.
        assert all(torch.equal(a, b) for a, b in zip(snapshots[-1], snapshots[-2]))
        assert not all(torch.equal(a, b) for a, b in zip(snapshots[-2], snapshots[0]))
        assert math.isfinite(metrics["loss"])


def test_env_dtype_float64_runs_the_native_env_in_float64():
    cfg = Config(
        env="Acrobot-v1", env_dtype="float64", num_envs=4, num_steps=16, max_epochs=2, eval_episodes=2, quiet=True
    )
    with Trainer(cfg) as tr:
        ms = list(tr.run())
        assert tr.env.dtype == torch.float64 and tr.env._state.dtype == torch.float64
        assert tr.buf["obs"].dtype == torch.float32  # storage keeps float32
        assert len(ms) == 2 and math.isfinite(ms[-1]["loss"])
        assert math.isfinite(tr.evaluate(2)["eval_return_mean"])


@pytest.mark.parametrize(
    "env_id, changes",
    [
        ("CartPole-v1", dict()),
        ("CartPole-v1", dict(baseline="mean", entropy_coef=0.01)),
        ("CartPole-v1", dict(baseline="value", normalize_returns=False)),
        ("CartPole-v1", dict(baseline="value", unfinished="bootstrap")),
        ("Pendulum-v1", dict(baseline="value", unfinished="bootstrap", entropy_coef=0.02)),  # T < episode: bootstrap
    ],
)
def test_sliced_update_has_the_gradient_of_the_whole_batch_loss(env_id, changes):
    """update() runs the loss slice by slice on the entries in the loss; its gradient and loss equal
    the masked reference loss over the whole [T, N] batch (the specification)."""
    from fastpg.loss import reinforce_loss_reference
    from fastpg.returns import episode_complete_mask, reward_to_go

    cfg = Config(env=env_id, num_envs=6, num_steps=40, hidden_sizes=(16,), quiet=True, eval_episodes=0, fused="off",
                 **changes)  # fmt: skip
    with Trainer(cfg) as tr:
        tr.collect()
        tr.settings = dataclasses.replace(tr.settings, rows=7)  # many slices, the last one partial
        stats = tr.update(apply=False)
        sliced = [p.grad.clone() for p in tr.policy.parameters()]
        buf, pol = tr.buf, tr.policy
        bootstrap = pol.value(tr.carry.obs).detach() if cfg.unfinished == "bootstrap" else None
        ret = reward_to_go(buf["reward"], buf["done"], cfg.gamma, bootstrap=bootstrap)
        mask = buf["valid"] & (episode_complete_mask(buf["done"]) if cfg.unfinished == "mask" else True)
        dist = pol(buf["obs"])
        loss = reinforce_loss_reference(
            dist.log_prob(buf["action"]),
            ret,
            mask,
            baseline=cfg.baseline,
            normalize=cfg.normalize_returns,
            value=pol.value(buf["obs"]) if cfg.baseline == "value" else None,
            entropy=dist.entropy(),
            entropy_coef=cfg.entropy_coef,
            value_coef=cfg.value_coef,
        )
        pol.zero_grad()
        loss.backward()
        for a, b in zip(sliced, [p.grad for p in pol.parameters()]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stats["loss"], loss.detach(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stats["mask_frac"], mask.float().mean())
        assert any(g.abs().sum() > 0 for g in sliced)


def test_target_needs_a_confirming_evaluation(monkeypatch):
    """The window reaching the target triggers an evaluation; a failed one lets training go on."""
    verdicts = iter([1.0, 1.0, 100.0])
    calls = []

    def fake_evaluate(self, num_episodes=100, *, deterministic=False, seed=None):
        calls.append((self.counters.epoch, seed))
        return {"eval_return_mean": next(verdicts), "eval_episodes": num_episodes}

    monkeypatch.setattr(Trainer, "evaluate", fake_evaluate)
    summary = train(Config(num_envs=8, num_steps=64, target_return=5.0, quiet=True, eval_episodes=3, max_epochs=60))
    assert summary["stop_reason"] == "target_return" and summary["solved"] is True
    assert summary["target_checks"] == 3 and len(calls) == 3  # the confirming evaluation is the final one
    assert [e for e, _ in calls] == [calls[0][0], calls[0][0] + 1, calls[0][0] + 2]  # checked every epoch
    assert len({s for _, s in calls}) == 3  # fresh episodes each time
    assert summary["eval_return_mean"] == 100.0 and summary["epochs"] == calls[-1][0] + 1


def test_a_trainer_given_its_env_evaluates_on_that_task_only():
    """MountainCar copies handed in while cfg.env is CartPole: evaluations run on MountainCar
    (random play never reaches the flag: -200 per episode), never on CartPole."""
    cfg = Config(num_envs=4, num_steps=16, eval_episodes=5, quiet=True, device="cpu")  # where the envs given live
    with pytest.raises(ConfigError, match=r"^eval_env: the trainer was given its own env \(TorchMountainCar\)"):
        Trainer(cfg, env=make_env("MountainCar-v0", 4))
    with Trainer(cfg, env=make_env("MountainCar-v0", 4), eval_env=lambda n: make_env("MountainCar-v0", n)) as tr:
        tr.epoch()
        ev = tr.evaluate(5)
        assert ev["eval_episodes"] == 5 and ev["eval_return_mean"] == -200.0
        assert tr.target.target == -110.0  # MountainCar's threshold, not CartPole's
    fixed = make_env("MountainCar-v0", 3)
    with Trainer(cfg, env=make_env("MountainCar-v0", 4), eval_env=fixed) as tr:
        assert tr.evaluate(100)["eval_episodes"] == 3  # an env is used as it is
    fixed.reset(seed=0)  # and left open for its owner
    with Trainer(cfg.replace(eval_episodes=0), env=make_env("MountainCar-v0", 4)) as tr:
        assert tr.eval_env is None  # never evaluates: nothing to give
        with pytest.raises(ConfigError, match="^eval_env: this trainer was given its own env"):
            tr.evaluate(5)  # and asked to, it says what is missing instead of playing CartPole
