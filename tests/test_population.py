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
    """A member's metrics as its single run has them (timing aside; the population adds which
    member it is and, in its last epoch, why it stopped)."""
    return {k: v for k, v in metrics.items() if k not in TIMING and k not in ("member", "stop_reason")}


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
        Config(**{**SMALL, "env": "Pendulum-v1", "num_steps": 50}, baseline="value", max_epochs=3),
        Config(**SMALL, baseline="value", unfinished="bootstrap", max_epochs=3),
        Config(**{**SMALL, "env": "MountainCarContinuous-v0", "num_steps": 40}, max_epochs=3),
    ],
    ids=["pendulum-value", "cartpole-bootstrap", "mountaincar-continuous"],
)
def test_fused_members_of_every_kind_are_their_single_runs_bit_for_bit(base):
    """Box actions, the value baseline and bootstrapped returns run fused in a population too,
    each member its single run bit for bit."""
    pop = Population.grid(base, seeds=2, lr=[0.01, 0.001])
    kind, metrics, params, evaluations, _ = _population(pop, evaluate=4)
    assert kind == "fused"
    for i, cfg in enumerate(pop.members):
        single_metrics, single_params, single_eval, _ = _single(cfg, evaluate=4)
        assert metrics[i] == single_metrics, f"member {i}"
        assert all(torch.equal(a, b) for a, b in zip(params[i], single_params)), f"member {i}"
        assert evaluations[i] == single_eval, f"member {i}"


