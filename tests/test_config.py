import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastpg.cli import main, parse_config
from fastpg.config import Config
from fastpg.errors import ConfigError, FastpgError
from fastpg.preflight import check_config

# (changes, field named in the error, words the message must contain): refused by Config itself.
BAD = [
    (dict(keep_checkpoints=0), "keep_checkpoints", "must be an integer >= 1"),
    (dict(num_envs=0), "num_envs", "must be an integer >= 1, got 0"),
    (dict(num_steps=-1), "num_steps", "got -1"),
    (dict(max_env_steps=0), "max_env_steps", ">= 1"),
    (dict(num_envs=2.5), "num_envs", "got 2.5"),
    (dict(num_envs=True), "num_envs", "got True"),
    (dict(max_epochs=0), "max_epochs", ">= 1"),
    (dict(max_epochs=True), "max_epochs", "got True"),
    (dict(target_return=float("nan")), "target_return", "finite"),
    (dict(gamma=1.5), "gamma", "must be in [0, 1], got 1.5"),
    (dict(gamma=float("inf")), "gamma", "finite"),
    (dict(gamma="0.9"), "gamma", "finite number, got '0.9'"),
    (dict(lr=0.0), "lr", "must be > 0"),
    (dict(lr=float("nan")), "lr", "finite"),
    (dict(hidden_sizes=(64, 0)), "hidden_sizes", "integers >= 1"),
    (dict(hidden_sizes=64), "hidden_sizes", "tuple"),
    (dict(hidden_sizes=()), "hidden_sizes", "no widths given"),
    (dict(hidden_sizes=(0, 0)), "hidden_sizes", "integers >= 1"),
    (dict(activation="sigmoid"), "activation", "tanh, relu"),
    (dict(baseline="median"), "baseline", "none, mean, value"),
    (dict(unfinished="drop"), "unfinished", "mask, bootstrap"),
    (dict(unfinished="bootstrap"), "unfinished", "--baseline value"),
    (dict(entropy_coef=-0.1), "entropy_coef", ">= 0"),
    (dict(value_coef=-1.0), "value_coef", ">= 0"),
    (dict(max_grad_norm=-1.0), "max_grad_norm", ">= 0"),
    (dict(progress_interval_s=-1.0), "progress_interval_s", ">= 0"),
    (dict(log_std_init=float("inf")), "log_std_init", "finite"),
    (dict(seed=-1), "seed", "[0, 2**32)"),
    (dict(seed=True), "seed", "integer"),
    (dict(eval_episodes=-5), "eval_episodes", ">= 0"),
    (dict(backend="gpu"), "backend", "auto, torch, vector, pool, sync, async"),
    (dict(pool_workers=0), "pool_workers", "integer >= 1"),
    (dict(num_envs=4, pool_workers=5), "pool_workers", "at most --num-envs (4)"),
    (dict(last_layer_scale=0.0), "last_layer_scale", "> 0"),
    (dict(lr_schedule="cosine"), "lr_schedule", "constant, linear"),
    (dict(init="xavier"), "init", "default, orthogonal"),
    (dict(action_bound="squash"), "action_bound", "clip, tanh"),
    (dict(obs_norm="yes"), "obs_norm", "must be True or False"),
    (dict(wandb=""), "wandb", "project name"),
    (dict(env=""), "env", "must be a gymnasium environment id"),
    (dict(env_dtype="float16"), "env_dtype", "float32, float64"),
    (dict(env_kernel="numba"), "env_kernel", "torch, cpp"),
    (dict(env_kernel="cpp", device="cuda"), "env_kernel", "'cpp' is a CPU kernel"),
    (dict(overwrite="no"), "overwrite", "must be True or False, got 'no'"),
    (dict(quiet=1), "quiet", "must be True or False, got 1"),
    (dict(metrics_file=3), "metrics_file", "must be a path"),
    (dict(device=0), "device", "auto, cpu, cuda"),
]

# Refused by check_config: they need the machine (device, gymnasium registry, file system).
MACHINE_BAD = [
    (dict(device="tpu"), "device", "auto, cpu, cuda or cuda:N"),
    (dict(device="not a device"), "device", "auto, cpu, cuda"),
    (dict(env="CartPol-v1"), "env", "did you mean CartPole-v1"),
    (dict(env="Zzzzzz-v9"), "env", "unknown gymnasium environment id 'Zzzzzz-v9'"),
    (dict(env="Pendulum-v1", backend="vector"), "backend", "Pendulum-v1 has none"),
    (dict(metrics_file=Path("/nonexistent-dir/m.jsonl")), "metrics_file", "directory /nonexistent-dir does not exist"),
    (dict(resume=Path("/nonexistent-dir")), "resume", "directory /nonexistent-dir does not exist"),
    (dict(env="FrozenLake-v1", backend="torch"), "backend", "no native implementation of FrozenLake-v1"),
    (dict(backend="sync", env_kernel="cpp"), "env_kernel", "got CartPole-v1 with backend sync"),
    (dict(backend="vector", env_kernel="cpp"), "env_kernel", "backend vector"),
    (dict(env="CartPole-v1", backend="sync", env_dtype="float64"), "env_dtype", "native torch envs only"),
]


