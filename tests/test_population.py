"""Populations: each member is exactly its own run; the spec refuses what cannot vary; members stop
on their own; the statistics across members against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from fastpg import Config, Trainer
from fastpg.errors import ConfigError
from fastpg.population import Population, PopulationTrainer, seed_list
from fastpg.returns import reward_to_go, reward_to_go_reference
from fastpg.stats import aggregate, bootstrap_ci, iqm, median

TIMING = {"wall_s", "sps", "collect_s", "update_s"}
SMALL = dict(num_envs=8, num_steps=64, hidden_sizes=(16,), quiet=True, eval_episodes=0)


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING and k != "member"}


def _single(cfg: Config, evaluate: int = 0):
    """A member's single run: per-epoch metrics (timing aside), parameters, final evaluation."""
    with Trainer(cfg) as tr:
        metrics = [_untimed(m) for m in tr.run()]
        evaluation = tr.evaluate(evaluate) if evaluate else None
        return metrics, [p.detach().clone() for p in tr.policy.parameters()], evaluation, tr.stop_reason


def _population(pop: Population, evaluate: int = 0):
    with PopulationTrainer(pop) as pt:
        metrics: list[list[dict]] = [[] for _ in range(len(pop))]
        for epoch in pt.run():
            for number, m in epoch:
                assert m["member"] == number
                metrics[number].append(_untimed(m))
        params = [[p.detach().clone() for p in m.policy.parameters()] for m in pt.members]
        evaluations = pt.evaluate(evaluate) if evaluate else [None] * len(pop)
        return pt.kind, metrics, params, evaluations, list(pt.stop_reasons)


# -- each member is its own run ------------------------------------------------------------------


def test_fused_members_are_their_single_runs_bit_for_bit():
    """A mixed grid (2 learning rates x 2 entropy coefficients x 2 seeds) and per-member targets:
    every member's metrics, parameters, target evaluations and final evaluation are its single
    run's, bit for bit."""
    base = Config(**{**SMALL, "eval_episodes": 8}, max_epochs=12, target_return=25.0)
    pop = Population.grid(base, seeds=[3, 7], lr=[0.01, 0.003], entropy_coef=[0.0, 0.01])
    kind, metrics, params, evaluations, reasons = _population(pop, evaluate=10)
    assert kind == "fused" and len(pop) == 8
    for i, cfg in enumerate(pop.members):
        single_metrics, single_params, single_eval, single_reason = _single(cfg, evaluate=10)
        assert metrics[i] == single_metrics, f"member {i}"
        assert all(torch.equal(a, b) for a, b in zip(params[i], single_params)), f"member {i}"
        assert evaluations[i] == single_eval and reasons[i] == single_reason, f"member {i}"
    assert len({len(m) for m in metrics}) > 1  # members stopped at different epochs


@pytest.mark.parametrize(
    "base",
    [
        Config(**SMALL, fused="off", max_epochs=4),
        Config(**{**SMALL, "env": "Pendulum-v1", "num_steps": 50}, baseline="value", max_epochs=3),
        Config(**SMALL, backend="sync", max_epochs=3, unfinished="bootstrap", baseline="value"),
    ],
    ids=["cartpole-generic", "pendulum-value", "gym-sync-bootstrap"],
)
def test_generic_members_are_their_single_runs_within_float_tolerance(base):
    pop = Population.grid(base, seeds=2, lr=[0.01, 0.001], max_grad_norm=[0.0, 0.5])
    kind, metrics, params, evaluations, _ = _population(pop, evaluate=4)
    assert kind == "generic"
    for i, cfg in enumerate(pop.members):
        single_metrics, single_params, single_eval, _ = _single(cfg, evaluate=4)
        assert len(metrics[i]) == len(single_metrics)
        for got, want in zip(metrics[i], single_metrics):
            assert got.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, float):
                    assert math.isclose(got[key], value, rel_tol=1e-4, abs_tol=1e-5), (i, key, got[key], value)
                else:
                    assert got[key] == value, (i, key)
        for a, b in zip(params[i], single_params):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert math.isclose(evaluations[i]["eval_return_mean"], single_eval["eval_return_mean"], rel_tol=1e-4)