@pytest.mark.parametrize(
    "base",
    [
        Config(**SMALL, fused="off", max_epochs=4),
        Config(**{**SMALL, "env": "Pendulum-v1", "num_steps": 50}, baseline="value", max_epochs=3, fused="off"),
        Config(**SMALL, backend="sync", max_epochs=3, unfinished="bootstrap", baseline="value"),
        Config(
            **{**SMALL, "env": "Pendulum-v1", "num_steps": 50},
            max_epochs=3,
            action_bound="tanh",
            lr_schedule="linear",
            init="orthogonal",
            last_layer_scale=0.01,
            obs_norm=True,
        ),  # fmt: skip
    ],
    ids=["cartpole-generic", "pendulum-value", "gym-sync-bootstrap", "pendulum-mujoco-options"],
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


# -- the application: fastpg train --seeds, outputs, resume, members' policies ---------------------

FLAGS = ["--num-envs", "8", "--num-steps", "64", "--hidden-sizes", "16", "--quiet", "--eval-episodes", "5"]


def _records(path) -> tuple[dict, list[dict], dict]:
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    header = next(r for r in rows if r.get("header"))
    return header, [r for r in rows if "member" in r and not r.get("summary")], rows[-1]


def test_cli_population_writes_every_member_and_its_statistics(tmp_path, capsys):
    from fastpg.cli import main
    from fastpg.run import train

    metrics = tmp_path / "m.jsonl"
    argv = ["train", "--seeds", "2", "--lr", "0.01", "0.003", "--max-epochs", "3", "--metrics-file", str(metrics)]
    assert main([*argv, *FLAGS, "--tensorboard", str(tmp_path / "tb")]) == 0
    header, records, summary = _records(metrics)
    assert header["population"]["size"] == 4 and header["population"]["varying"] == ["seed", "lr"]
    assert [m["setting"] for m in header["population"]["members"]] == ["lr 0.01"] * 2 + ["lr 0.003"] * 2
    assert sorted({r["member"] for r in records}) == [0, 1, 2, 3] and len(records) == 12
    assert summary["summary"] and summary["members"] == 4 and len(summary["settings"]) == 2
    assert (
        summary["eval_return"]["iqm_ci_low"] <= summary["eval_return"]["iqm"] <= summary["eval_return"]["iqm_ci_high"]
    )
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == [f"member_00{i}" for i in range(4)]
    # each member's result is its single run's (fastpg train --seed S --lr LR)
    capsys.readouterr()
    for r in summary["member_results"]:
        cfg = Config(**{**SMALL, "eval_episodes": 5}, max_epochs=3, seed=r["seed"], lr=r["lr"])
        single = train(cfg)
        assert r["eval_return_mean"] == single["eval_return_mean"] and r["env_steps"] == single["env_steps"]


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--seeds", "2", "--num-envs", "8", "16"], "--num-envs: takes one value, shared by every member"),
        (["--seeds", "x"], "--seeds: give a count"),
        (["--seeds", "4:2"], "--seeds: a range A:B needs B > A"),
        (["--seeds", "2", "--lr", "0.1", "abc"], "--lr: 'abc' is not a number"),
        (["--lr", "0.1", "0.1"], "--lr: give each value once"),
        (["--seeds", "2", "--lr", "0.1", "-1"], "--lr:"),  # Config's own check, per member
    ],
)
def test_cli_population_flags_are_checked_in_one_line(flags, said, capsys):
    from fastpg.cli import main

    assert main(["train", *flags, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err


def test_population_flags_are_taken_out_of_the_command_line():
    from fastpg.cli import split_population_flags

    argv, seeds, lists = split_population_flags(
        ["--env", "Pendulum-v1", "--seeds", "0:4", "--log-std-init", "-0.5", "-1", "--hidden-sizes", "8", "8"]
    )
    assert seeds == (0, 1, 2, 3) and lists == {"log_std_init": ["-0.5", "-1"]}
    assert argv == ["--env", "Pendulum-v1", "--log-std-init", "-0.5", "--hidden-sizes", "8", "8"]
    assert split_population_flags(["--seeds", "3", "5"])[1] == (3, 5)
    assert split_population_flags(["--seeds=6", "--lr=0.1"])[1:] == (6, {})


def test_cli_population_resumes_bit_for_bit(tmp_path):
    from fastpg.cli import main

    timing = TIMING | {"stop_reason"}
    whole, part, ckpt = tmp_path / "whole.jsonl", tmp_path / "part.jsonl", tmp_path / "ckpt"
    grid = ["train", "--seeds", "2", "--gamma", "0.99", "0.9", *FLAGS]
    assert main([*grid, "--max-epochs", "5", "--metrics-file", str(whole)]) == 0
    assert main([*grid, "--max-epochs", "2", "--metrics-file", str(part), "--checkpoint-dir", str(ckpt)]) == 0
    assert main(["train", "--resume", str(ckpt), "--max-epochs", "5", "--metrics-file", str(part), "--quiet"]) == 0
    (_, a, sa), (_, b, sb) = _records(whole), _records(part)
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == [
        {k: v for k, v in r.items() if k not in timing} for r in b
    ]
    assert [r["eval_return_mean"] for r in sa["member_results"]] == [
        r["eval_return_mean"] for r in sb["member_results"]
    ]
    assert main(["train", "--resume", str(ckpt), "--seeds", "3", "--quiet"]) == 2  # the members are the saved ones


def test_a_members_policy_loads_and_evaluates(tmp_path, capsys):
    from fastpg import load_policy
    from fastpg.artifacts import evaluate_checkpoint
    from fastpg.cli import main

    ckpt = tmp_path / "ckpt"
    assert main(["train", "--seeds", "3", "--max-epochs", "2", "--checkpoint-dir", str(ckpt), *FLAGS]) == 0
    with PopulationTrainer(Population.grid(Config(**SMALL, max_epochs=2), seeds=3)) as pt:
        list(pt.run())
        want = [list(m.policy.parameters()) for m in pt.members]
    for i in range(3):
        policy = load_policy(ckpt, member=i)
        assert policy.config.seed == i
        assert all(torch.equal(a, b) for a, b in zip(policy.module.parameters(), want[i]))
    assert evaluate_checkpoint(ckpt, member=1, episodes=4)["member"] == 1
    with pytest.raises(ConfigError, match="population of 3 members"):
        load_policy(ckpt)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ckpt), "--member", "5"]) == 2
    assert "pick one with --member 0..2 (got 5)" in capsys.readouterr().err


def test_a_population_file_plots_one_curve_per_setting(tmp_path):
    from fastpg.cli import main
    from fastpg.plotting import read_runs

    metrics = tmp_path / "m.jsonl"
    assert main(["train", "--seeds", "2", "--lr", "0.01", "0.003", "--max-epochs", "3", "--metrics-file", str(metrics),
                 *FLAGS]) == 0  # fmt: skip
    runs = read_runs(metrics)
    assert len(runs) == 4 and len({r.experiment for r in runs}) == 2
    assert main(["plot", str(metrics), "-o", str(tmp_path / "c.png")]) == 0 and (tmp_path / "c.png").stat().st_size