@pytest.mark.parametrize("changes, field, words", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_every_validation_branch_raises(changes, field, words):
    with pytest.raises(ConfigError) as info:
        Config(**changes)
    assert info.value.field == field
    assert isinstance(info.value, ValueError) and isinstance(info.value, FastpgError)
    assert words in str(info.value)


@pytest.mark.parametrize("changes, field, words", MACHINE_BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(MACHINE_BAD)])
def test_every_machine_check_raises(changes, field, words):
    cfg = Config(**changes)  # a pure value: builds anywhere
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert info.value.field == field
    assert words in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_refused_by_the_machine_check_only():
    cfg = Config(device="cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        check_config(cfg)


def test_numpy_scalars_lists_and_strings_are_normalized():
    cfg = Config(
        gamma=np.float32(0.5),
        seed=np.int64(3),
        hidden_sizes=[np.int64(8), 4],
        metrics_file="m.jsonl",
        quiet=np.bool_(True),
    )
    assert cfg == Config(gamma=0.5, seed=3, hidden_sizes=(8, 4), metrics_file=Path("m.jsonl"), quiet=True)
    assert type(cfg.gamma) is float and type(cfg.seed) is int and type(cfg.quiet) is bool


def test_config_round_trips_through_a_dict():
    cfg = Config(hidden_sizes=(64, 32), metrics_file=Path("m.jsonl"), target_return=3.0, max_epochs=4)
    d = cfg.to_dict()
    assert d["hidden_sizes"] == [64, 32] and d["metrics_file"] == "m.jsonl"
    assert Config.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="not a Config field"):
        Config.from_dict({**d, "colour": "blue"})


def test_every_activation_has_a_module():
    from fastpg.config import ACTIVATIONS
    from fastpg.policy import ACTIVATION_MODULES

    assert tuple(ACTIVATION_MODULES) == ACTIVATIONS


def test_valid_configs_build_and_derive():
    cfg = Config(num_envs=4, num_steps=8)
    assert cfg.batch_size == 32
    assert dataclasses.replace(cfg, gamma=0.5).gamma == 0.5
    with pytest.raises(ConfigError):
        cfg.replace(gamma=2.0)
    check_config(Config(baseline="value", unfinished="bootstrap", device="cpu", target_return=100.0))


def test_cli_round_trip():
    cfg = parse_config(
        [
            "--env",
            "Pendulum-v1",
            "--backend",
            "sync",
            "--num-envs",
            "4",
            "--num-steps",
            "8",
            "--max-env-steps",
            "100",
            "--max-epochs",
            "3",
            "--target-return",
            "-200",
            "--gamma",
            "0.9",
            "--lr",
            "0.001",
            "--hidden-sizes",
            "64",
            "64",
            "--activation",
            "tanh",
            "--no-normalize-returns",
            "--baseline",
            "value",
            "--unfinished",
            "bootstrap",
            "--entropy-coef",
            "0.01",
            "--value-coef",
            "1.0",
            "--max-grad-norm",
            "0.5",
            "--log-std-init",
            "-1",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--metrics-file",
            "m.jsonl",
        ]
    )
    assert cfg == Config(
        env="Pendulum-v1",
        backend="sync",
        num_envs=4,
        num_steps=8,
        max_env_steps=100,
        max_epochs=3,
        target_return=-200.0,
        gamma=0.9,
        lr=0.001,
        hidden_sizes=(64, 64),
        activation="tanh",
        normalize_returns=False,
        baseline="value",
        unfinished="bootstrap",
        entropy_coef=0.01,
        value_coef=1.0,
        max_grad_norm=0.5,
        log_std_init=-1.0,
        seed=3,
        device="cpu",
        metrics_file=Path("m.jsonl"),
    )
    assert type(cfg) is Config
    assert parse_config([]) == Config()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--num-envs", "0"], "--num-envs: must be an integer >= 1, got 0"),
        (["train", "--gamma", "1.5"], "--gamma: must be in [0, 1], got 1.5"),
        (
            ["train", "--env", "CartPol-v1"],
            "--env: unknown gymnasium environment id 'CartPol-v1'; did you mean CartPole-v1",
        ),
        (
            ["train", "--log-std-init", "0.5", "--quiet"],
            "--log-std-init: applies to Box (continuous) action spaces only; CartPole-v1 has Discrete(2)",
        ),
        (
            ["train", "--metrics-file", "/nonexistent-dir/m.jsonl", "--max-epochs", "1"],
            "--metrics-file: directory /nonexistent-dir does not exist",
        ),
        (["fly"], "unknown command 'fly'"),
    ],
)
def test_cli_bad_values_print_one_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastpg: error: ")
    assert words in err


def test_cli_bad_value_subprocess_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "fastpg.cli", "train", "--num-envs", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == "fastpg: error: --num-envs: must be an integer >= 1, got 0\n"
    assert "Traceback" not in proc.stdout + proc.stderr