def test_a_member_that_fails_stops_alone():
    """A member whose updates keep turning non-finite stops with its error; the others train on."""
    pop = Population.grid(Config(**SMALL, max_epochs=3, max_bad_updates=1), seeds=2)
    with PopulationTrainer(pop) as pt:
        with torch.no_grad():
            pt.members[0].policy.net[2].bias[0] = math.inf
        epochs = list(pt.run())
        assert pt.stop_reasons[0].startswith("error: ") and "non-finite" in pt.errors[0]
        assert pt.stop_reasons[1] == "max_epochs" and pt.errors[1] is None
        assert [n for n, _ in epochs[0]] == [1] and len(epochs) == 3


def test_a_stopped_member_costs_nothing_more():
    pop = Population((Config(**SMALL, max_epochs=1), Config(**SMALL, max_epochs=4, seed=1)))
    with PopulationTrainer(pop) as pt:
        members = [[n for n, _ in epoch] for epoch in pt.run()]
        assert members == [[0, 1], [1], [1], [1]]
        assert pt.members[0].counters.epoch == 1


def test_population_resumes_bit_for_bit(tmp_path):
    from fastpg import load_checkpoint, save_checkpoint

    pop = Population.grid(Config(**SMALL, max_epochs=5), seeds=2, lr=[0.01, 0.003])

    def untimed(epochs):
        return [[(n, _untimed(m)) for n, m in epoch] for epoch in epochs]

    with PopulationTrainer(pop) as pt:
        whole = untimed(pt.run())
    with PopulationTrainer(pop) as pt:
        first = untimed([pt.epoch() for _ in range(2)])
        save_checkpoint(pt.state_dict(), tmp_path)
    with PopulationTrainer(pop) as pt:
        pt.load_state_dict(load_checkpoint(tmp_path))
        rest = untimed(pt.run())
    assert first + rest == whole


# -- the spec ------------------------------------------------------------------------------------


def test_grid_is_setting_major_with_the_seeds_innermost():
    pop = Population.grid(Config(seed=10), seeds=2, lr=[0.1, 0.2], gamma=[0.9, 0.99])
    assert [(m.lr, m.gamma, m.seed) for m in pop.members][:3] == [(0.1, 0.9, 10), (0.1, 0.9, 11), (0.1, 0.99, 10)]
    assert len(pop) == 8 and pop.varying == ("seed", "lr", "gamma")
    assert pop.setting_label(2) == "lr 0.1, gamma 0.99" and len(pop.settings()) == 4
    assert Population.from_dict(pop.to_dict()) == pop


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: Population.grid(Config(), seeds=2, num_envs=[8, 16]), "num_envs"),
        (lambda: Population.grid(Config(), seeds=2, hidden_sizes=[(8,), (16,)]), "hidden_sizes"),
        (lambda: Population.grid(Config(), lr_typo=[0.1]), "lr_typo"),
        (lambda: Population((Config(), Config(env="Acrobot-v1", seed=1))), "env"),
        (lambda: Population((Config(), Config())), "members"),
        (lambda: Population.grid(Config(), seeds=0), "seeds"),
        (lambda: Population.grid(Config(), seeds=[1, 1]), "seeds"),
        (lambda: Population.grid(Config(), seeds=2, seed=[1, 2]), "seed"),
    ],
)
def test_what_cannot_vary_is_refused_naming_the_field(build, field):
    with pytest.raises(ConfigError) as err:
        build()
    assert err.value.field == field


def test_seed_list_takes_counts_lists_and_ranges():
    assert seed_list(3, first=5) == (5, 6, 7) and seed_list([4, 2]) == (4, 2) and seed_list(range(2)) == (0, 1)


def test_members_refuses_numbers_outside_the_population():
    with pytest.raises(ConfigError, match="members"):
        PopulationTrainer(Population.grid(Config(**SMALL), seeds=2), members=[0, 2])


# -- kernels the population relies on --------------------------------------------------------------