def test_a_failed_member_makes_the_exit_code_one(capsys):
    from fastpg.population import train_population

    ok = Config(**SMALL, max_epochs=2, max_bad_updates=1)
    summary = train_population(Population((ok, ok.replace(seed=1, lr=1e30))))
    results = summary["member_results"]
    assert summary["exit_code"] == 1 and results[1]["error"] and results[0]["error"] is None
    assert results[0]["epochs"] == 2


def test_a_population_without_a_target_says_so_instead_of_none_solved(capsys):
    """Pendulum has no reward threshold: the summary's members_solved is None (as a single run's
    solved), the final lines say "no target" and the progress line counts the members stopped."""
    from fastpg.population import train_population
    from fastpg.population.progress import PopulationProgress
    from fastpg.population.run import population_final_line

    base = Config(**{**SMALL, "env": "Pendulum-v1", "num_steps": 50, "quiet": False}, max_epochs=2)
    summary = train_population(Population((base, base.replace(seed=1), base.replace(lr=3e-3))))
    assert summary["members_solved"] is None and summary["time_to_solve_s"] is None
    assert [s["members_solved"] for s in summary["settings"]] == [None, None]
    assert all(r["solved"] is None for r in summary["member_results"])
    lines = population_final_line(summary).splitlines()
    assert lines[0].startswith("fastpg: population of 3 on Pendulum-v1: no target; evaluation iqm -")
    assert "solved" not in population_final_line(summary) and "time to solve" not in population_final_line(summary)
    assert "members 3 stopped, 0 training, 0 failed" in capsys.readouterr().err
    progress = PopulationProgress(3, has_target=True)
    progress.stopped = {0: "max_epochs", 1: "target_return", 2: "error: boom"}
    assert "members 1 solved, 0 training, 1 failed" in progress.line(1.0)


