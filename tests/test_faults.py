"""Every fault ends in one clear line (issue 12): failing environments on every backend, signals to a
whole process group, sizes that cannot fit, command lines tyro cannot parse, interrupted imports,
kernels that cannot be built, and misuse of the Python API."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from faulty_envs import FaultyEnv
from processes import alive, children
from test_reliability import _cli, _epochs, _start_training

from fastpg import Config, ConfigError, EnvWorkerError, GymVectorEnv, Trainer, UnsupportedEnvError
from fastpg.checkpoint import CHECKPOINT_NAME, load_checkpoint
from fastpg.cli import main

QUICK = ("--num-envs", "3", "--num-steps", "16", "--quiet", "--eval-episodes", "0")


# -- failing environments, every backend ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium logs a worker's traceback as warnings
@pytest.mark.parametrize(
    "env_id, backend, line",
    [
        ("FaultyRaise-v0", "sync", "env FaultyRaise-v0: step failed in env copy 1: ValueError: the simulator exploded"),
        (
            "FaultyRaise-v0",
            "async",
            "env FaultyRaise-v0: step failed in async worker 1: ValueError: the simulator exploded",
        ),
        ("FaultyDie-v0", "async", "env FaultyDie-v0: step failed in async worker 1: "),
    ],
)
def test_an_env_failure_ends_in_one_line_after_checkpoint_and_summary(tmp_path, capsys, env_id, backend, line):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    args = ("--checkpoint-dir", str(ckpt), "--metrics-file", str(metrics), "--max-epochs", "10")
    code, out, err = _cli(capsys, "train", "--env", env_id, "--backend", backend, *QUICK, *args)
    assert code == 1 and len(err) == 1 and err[0].startswith(f"fastpg: error: {line}"), err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["exit_code"] == 1 and summary["stop_reason"].startswith(f"env failure: {line}")
    # the fault comes at the copy's 40th step: two whole epochs of 16 steps before it are kept
    assert summary["epochs"] == 2 and load_checkpoint(ckpt)["epoch"] == 2 and len(_epochs(metrics)) == 2
    assert json.loads(metrics.read_text().splitlines()[-1])["summary"]


@pytest.mark.parametrize("at, only, num_envs", [(1, None, 4), (1, 1, 4), (2, None, 8), (5, 0, 2)])
def test_async_workers_that_die_inside_step_end_in_one_line(at, only, num_envs):
    """Workers that exit inside ``step`` (the first step, one of them or all): the documented line
    and exit 1, in a real process (warnings and tracebacks reach stderr), nothing else on stderr:
    no EOFError or EBADF from the dead workers' pipes, no warning from closing the env."""
    kwargs = {"fault": "die", "at": at} if only is None else {"fault": "die", "at": at, "only_seed": only}
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import gymnasium as gym, faulty_envs\n"
        f"gym.register('DieNow-v0', entry_point=faulty_envs.FaultyEnv, kwargs={kwargs!r})\n"
        "from fastpg.cli import main\n"
        f"sys.exit(main(['train', '--env', 'DieNow-v0', '--backend', 'async', '--num-envs', '{num_envs}', "
        "'--num-steps', '16', '--quiet', '--eval-episodes', '0', '--max-epochs', '4']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert re.fullmatch(r"fastpg: error: env DieNow-v0: step failed in async workers? [0-9, ]+: the worker process died "
                        r"\(exit code 3\)", err[0]), err  # fmt: skip


def test_a_vector_env_built_by_the_user_fails_in_one_line():
    env = GymVectorEnv(gym.vector.SyncVectorEnv([lambda: FaultyEnv(fault="raise", at=2)]), env_id="Mine-v0")
    env.reset(seed=0)
    env.step(torch.zeros(1, dtype=torch.int64))
    with pytest.raises(EnvWorkerError, match="^env Mine-v0: step failed in the vector env: ValueError: the simulator"):
        env.step(torch.zeros(1, dtype=torch.int64))