def test_reward_to_go_takes_one_discount_per_column():
    g = torch.Generator().manual_seed(0)
    reward = torch.rand(30, 4, generator=g)
    done = torch.rand(30, 4, generator=g) < 0.2
    gamma = torch.tensor([0.9, 0.99, 0.5, 1.0])
    got = reward_to_go(reward, done, gamma)
    want = reward_to_go_reference(reward, done, gamma)
    torch.testing.assert_close(got, want)
    for j in range(4):  # each column is the scalar-discount kernel's
        torch.testing.assert_close(
            got[:, j], reward_to_go(reward[:, j : j + 1], done[:, j : j + 1], gamma[j].item())[:, 0]
        )


@pytest.mark.parametrize(
    "env_id, kernel, num_envs",
    [
        ("CartPole-v1", "torch", 4),  # resets drawn for every copy, selected
        ("CartPole-v1", "cpp", 4),
        ("CartPole-v1", "torch", 600),  # drawn for the done copies only
        ("Acrobot-v1", "torch", 5),
    ],
)
def test_one_env_of_the_members_copies_steps_as_their_own_envs(env_id, kernel, num_envs):
    """``StackedEnvs`` over two members' native envs (``NativeEnv.set_members``: each member's
    resets from its own generator) steps exactly as the two envs stepped alone."""
    from fastpg.envs import make_env
    from fastpg.population.stacking import StackedEnvs

    def members():
        envs = [make_env(env_id, num_envs, backend="torch", kernel=kernel) for _ in range(2)]
        return envs, [env.reset(seed=seed) for env, seed in zip(envs, (11, 12))]

    stacked_envs, first = members()
    stacked = StackedEnvs(stacked_envs)
    alone, first_alone = members()
    assert all(torch.equal(a, b) for a, b in zip(first, first_alone))
    g = torch.Generator().manual_seed(0)
    resets = 0
    for _ in range(520):  # past Acrobot's time limit of 500 steps
        action = torch.randint(0, alone[0].info.num_actions, (2 * num_envs,), generator=g)
        got = stacked.step(action)
        want = [env.step(a) for env, a in zip(alone, action.split(num_envs))]
        for field in ("obs", "reward", "done", "terminated"):
            assert torch.equal(getattr(got, field), torch.cat([getattr(w, field) for w in want])), field
        resets += int(got.done.sum())
    assert resets >= 2 * num_envs  # every copy reset at least once, on average
    stacked.scatter()
    for env, ref in zip(stacked_envs, alone):
        assert torch.equal(env.raw_state, ref.raw_state) and torch.equal(env.elapsed, ref.elapsed)


# -- statistics across members ---------------------------------------------------------------------


def test_iqm_and_median_by_hand():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # the mean of 3, 4, 5, 6
    assert iqm([1, 2, 3]) == 2.0  # fewer than 4: nothing dropped
    assert iqm([100, 1, 2, 3, 4, 5, 6, -100]) == 3.5
    assert median([1, 3, 2, 4]) == 2.5 and median([1, math.inf, math.inf]) == math.inf


def test_bootstrap_interval_by_hand():
    # Two runs in one stratum: resample means are 0, 0.5 or 1 (probabilities 1/4, 1/2, 1/4).
    assert bootstrap_ci([[0.0, 1.0]], "mean") == (0.0, 1.0)
    # A second stratum of two 5s shifts every resample's mean by 5 / 2 ... / 4 runs.
    assert bootstrap_ci([[0.0, 1.0], [5.0, 5.0]], "mean") == (2.5, 3.0)
    # One run per stratum: every resample is the same.
    assert bootstrap_ci([[0.0], [1.0]], "mean") == (0.5, 0.5)
    assert bootstrap_ci([[1, 2, 3, 9]], seed=3) == bootstrap_ci([[1, 2, 3, 9]], seed=3)  # seeded


def test_aggregate_reports_infinite_statistics_as_none():
    out = aggregate([[1.0, math.inf, math.inf]])
    assert out["median"] is None and out["iqm"] is None
    assert aggregate([[2.0, 2.0]]) == {
        "median": 2.0, "median_ci_low": 2.0, "median_ci_high": 2.0, "iqm": 2.0, "iqm_ci_low": 2.0, "iqm_ci_high": 2.0,
    }  # fmt: skip