def test_torchrun_deals_whole_members_to_the_ranks(tmp_path):
    """2 gloo ranks: each trains whole members (0, 2, 4 and 1, 3, 5); rank 0 writes every
    member's records, the summary and a checkpoint of the whole population, as one process does."""
    import json
    import os
    import subprocess
    import sys

    from fastpg import load_checkpoint

    common = ["--seeds", "3", "--lr", "0.01", "0.003", "--max-epochs", "3", "--device", "cpu", *FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    two, one = tmp_path / "two.jsonl", tmp_path / "one.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fastpg"]
    done = subprocess.run(
        [*cmd, "train", *common, "--metrics-file", str(two), "--checkpoint-dir", str(tmp_path / "ck")],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "fastpg", "train", *common, "--metrics-file", str(one)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    timing = TIMING | {"train_wall_s", "time_to_solve_s"}
    (h2, r2, s2), (_, r1, s1) = _records(two), _records(one)
    assert h2["processes"] == 2 and s2["processes"] == 2
    assert [{k: v for k, v in r.items() if k not in timing} for r in r2] == [
        {k: v for k, v in r.items() if k not in timing} for r in r1
    ]
    assert [{k: v for k, v in r.items() if k not in timing} for r in s2["member_results"]] == [
        {k: v for k, v in r.items() if k not in timing} for r in s1["member_results"]
    ]
    assert json.loads(done.stdout)["members"] == 6 and load_checkpoint(tmp_path / "ck")["numbers"] == list(range(6))


def test_the_fused_batch_reads_each_members_epoch_as_the_trainer_does():
    """``FusedBatch.collected`` (one kernel call for every member) gives what ``Trainer.collected``
    reads from the storage on the generic path: the same episodes in the same order, valid
    steps, non-finite copies."""
    from fastpg.population.engines import FusedBatch

    pop = Population.grid(Config(**SMALL), seeds=2)
    with Trainer(pop.members[0]) as a, Trainer(pop.members[1]) as b:
        singles = [a, b]
        for m in singles:
            m.collect()
        singles[1].buf["reward"][3, 5] = math.nan  # a non-finite reward in member 1's copy 5
        with pytest.warns(RuntimeWarning, match="non-finite reward or observation in env copy 5"):
            got = FusedBatch().collected(singles)
        for m in singles:
            m.window.returns.clear()
            m.window.lengths.clear()
        with pytest.warns(RuntimeWarning, match="env copy 5"):
            for m in singles:
                m.fused = None  # the generic path's reading
            want = [m.collected() for m in singles]
        assert got[0].returns and got[1].nonfinite_envs == 1 and got[1].bad_data == want[1].bad_data
        for g, w in zip(got, want):
            assert (g.returns, g.lengths, int(g.valid_steps)) == (w.returns, w.lengths, int(w.valid_steps))


# -- the reliability guarantees of a single run, for a population (issue 23) --------------------------


def test_a_population_killed_and_restarted_with_resume_auto_continues_bit_for_bit(tmp_path):
    """SIGKILL mid-epoch, then the same command (--resume auto): the population continues from
    its checkpoint, every member's epochs as in an uninterrupted run."""
    import os
    import subprocess
    import sys

    timing = TIMING | {"stop_reason"}
    whole, part, ckpt = tmp_path / "whole.jsonl", tmp_path / "part.jsonl", tmp_path / "ckpt"
    grid = [sys.executable, "-m", "fastpg", "train", "--seeds", "2", *FLAGS, "--max-epochs", "6"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    assert subprocess.run([*grid, "--metrics-file", str(whole)], env=env, capture_output=True).returncode == 0
    again = [*grid, "--metrics-file", str(part), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2",
             "--resume", "auto"]  # fmt: skip
    crash = {**env, "FASTPG_CRASH_AT": f"epoch:5:0:{tmp_path / 'crashed'}"}  # mid-epoch 5
    assert subprocess.run(again, env=crash, capture_output=True).returncode == -9
    done = subprocess.run(again, env=crash, capture_output=True, text=True)
    assert done.returncode == 0 and "restart: continuing the run checkpointed in" in done.stderr, done.stderr[-2000:]
    (_, a, _), (_, b, _) = _records(whole), _records(part)
    assert [{k: v for k, v in r.items() if k not in timing} for r in a] == [
        {k: v for k, v in r.items() if k not in timing} for r in b
    ]


def test_a_full_disk_while_a_population_checkpoints_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    import errno

    import fastpg.checkpoint
    from fastpg import load_checkpoint
    from fastpg.cli import main

    ckpt, real_save, saves = tmp_path / "ckpt", torch.save, []

    def save(obj, f):
        saves.append(1)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(fastpg.checkpoint.torch, "save", save)
    code = main(["train", "--seeds", "2", *FLAGS, "--max-epochs", "4", "--checkpoint-dir", str(ckpt),
                 "--checkpoint-every", "1"])  # fmt: skip
    monkeypatch.undo()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fastpg: error")]
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0], err
    assert err[0].endswith("the previous checkpoint is intact")
    assert load_checkpoint(ckpt)["epochs"] == 1 and not list(ckpt.glob(".checkpoint-*"))


def test_sigterm_stops_a_population_after_the_epoch_with_a_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from fastpg import load_checkpoint

    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "fastpg", "train", "--seeds", "2", *FLAGS, "--max-epochs", "100000",
           "--metrics-file", str(metrics), "--checkpoint-dir", str(ckpt)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    summary = [line for line in out.splitlines() if line.startswith("{")]
    assert len(summary) == 1 and "SIGTERM" in summary[0]
    state = load_checkpoint(ckpt)
    assert state["kind"] == "population" and state["epochs"] >= 2


def test_resume_auto_refuses_a_population_command_that_describes_other_members(tmp_path, capsys):
    from fastpg.cli import main

    ckpt = tmp_path / "ckpt"
    base = ["train", *FLAGS, "--max-epochs", "2", "--checkpoint-dir", str(ckpt), "--resume", "auto"]
    assert main([*base, "--seeds", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--seeds", "3"]) == 2
    err = capsys.readouterr().err
    assert "has other members (2) than this command describes (3" in err and "give the command that started it" in err