def test_an_env_whose_close_raises_still_trains_and_warns(capsys):
    with pytest.warns(RuntimeWarning, match="close failed: OSError: the simulator's licence server is gone"):
        code, out, _ = _cli(
            capsys, "train", "--env", "FaultyClose-v0", "--backend", "sync", *QUICK, "--max-epochs", "1"
        )
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["epochs"] == 1


def test_sigterm_to_the_whole_process_group_stops_an_async_run_cleanly(tmp_path):
    """What systemd and job schedulers send: the workers live in process groups of their own, so
    the main process alone gets it, finishes the epoch, checkpoints, summarizes and closes them."""
    proc, ckpt, log = _start_training(tmp_path, "--backend", "async", start_new_session=True)
    workers = children(proc.pid)
    assert len(workers) >= 2
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == "interrupted (SIGTERM)" and summary["checkpoint"] == str(ckpt / CHECKPOINT_NAME)
    assert load_checkpoint(ckpt)["epoch"] == summary["epochs"] == len(_epochs(log))
    time.sleep(0.5)
    assert not [w for w in workers if alive(w)], "worker processes were left behind"


def test_async_workers_that_cannot_start_give_one_line(capsys, monkeypatch):
    import multiprocessing.process

    def refuse(self):
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    code, _, err = _cli(capsys, "train", "--backend", "async", *QUICK, "--max-epochs", "1")
    assert code == 1 and err == [
        "fastpg: error: env CartPole-v1: could not start 3 async worker processes (Resource temporarily unavailable); "
        "lower --num-envs or use --backend sync"
    ]


# -- sizes that cannot fit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, part",
    [
        ("--num-steps", "1000000000", "storage [T, N]"),
        ("--num-envs", "1000000000", "storage [T, N]"),
        ("--hidden-sizes", "1000000000", "update activations"),
        ("--eval-episodes", "1000000000", "evaluation"),
    ],
)
def test_a_run_that_cannot_fit_is_refused_before_anything_runs(capsys, flag, value, part):
    t0 = time.perf_counter()
    code, out, err = _cli(capsys, "train", flag, value)
    assert code == 2 and len(err) == 1 and out == ""
    assert err[0].startswith(f"fastpg: error: {flag}: the run needs at least ")
    assert f"({part} " in err[0] or f"; {part} " in err[0]
    assert f"available on {'cuda' if torch.cuda.is_available() else 'cpu'}" in err[0]  # auto: the GPU's memory
    assert time.perf_counter() - t0 < 10


def test_the_footprint_of_the_defaults_is_small():
    from fastpg.footprint import footprint
    from fastpg.update import slice_rows

    with Trainer(Config(max_epochs=1, quiet=True)) as tr:
        info = tr.env.info
        stored = sum(t.numel() * t.element_size() for t in tr.buf.values())
    parts = footprint(Config(), info, backend="torch", fused=True, slice_rows=slice_rows((128,)))
    assert parts[0].nbytes == stored  # the storage estimate is the storage fastpg allocates
    assert sum(p.nbytes for p in parts) < 100 * 2**20


# -- the command line and its start ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-envs", "abc"], "Error parsing --num-envs: invalid literal for int() with base 10: 'abc'"),
        (["--backend", "foo"], "invalid choice 'foo' for argument '--backend'."),
        (["--bogus", "3"], "Unrecognized options: --bogus"),
    ],
)
def test_command_lines_tyro_cannot_parse_give_one_line(capsys, argv, message):
    code, _, err = _cli(capsys, "train", *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("fastpg: error: ") and message in err[0]
    assert err[0].endswith("(fastpg train --help lists every flag)")


def test_ctrl_c_while_importing_exits_130_in_one_line():
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "from fastpg.cli import main\n"
        "builtins.__import__ = interrupted\n"
        "sys.exit(main(['train']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and proc.stderr.strip().splitlines() == ["fastpg: interrupted"], proc.stderr


def test_a_kernel_that_cannot_be_built_ends_in_one_line(tmp_path):
    env = {**os.environ, "CXX": str(tmp_path / "no-compiler"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    cmd = [sys.executable, "-m", "fastpg.cli", "train", "--env-kernel", "cpp", "--device", "cpu", "--max-epochs", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr  # no torch warning box, no traceback
    assert err[0].startswith("fastpg: error: could not build fastpg's C++ kernels: no C++ compiler (")
    assert "install one (g++ or clang++" in err[0] and "--fused off" in err[0]


def test_a_compiler_that_fails_leaves_one_warning_line_and_the_generic_path(tmp_path):
    """A compiler that is there but fails (the fused epoch falls back): torch's compatibility box is
    not shown, the fallback is one warning line, then the generic path trains."""
    failing = tmp_path / "c++"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    env = {**os.environ, "CXX": str(failing), "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    cmd = [sys.executable, "-m", "fastpg.cli", "train", "--device", "cpu", "--max-epochs", "1", "--eval-episodes", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    notes = [line for line in proc.stderr.splitlines() if not line.startswith("epoch ")]
    assert proc.returncode == 0, proc.stderr
    assert notes[0].startswith("fastpg: compiling") and notes[1].startswith("fastpg: warning: could not build")
    assert notes[2].startswith("fastpg: epoch: generic") and len(notes) == 4, notes  # and the final line


# -- the Python API --------------------------------------------------------------------------------------


def test_an_object_that_is_not_an_env_is_refused_by_name():
    with pytest.raises(
        ConfigError, match=r"^env: the env given \(object\) is not a fastpg BatchedEnv: it has no num_envs"
    ):
        Trainer(Config(quiet=True), env=object())


class _MisshapenEnv:
    """A user's BatchedEnv of 3 copies (obs_shape (4,)) that returns one field wrong: ``where`` is
    ``"reset"`` or ``"step"``, ``field`` the Step field, ``value`` what it returns instead."""

    def __init__(self, where: str, field: str, value):
        from fastpg.envs import EnvInfo

        self.num_envs, self.device = 3, torch.device("cpu")
        self.info = EnvInfo(env_id="Mine-v0", obs_shape=(4,), discrete=True, num_actions=2, action_shape=())
        self.where, self.field, self.value = where, field, value

    def reset(self, seed=None):
        return self.value if self.where == "reset" else torch.zeros(3, 4)

    def step(self, action):
        from fastpg.envs import Step

        fields = dict(obs=torch.zeros(3, 4), reward=torch.ones(3), done=torch.zeros(3, dtype=torch.bool),
                      valid=torch.ones(3, dtype=torch.bool), terminated=torch.zeros(3, dtype=torch.bool))  # fmt: skip
        if self.where == "step":
            fields[self.field] = self.value
        return Step(**fields)

    def close(self):
        pass


@pytest.mark.parametrize(
    "where, field, value, message",
    [
        (
            "reset",
            "obs",
            torch.zeros(3, 5),
            r"reset returned obs of shape \[3, 5\], but its EnvInfo and num_envs say \[3, 4\]",
        ),
        (
            "reset",
            "obs",
            torch.zeros(2, 4),
            r"reset returned obs of shape \[2, 4\], but .* say \[3, 4\] \(N = 3 copies",
        ),
        ("reset", "obs", np.zeros((3, 4)), r"reset returned obs as ndarray, not a torch tensor of shape \[3, 4\]"),
        ("step", "obs", torch.zeros(4), r"step returned obs of shape \[4\], but .* say \[3, 4\]"),
        ("step", "reward", torch.ones(3, 1), r"step returned reward of shape \[3, 1\], but .* say \[3\]"),
        ("step", "done", torch.zeros(3), r"step returned done of dtype torch.float32, expected torch.bool"),
        (
            "step",
            "obs",
            torch.zeros(3, 4, dtype=torch.int64),
            r"step returned obs of dtype torch.int64, expected a floating",
        ),
    ],
)
def test_an_env_that_returns_the_wrong_shapes_is_named_in_one_line(where, field, value, message):
    """A user's env whose first reset or step does not match its EnvInfo is refused naming the
    env, the field and both shapes (not a broadcasting error from inside collect)."""
    with pytest.raises(UnsupportedEnvError, match=f"^env Mine-v0: {message}"):
        with Trainer(
            Config(num_envs=3, num_steps=4, quiet=True, eval_episodes=0), env=_MisshapenEnv(where, field, value)
        ) as tr:
            tr.epoch()


class _TensorPolicy(torch.nn.Module):
    def __init__(self, out: int = 2, shape_out: bool = False):
        super().__init__()
        self.net = torch.nn.Linear(4, out)
        self.shape_out = shape_out

    def forward(self, obs):
        logits = self.net(obs)
        if self.shape_out:
            return torch.distributions.Categorical(logits=logits.unsqueeze(0).expand(2, -1, -1))
        return logits


@pytest.mark.parametrize(
    "policy, message",
    [
        (
            _TensorPolicy(),
            "_TensorPolicy must return a torch.distributions.Distribution for observations [N, *obs_shape]; it returned Tensor",
        ),
        (_TensorPolicy(out=3, shape_out=True), "_TensorPolicy gives 3 action logits; CartPole-v1 has 2 actions"),
        (
            _TensorPolicy(shape_out=True),
            "_TensorPolicy returned a distribution over shape [2, 16] for observations [16, 4]; "
            "expected [16] (batch [N] of CartPole-v1's actions)",
        ),
    ],
)
def test_a_policy_that_breaks_the_contract_is_refused_by_name(policy, message):
    with pytest.raises(ConfigError) as e:
        Trainer(Config(quiet=True, fused="off"), policy=policy)
    assert str(e.value) == f"policy: {message}"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(overwrite="no"), "overwrite: must be True or False, got 'no'"),
        (dict(quiet="yes"), "quiet: must be True or False"),
        (dict(max_epochs=True), "max_epochs: "),
        (dict(metrics_file=3), "metrics_file: must be a path"),
    ],
)
def test_config_values_of_the_wrong_type_are_refused(changes, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        Config(**changes)


def test_numpy_scalars_are_accepted():
    cfg = Config(gamma=np.float32(0.5), seed=np.int64(3), num_envs=np.int32(4))
    assert (cfg.gamma, cfg.seed, cfg.num_envs) == (0.5, 3, 4) and type(cfg.seed) is int


def test_metrics_path_check_does_not_touch_an_existing_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("kept\n")
    with pytest.raises(ConfigError, match="already exists"):
        from fastpg.run import train

        train(Config(metrics_file=path, quiet=True, max_epochs=1))
    assert path.read_text() == "kept\n" and Path(path).stat().st_size == 5


# -- issue 13's bugs ---------------------------------------------------------------------------------------


def test_resume_continues_with_the_saved_settings_and_applies_what_may_change(tmp_path, capsys):
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    first = ("--hidden-sizes", "64", "--activation", "tanh", "--num-envs", "4", "--num-steps", "32", "--lr", "0.005")
    code, _, _ = _cli(
        capsys,
        "train",
        *first,
        "--max-epochs",
        "2",
        "--checkpoint-dir",
        str(ckpt),
        "--metrics-file",
        str(metrics),
        "--quiet",
    )
    assert code == 0
    code, out, err = _cli(capsys, "train", "--resume", str(ckpt), "--max-epochs", "4", "--lr", "0.002")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epochs"] == 4 and summary["epochs_this_run"] == 2 and summary["resumed_from"] == str(ckpt)
    state = load_checkpoint(ckpt)
    assert state["config"]["hidden_sizes"] == [64] and state["config"]["activation"] == "tanh"  # as saved
    assert state["config"]["lr"] == 0.002 and state["optimizer"]["param_groups"][0]["lr"] == 0.002  # applied
    assert [r["epoch"] for r in _epochs(metrics)] == [1, 2, 3, 4]  # the saved metrics file, appended to
    code, _, err = _cli(capsys, "train", "--resume", str(ckpt), "--hidden-sizes", "32", "--max-epochs", "6")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(
        "fastpg: error: --hidden-sizes: cannot change when resuming (checkpoint: (64,), given: (32,))"
    )


def test_an_env_id_in_gymnasiums_module_form_is_accepted(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_envs_for_fastpg.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyPole-v0', entry_point='gymnasium.envs.classic_control.cartpole:CartPoleEnv', max_episode_steps=50)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = _cli(capsys, "train", "--env", "my_envs_for_fastpg:MyPole-v0", *QUICK, "--max-epochs", "1")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["env"] == "my_envs_for_fastpg:MyPole-v0"
    code, _, err = _cli(capsys, "train", "--env", "no_such_module_here:MyPole-v0")
    assert code == 2 and err == [
        "fastpg: error: --env: could not import 'no_such_module_here' (of 'no_such_module_here:MyPole-v0'): "
        "ModuleNotFoundError: No module named 'no_such_module_here'"
    ]


def test_the_last_epoch_gets_its_progress_line_when_a_budget_stops_the_run(capsys):
    code, _, err = _cli(capsys, "train", "--max-epochs", "3", "--progress-interval-s", "100", "--eval-episodes", "0")
    assert code == 0
    assert [line.split("|")[0].split()[1] for line in err if line.startswith("epoch")] == ["1", "3"]


def test_stdout_holds_the_json_summary_alone_and_stderr_speaks_to_people(capsys):
    code, out, err = _cli(capsys, "train", "--max-epochs", "4", "--progress-interval-s", "0", "--eval-episodes", "10")
    assert code == 0 and len(out.splitlines()) == 1  # `fastpg train | jq` works
    summary = json.loads(out)
    assert summary["train_wall_s"] == float(f"{summary['train_wall_s']:.6g}")  # rounded for reading
    progress = [line for line in err if line.startswith("epoch")]
    assert len(progress) == 4 and progress[-1].endswith("s") and "| 100% eta 0.0s" in progress[-1]
    assert "| 25% eta " in progress[0].replace("  ", " ")
    assert err[-2] == "fastpg: evaluating 10 episodes..."
    assert err[-1].startswith("fastpg: stopped (max_epochs) after ") and ", 4 epochs, evaluation " in err[-1]


def test_version_and_module_entry_point(capsys):
    code, out, _ = _cli(capsys, "--version")
    assert code == 0 and out.startswith("fastpg 0.1.0 (torch ") and "gymnasium" in out
    proc = subprocess.run([sys.executable, "-m", "fastpg", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: fastpg COMMAND")


# -- trained policies as artifacts ------------------------------------------------------------------------


def test_load_policy_round_trip_acts_like_the_trained_policy(tmp_path):
    import fastpg

    ckpt = tmp_path / "ckpt"
    with Trainer(Config(num_envs=4, num_steps=32, max_epochs=2, quiet=True, checkpoint_dir=ckpt, device="cpu")) as tr:
        list(tr.run())
        from fastpg.checkpoint import save_checkpoint

        save_checkpoint(tr.state_dict(), ckpt)
        obs = torch.randn(7, 4)
        expected = tr.policy(obs).logits.argmax(-1)
    policy = fastpg.load_policy(ckpt)
    assert torch.equal(policy(obs, deterministic=True), expected)  # a batch
    single = policy.act(obs[0].numpy(), deterministic=True)  # one observation, numpy in
    assert single.shape == () and single.item() == expected[0].item()
    sampled = policy(obs, generator=torch.Generator().manual_seed(0))
    assert sampled.dtype == torch.int64 and sampled.shape == (7,)
    assert policy.config.num_envs == 4 and policy.info.env_id == "CartPole-v1"


def test_fastpg_eval_reports_fresh_episodes_of_a_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "--checkpoint-dir", str(ckpt), "--max-epochs", "3", "--quiet"]) == 0
    code, out, err = _cli(capsys, "eval", "--checkpoint", str(ckpt), "--episodes", "12", "--deterministic")
    summary = json.loads(out)
    assert code == 0 and summary["eval_episodes"] == 12 and summary["deterministic"] is True
    assert err[-1].startswith("fastpg: CartPole-v1: ") and err[-1].endswith("over 12 episodes")
    code, _, err = _cli(capsys, "eval", "--checkpoint", str(tmp_path / "none"))
    assert code == 2 and len(err) == 1 and "no checkpoint at" in err[0]


def test_fastpg_eval_films_episodes_with_the_video_extra(tmp_path, capsys):
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    ckpt, videos = tmp_path / "ckpt", tmp_path / "videos"
    assert main(["train", "--checkpoint-dir", str(ckpt), "--max-epochs", "2", "--quiet"]) == 0
    code, out, _ = _cli(
        capsys, "eval", "--checkpoint", str(ckpt), "--episodes", "4", "--video", str(videos), "--video-episodes", "2"
    )
    summary = json.loads(out)
    assert code == 0 and len(summary["filmed"]) == 2 and len(summary["videos"]) == 2
    assert all(Path(v).stat().st_size > 1000 for v in summary["videos"])


# -- logging that tools read ---------------------------------------------------------------------------------


def test_tensorboard_logs_every_epoch_metric_readable_by_tensorboard(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    code, out, _ = _cli(
        capsys, "train", "--tensorboard", str(logdir), "--max-epochs", "3", "--quiet", "--eval-episodes", "0"
    )
    assert code == 0
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert {"train/return_mean", "train/loss", "train/entropy", "train/sps"} <= set(events.Tags()["scalars"])
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [8192, 16384, 24576]  # against env steps
    assert {"run/header/text_summary", "run/summary/text_summary"} <= set(events.Tags()["tensors"])


# -- plots -----------------------------------------------------------------------------------------------------


def test_fastpg_plot_draws_runs_and_seeds(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from fastpg.plotting import read_run

    files = []
    for seed, n in ((0, 8), (1, 8), (2, 8), (0, 32)):
        files.append(str(tmp_path / f"n{n}-s{seed}.jsonl"))
        args = ("--seed", str(seed), "--num-envs", str(n), "--num-steps", "64", "--max-epochs", "8")
        assert main(["train", *args, "--metrics-file", files[-1], "--quiet", "--eval-episodes", "0"]) == 0
    runs = [read_run(Path(f)) for f in files]
    assert len({r.experiment for r in runs}) == 2  # three seeds of one experiment, and another
    assert runs[0].target == 475.0 and len(runs[0].steps) == len(runs[0].returns) > 3
    code, _, err = _cli(capsys, "plot", *files, "-o", str(tmp_path / "curve.png"))
    assert code == 0 and err == [f"fastpg: wrote {tmp_path / 'curve.png'} (4 runs)"]
    image = matplotlib.image.imread(tmp_path / "curve.png")
    assert image.shape[0] >= 400 and image.shape[1] >= 1000 and image[..., :3].std() > 0.05  # drawn, not blank
    code, _, err = _cli(capsys, "plot", str(tmp_path / "missing.jsonl"))
    assert code == 2 and err == [f"fastpg: error: --files: no metrics file at {tmp_path / 'missing.jsonl'}"]


# -- per-environment defaults ------------------------------------------------------------------------------


def test_an_env_gets_its_tuned_settings_for_the_flags_not_typed(tmp_path, capsys):
    from fastpg.config import ENV_DEFAULTS

    metrics = tmp_path / "m.jsonl"
    args = ("--env", "Pendulum-v1", "--num-envs", "4", "--max-epochs", "1", "--eval-episodes", "0", "--quiet")
    code, _, _ = _cli(capsys, "train", *args, "--metrics-file", str(metrics))
    assert code == 0
    config = json.loads(metrics.read_text().splitlines()[0])["config"]
    tuned = ENV_DEFAULTS["Pendulum-v1"]
    assert config["num_envs"] == 4  # typed: kept
    assert config["num_steps"] == tuned["num_steps"] and config["hidden_sizes"] == list(tuned["hidden_sizes"])
    assert config["baseline"] == "value" and config["gamma"] == tuned["gamma"]
    typed = dict(num_envs=4, max_epochs=1, eval_episodes=0, quiet=True, metrics_file=metrics)
    assert Config.for_env("Pendulum-v1", **typed) == Config.from_dict(config)
    assert Config.for_env("CartPole-v1") == Config()  # ids without an entry take Config's defaults
    for env_id in ENV_DEFAULTS:
        Config.for_env(env_id)  # every entry is a valid config


def test_a_multi_process_launch_outside_a_rendezvous_says_so(capsys, monkeypatch, tmp_path):
    """WORLD_SIZE > 1 is a data-parallel launch (tests/test_distributed.py): ``train`` joins the
    launch's process group, and says in one line when it cannot; the other commands run as one
    process and refuse such a launch."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, out, err = _cli(capsys, "train", "--max-epochs", "1", "--device", "cpu")  # a GPU each: not the point
    assert code == 1 and out == "" and len(err) == 1
    assert err[0].startswith("fastpg: error: could not join the process group of this launch (")
    code, out, err = _cli(capsys, "plot", str(tmp_path / "m.jsonl"))
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith("fastpg: error: launched as one of 2 processes (WORLD_SIZE=2, torchrun?)")
    monkeypatch.setenv("WORLD_SIZE", "1")  # a one-process torchrun launch is an ordinary run
    code, _, _ = _cli(capsys, "train", "--max-epochs", "1", "--quiet", "--eval-episodes", "0")
    assert code == 0


def _broken_env(**kwargs):
    raise RuntimeError("this env's constructor fails")


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


@pytest.mark.parametrize("backend", ["auto", "sync", "async"])
@pytest.mark.parametrize(
    "env_id, said",
    [
        ("LunarLander-v3", "(install: pip install 'fastpg-rl[box2d]')"),  # Box2D hidden below
        ("HalfCheetah-v5", "(install: pip install 'fastpg-rl[mujoco]')"),  # mujoco hidden below
        pytest.param("phys2d/CartPole-v1", "(install: pip install 'gymnasium[jax]')",
                     marks=pytest.mark.skipif(not _missing("jax"), reason="jax is installed here")),
        ("Hopper-v2", "use -v5 ids"),
        ("fastpg-test/Broken-v0", "RuntimeError: this env's constructor fails"),
    ],
)  # fmt: skip
def test_an_env_that_cannot_be_built_is_one_line_and_exit_two(env_id, said, backend, capsys, monkeypatch):
    """Every place that builds or inspects an env before training (the memory check included)
    goes through one guarded probe: one line naming the env and what to install, exit 2. The
    suites' packages are hidden (imports of them fail, as where they are not installed)."""
    import gymnasium as gym

    from fastpg.cli import main

    for package in ("Box2D", "mujoco"):
        monkeypatch.setitem(sys.modules, package, None)  # `import Box2D` raises ImportError
    for name in [m for m in sys.modules if m.startswith(("gymnasium.envs.box2d", "gymnasium.envs.mujoco"))]:
        monkeypatch.delitem(sys.modules, name)

    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_broken_env)
    assert main(["train", "--env", env_id, "--backend", backend, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fastpg: error: --env: could not create {env_id}"), err
    assert said in err[0]


def test_wandb_without_its_package_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """--wandb where the wandb package is absent (hidden here): refused by the checks before the
    run starts, naming the field and the extra; no metrics file is begun."""
    from fastpg.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    metrics = tmp_path / "m.jsonl"
    assert main(["train", "--wandb", "my-project", "--metrics-file", str(metrics), *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fastpg: error: --wandb: needs the wandb package (the wandb extra: pip install -e '.[wandb]')"]
    assert not metrics.exists()
