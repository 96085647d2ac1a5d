"""Reliability (issue 5): checkpoints and resume, interrupts, determinism, numerical faults,
misbehaving environments, and output files that are never silently overwritten."""

from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from faulty_envs import FaultyEnv
from processes import alive, children

from fastpg import Config, Trainer, train
from fastpg.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, state_digest
from fastpg.cli import main
from fastpg.config import ConfigError
from fastpg.envs import EnvWorkerError, GymVectorEnv
from fastpg.trainer import NonFiniteError

TIMING = {"wall_s", "sps", "collect_s", "update_s"}
SMALL = dict(num_envs=8, num_steps=64, eval_episodes=0, quiet=True)


def _epochs(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in TIMING} for r in rows if not r.get("summary") and not r.get("header")
    ]


# -- checkpoints and resume --------------------------------------------------------------------------


def test_resumed_native_run_has_the_same_metrics_bit_for_bit(tmp_path):
    full, part, ckpt = tmp_path / "full.jsonl", tmp_path / "part.jsonl", tmp_path / "ckpt"
    train(Config(**SMALL, seed=3, max_epochs=6, metrics_file=full))
    first = train(Config(**SMALL, seed=3, max_epochs=3, metrics_file=part, checkpoint_dir=ckpt, checkpoint_every=2))
    assert first["checkpoint"] == str(ckpt / CHECKPOINT_NAME) and load_checkpoint(ckpt)["epoch"] == 3
    second = train(Config(**SMALL, seed=3, max_epochs=6, metrics_file=part, resume=ckpt))
    assert second["resumed_from"] == str(ckpt) and second["epochs"] == 6 and second["epochs_this_run"] == 3
    assert _epochs(part) == _epochs(full)  # appended on resume; every figure equal, timings aside
    assert len(_epochs(full)) == 6


def test_resume_after_a_kill_drops_the_epochs_written_after_the_checkpoint(tmp_path, capsys):
    """A run killed after its last checkpoint had written later epochs (and a torn line); the
    resumed run's metrics file reads as the uninterrupted run: each epoch once, one summary."""
    full, part, ckpt = tmp_path / "full.jsonl", tmp_path / "part.jsonl", tmp_path / "ckpt"
    train(Config(**SMALL, seed=1, max_epochs=4, metrics_file=full))
    train(Config(**SMALL, seed=1, max_epochs=2, metrics_file=part, checkpoint_dir=ckpt))
    epoch3 = next(line for line in full.read_text().splitlines() if json.loads(line).get("epoch") == 3)
    with part.open("a") as f:
        f.write(epoch3 + "\n" + epoch3[:25])  # what the killed run wrote after its checkpoint
    capsys.readouterr()
    train(Config(**SMALL, seed=1, max_epochs=4, metrics_file=part, resume=ckpt))
    assert (
        f"{part} continues from the checkpoint's epoch 2 (removed: later epoch x1, earlier summary x1, torn line x1)"
        in capsys.readouterr().err
    )
    rows = [json.loads(line) for line in part.read_text().splitlines()]
    kinds = ["header" if r.get("header") else "summary" if r.get("summary") else r["epoch"] for r in rows]
    assert kinds == ["header", 1, 2, "header", 3, 4, "summary"]  # one run; the resume says where it continued
    assert rows[3]["resumed_at_epoch"] == 2 and rows[0]["resumed_at_epoch"] is None
    assert _epochs(part) == _epochs(full)


def test_a_signal_during_the_final_evaluation_is_the_stop_reason(tmp_path, monkeypatch):
    import os

    real = Trainer.evaluate

    def evaluate_then_signal(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while evaluating: recorded, evaluation goes on
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", evaluate_then_signal)
    summary = train(Config(**{**SMALL, "eval_episodes": 8}, max_epochs=1))
    assert summary["stop_reason"] == "interrupted (SIGINT) during the final evaluation, after max_epochs"
    assert summary["exit_code"] == 130 and summary["eval_episodes"] == 8


def test_checkpoint_holds_plain_data_only(tmp_path):
    with Trainer(Config(**SMALL)) as tr:
        tr.epoch()
        path = save_checkpoint(tr.state_dict(), tmp_path)
    state = torch.load(path, weights_only=True)  # no pickled code can run
    assert state["epoch"] == 1 and state["config"]["env"] == "CartPole-v1" and state["env"]["state"].shape == (4, 8)
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary file left behind


def test_a_file_that_needs_unpickling_code_is_refused(tmp_path):
    torch.save({"format": 1, "payload": functools.partial(print, "hi")}, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ConfigError, match="not a readable fastpg checkpoint") as e:
        load_checkpoint(tmp_path)
    assert "Python objects beyond tensors" in str(e.value) and "weights_only" not in str(e.value)


def _without(key):
    return lambda s: s.pop(key)


def _set(path, value):
    def change(state):
        *parents, last = path
        for key in parents:
            state = state[key]
        state[last] = value(state[last]) if callable(value) else value

    return change


@pytest.mark.parametrize(
    "change, problem",
    [
        (_without("policy"), "missing 'policy'"),
        (_set(["epoch"], "three"), "'epoch' is str, expected a number"),
        (_set(["policy", "net.0.weight"], lambda t: t[:5]), "policy.net.0.weight is a tensor of torch.float32 [5, 4]"),
        (
            _set(["env", "state"], lambda t: t[:, :3]),
            "env.state is a tensor of torch.float32 [4, 3], expected torch.float32 [4, 8]",
        ),
        (_set(["carry", "obs"], [1, 2]), "carry.obs is list, expected a tensor"),
        (_set(["generator"], lambda t: t[:10]), "generator is a tensor of torch.uint8 [10]"),
        (_set(["optimizer", "state", 0, "exp_avg"], lambda t: t.T), "optimizer.state.0.exp_avg has shape [4, 128]"),
        (_set(["window", "returns"], "x"), "'window' must hold the lists"),
        (_set(["config"], None), "'config' is missing or not a dict"),
    ],
)
def test_a_checkpoint_with_wrong_contents_is_refused_in_one_line(tmp_path, capsys, change, problem):
    ckpt = tmp_path / "ckpt"
    train(Config(**SMALL, max_epochs=1, checkpoint_dir=ckpt))
    state = torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)
    change(state)
    state["sha256"] = state_digest(state)  # a checkpoint made so, sound as a file: the schema refuses it
    torch.save(state, ckpt / CHECKPOINT_NAME)
    capsys.readouterr()
    code = main(["train", "--resume", str(ckpt), "--num-envs", "8", "--num-steps", "64", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"fastpg: error: --resume: {ckpt / CHECKPOINT_NAME} ")
    assert problem in err[0]


def test_incompatible_checkpoint_is_refused_with_the_fields(tmp_path):
    """From Python the rule of `fastpg train --resume`: only RESUME_CHANGEABLE fields may differ."""
    train(Config(**SMALL, max_epochs=1, checkpoint_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"hidden_sizes: checkpoint \[128\], now \[64\]"):
        train(Config(**SMALL, max_epochs=2, resume=tmp_path, hidden_sizes=(64,)))
    with pytest.raises(ConfigError, match="env: checkpoint 'CartPole-v1', now 'Acrobot-v1'"):
        train(Config(**{**SMALL, "env": "Acrobot-v1"}, max_epochs=2, resume=tmp_path))
    with pytest.raises(ConfigError, match=r"gamma: checkpoint 0.99, now 0.9; seed: checkpoint 0, now 4\)"):
        train(Config(**SMALL, max_epochs=2, resume=tmp_path, gamma=0.9, seed=4))
    summary = train(Config(**SMALL, max_epochs=2, resume=tmp_path, lr=3e-3, max_bad_updates=3))  # may change
    assert summary["epochs"] == 2


def test_missing_or_foreign_checkpoint_gives_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "--resume: no checkpoint at" in capsys.readouterr().err
    torch.save([1, 2, 3], tmp_path / CHECKPOINT_NAME)
    with pytest.raises(ConfigError, match="not a fastpg checkpoint"):
        load_checkpoint(tmp_path)


_KILL_MID_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys, torch
    import fastpg.checkpoint as ck
    from fastpg import Config, train
    real_save, calls = torch.save, [0]
    def save(obj, f):
        calls[0] += 1
        if calls[0] == 3:  # the third checkpoint: half a file, then the process is killed
            f.write(b"x" * 1000); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f)
    ck.torch.save = save
    train(Config(num_envs=8, num_steps=64, eval_episodes=0, quiet=True, seed=5, max_epochs=10,
                 checkpoint_dir=sys.argv[1], checkpoint_every=1, metrics_file=sys.argv[2]))
    """
)


def test_kill_mid_checkpoint_keeps_the_previous_one_and_resumes(tmp_path):
    ckpt, log = tmp_path / "ckpt", tmp_path / "m.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_MID_CHECKPOINT, str(ckpt), str(log)], capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(ckpt)["epoch"] == 2  # the torn third write never replaced it
    assert len(_epochs(log)) == 3  # every finished epoch reached the metrics file
    summary = train(Config(**SMALL, seed=5, max_epochs=4, resume=ckpt, metrics_file=log))
    assert summary["epochs"] == 4 and load_checkpoint(ckpt)["epoch"] == 4
    assert not list(ckpt.glob(".checkpoint-*"))  # the dead run's temporary file was cleared


# -- files are never silently overwritten -------------------------------------------------------------


def test_existing_metrics_file_and_checkpoint_are_refused_unless_overwrite(tmp_path, capsys):
    log, ckpt = tmp_path / "m.jsonl", tmp_path / "ckpt"
    train(Config(**SMALL, max_epochs=1, metrics_file=log, checkpoint_dir=ckpt))
    before = log.read_text()
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        train(Config(**SMALL, max_epochs=1, metrics_file=log))
    with pytest.raises(ConfigError, match=f"{ckpt} already holds a checkpoint; pass --resume"):
        train(Config(**SMALL, max_epochs=1, checkpoint_dir=ckpt))
    assert log.read_text() == before
    code = main(["train", "--max-epochs", "1", "--metrics-file", str(log), "--quiet", "--eval-episodes", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fastpg: error: --metrics-file:")
    train(Config(**SMALL, max_epochs=2, metrics_file=log, checkpoint_dir=ckpt, overwrite=True))
    assert len(_epochs(log)) == 2 and load_checkpoint(ckpt)["epoch"] == 2


# -- outputs: checked up front, never torn, never shared ----------------------------------------------


def _cli(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout and stderr lines of ``fastpg ARGV`` run in this process."""
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


@pytest.mark.parametrize(
    "flag, path, message",
    [
        ("--metrics-file", "{tmp}", "is a directory; give a file path"),
        ("--metrics-file", "/sys/fastpg-metrics.jsonl", "cannot write in /sys (Permission denied)"),
        ("--checkpoint-dir", "/sys/fastpg-ckpt/run1", "cannot write in /sys (Permission denied)"),
        ("--checkpoint-dir", "{tmp}/file/ckpt", "cannot be created: {tmp}/file is not a directory"),
    ],
)
def test_unwritable_outputs_are_refused_before_training(tmp_path, capsys, flag, path, message):
    (tmp_path / "file").write_text("x")
    code, _, err = _cli(capsys, "train", flag, path.format(tmp=tmp_path), "--max-epochs", "1")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"fastpg: error: {flag}: ")
    assert message.format(tmp=tmp_path) in err[0]


def test_bench_json_path_is_checked_before_measuring(tmp_path, capsys):
    t0 = time.perf_counter()
    code, _, err = _cli(capsys, "bench", "--json", str(tmp_path), "--phases", "train")
    assert code == 2 and len(err) == 1 and "--json" in err[0] and "is a directory" in err[0]
    assert time.perf_counter() - t0 < 5  # refused, not measured


def test_a_metrics_file_named_like_the_checkpoint_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    code, _, err = _cli(capsys, "train", "--checkpoint-dir", str(ckpt), "--metrics-file", str(ckpt / CHECKPOINT_NAME))
    assert code == 2 and len(err) == 1 and "is a file the checkpoints in" in err[0]


def test_a_checkpoint_directory_serves_one_run_at_a_time(tmp_path, capsys):
    import os

    from fastpg.checkpoint import DirectoryLock

    ckpt = tmp_path / "ckpt"
    with DirectoryLock(ckpt):  # another run holds it
        stray = ckpt / ".checkpoint-inflight.tmp"
        stray.write_bytes(b"the other run's checkpoint, half written")
        code, _, err = _cli(capsys, "train", "--checkpoint-dir", str(ckpt), "--max-epochs", "1")
        assert code == 2 and err == [
            f"fastpg: error: --checkpoint-dir: {ckpt} is in use by another fastpg run (pid {os.getpid()}); "
            "give each run its own"
        ]
        save_checkpoint({"epoch": 0}, ckpt)  # the holder's own writes leave other temp files alone
        assert stray.exists()
    code, _, _ = _cli(capsys, "train", "--checkpoint-dir", str(ckpt), "--max-epochs", "1", "--overwrite", "--quiet")
    assert code == 0 and not stray.exists()  # the lock's new holder proves it stale and removes it


def _full_disk_after(calls: int):
    """A write function that works ``calls`` times, then writes half its bytes and fails as a full disk does."""
    import errno
    import os

    real, count = os.write, [0]

    def write(fd, data):
        count[0] += 1
        if count[0] <= calls:
            return real(fd, data)
        if count[0] == calls + 1:
            return real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def test_full_disk_on_the_metrics_file_keeps_whole_lines(tmp_path, capsys, monkeypatch):
    import fastpg.metrics

    metrics = tmp_path / "m.jsonl"
    monkeypatch.setattr(fastpg.metrics.os, "write", _full_disk_after(3))  # the header, epochs 1 and 2
    code, _, err = _cli(capsys, "train", "--metrics-file", str(metrics), "--max-epochs", "5", "--quiet")
    monkeypatch.undo()
    assert code == 1 and len(err) == 1 and "No space left on device" in err[0] and str(metrics) in err[0]
    text = metrics.read_text()
    assert text.endswith("\n") and [json.loads(line).get("epoch") for line in text.splitlines()] == [None, 1, 2]


def test_full_disk_at_the_summary_still_prints_it(tmp_path, capsys, monkeypatch):
    import fastpg.metrics

    metrics = tmp_path / "m.jsonl"
    monkeypatch.setattr(fastpg.metrics.os, "write", _full_disk_after(3))  # header, epochs 1 and 2
    capsys.readouterr()
    code = main(["train", "--metrics-file", str(metrics), "--max-epochs", "2", "--quiet", "--eval-episodes", "0"])
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert code == 1 and "No space left on device" in captured.err
    assert json.loads(captured.out)["epochs"] == 2  # the summary is not lost
    assert [json.loads(line).get("epoch") for line in metrics.read_text().splitlines()] == [None, 1, 2]


def test_full_disk_on_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    import errno

    import fastpg.checkpoint

    ckpt, real_save, saves = tmp_path / "ckpt", torch.save, []

    def save(obj, f):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(fastpg.checkpoint.torch, "save", save)
    args = ("train", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "--max-epochs", "4", "--quiet")
    code, _, err = _cli(capsys, *args)
    monkeypatch.undo()
    assert code == 1 and err == [
        f"fastpg: error: could not write the checkpoint {ckpt / CHECKPOINT_NAME} (No space left on device); "
        "the previous checkpoint is intact"
    ]
    assert load_checkpoint(ckpt)["epoch"] == 1 and not list(ckpt.glob(".checkpoint-*"))


def test_a_full_disk_said_by_torchs_zip_writer_is_one_line_too(tmp_path, capsys, monkeypatch):
    """torch's writer reports a short write as RuntimeError, not OSError (issue 23): the same line,
    the previous checkpoint intact, no temporary file left."""
    import fastpg.checkpoint

    ckpt, real_save, saves = tmp_path / "ckpt", torch.save, []

    def save(obj, f):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"partial")
            raise RuntimeError(
                "[enforce fail at inline_container.cc:603] . unexpected pos 1024 vs 960\nException raised from ..."
            )
        real_save(obj, f)

    monkeypatch.setattr(fastpg.checkpoint.torch, "save", save)
    args = ("train", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "--max-epochs", "4", "--quiet")
    code, _, err = _cli(capsys, *args)
    monkeypatch.undo()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"fastpg: error: could not write the checkpoint {ckpt / CHECKPOINT_NAME} (the file could")
    assert "unexpected pos 1024 vs 960" in err[0] and err[0].endswith("the previous checkpoint is intact")
    assert load_checkpoint(ckpt)["epoch"] == 1 and not list(ckpt.glob(".checkpoint-*"))


@pytest.mark.parametrize(
    "extra, where, what",
    [
        ({"hook": print}, "state['extra']['hook']", "builtins.builtin_function_or_method"),
        ({"nested": [1, (2, Path("x"))]}, "state['extra']['nested'][1][1]", "pathlib.PosixPath"),
        ({"cfg": Config()}, "state['extra']['cfg']", "fastpg.config.Config"),
    ],
)
def test_a_checkpoint_the_loader_would_refuse_is_refused_when_saved(tmp_path, extra, where, what):
    """Writers refuse what readers refuse (issue 23): torch.save writes these, the weights-only
    loader then refuses the file; save_checkpoint refuses them first, naming the entry, and
    writes nothing."""
    import io

    state = {"epoch": 1, "policy": {"w": torch.zeros(2)}, "extra": extra}
    buffer = io.BytesIO()
    torch.save(state, buffer)  # plain torch writes it ...
    buffer.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buffer, weights_only=True)  # ... and its own safe loader refuses it
    with pytest.raises(TypeError, match=rf"^save_checkpoint: {re.escape(where)} is a {re.escape(what)}, which a"):
        save_checkpoint(state, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    save_checkpoint({"epoch": 1, "shape": torch.Size([2]), "dtype": torch.float32, "t": (1, None)}, tmp_path / "ok")


# -- interrupts ----------------------------------------------------------------------------------------


def _start_training(
    tmp_path: Path, *extra: str, start_new_session: bool = False
) -> tuple[subprocess.Popen, Path, Path]:
    ckpt, log = tmp_path / "ckpt", tmp_path / "m.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "fastpg.cli",
        "train",
        "--num-envs",
        "2",
        "--num-steps",
        "64",
        "--max-env-steps",
        "100000000",
        "--checkpoint-dir",
        str(ckpt),
        "--metrics-file",
        str(log),
        "--quiet",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=start_new_session
    )
    deadline = time.monotonic() + 90
    while not (log.exists() and log.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    return proc, ckpt, log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_after_the_epoch_with_checkpoint_summary_and_no_workers(tmp_path, sig):
    proc, ckpt, log = _start_training(tmp_path, "--backend", "async")
    workers = children(proc.pid)
    assert len(workers) >= 2  # the async env's worker processes
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stop_reason"] == f"interrupted ({sig.name})" and summary["exit_code"] == 128 + sig
    assert summary["checkpoint"] == str(ckpt / CHECKPOINT_NAME)
    assert load_checkpoint(ckpt)["epoch"] == summary["epochs"] == len(_epochs(log))
    assert json.loads(log.read_text().splitlines()[-1])["summary"]
    time.sleep(0.5)
    assert not [w for w in workers if alive(w)], "worker processes were left behind"


@pytest.mark.parametrize(
    "epoch",
    [("--fused", "off", "--num-steps", "20000"), ("--num-envs", "256", "--num-steps", "20000")],
    ids=["generic", "fused"],
)
def test_second_sigint_exits_at_once(tmp_path, epoch):
    # Long CPU epochs (a GPU runs them too fast for two signals within one): the first waits for the end.
    proc, ckpt, log = _start_training(tmp_path, "--device", "cpu", *epoch)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    assert '"summary"' not in out


# -- determinism ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "vector", "sync"])
def test_same_config_and_seed_give_identical_metrics(tmp_path, backend):
    logs = [tmp_path / f"{i}.jsonl" for i in range(2)]
    for log in logs:
        train(Config(**SMALL, backend=backend, seed=11, max_epochs=4, metrics_file=log))
    a, b = (_epochs(log) for log in logs)
    assert a == b and len(a) == 4


# -- numerical faults ----------------------------------------------------------------------------------


class _NanRewardEnv:
    """Wraps a BatchedEnv; copy ``index`` reports a NaN reward at every ``every``-th step."""

    def __init__(self, env, index: int, every: int):
        self.env, self.index, self.every, self.t = env, index, every, 0
        self.info, self.num_envs, self.device = env.info, env.num_envs, env.device

    def reset(self, seed=None):
        return self.env.reset(seed=seed)

    def step(self, action):
        step = self.env.step(action)
        self.t += 1
        if self.t % self.every == 0:
            reward = step.reward.clone()
            reward[self.index] = float("nan")
            step = step._replace(reward=reward)
        return step

    def close(self):
        self.env.close()


def test_nan_reward_is_reported_with_the_env_index_and_the_update_skipped():
    from fastpg.envs import make_env

    cfg = Config(**SMALL, max_bad_updates=3, device="cpu")
    with Trainer(cfg, env=_NanRewardEnv(make_env("CartPole-v1", 8), index=5, every=10**9)) as tr:
        tr.epoch()  # a clean epoch first
        tr.env.every = 7
        before = [p.detach().clone() for p in tr.policy.parameters()]
        opt_steps = tr.optimizer.state_dict()["state"][0]["step"].item()
        with pytest.warns(RuntimeWarning, match="non-finite reward or observation in env copy 5$"):
            m = tr.epoch()
        assert m["update_skipped"] and m["skipped_updates"] == 1 and m["nonfinite_envs"] == 1
        assert all(torch.equal(a, b) for a, b in zip(before, tr.policy.parameters()))
        assert tr.optimizer.state_dict()["state"][0]["step"].item() == opt_steps  # Adam never saw it
        with (
            pytest.warns(RuntimeWarning),
            pytest.raises(
                NonFiniteError, match=r"epoch 4: 3 updates in a row had a non-finite reward or observation \(env 5\)"
            ),
        ):
            for _ in range(3):
                tr.epoch()


def test_nan_data_in_masked_steps_still_counts_as_a_bad_update():
    """Every reward NaN and T far below an episode's length: no step reaches the loss (no episode
    ends within an epoch), yet the NaNs are bad data and stop the run after max_bad_updates."""
    from fastpg.envs import make_env

    cfg = Config(**{**SMALL, "num_steps": 2}, max_bad_updates=3, device="cpu", env="Acrobot-v1")
    with Trainer(cfg, env=_NanRewardEnv(make_env("Acrobot-v1", 8), index=2, every=1)) as tr:
        with pytest.warns(RuntimeWarning, match="env copy 2$"):
            for _ in range(2):
                m = tr.epoch()
                assert m["update_skipped"] and m["mask_frac"] == 0.0
            with pytest.raises(NonFiniteError, match=r"epoch 3: 3 updates in a row .* reward or observation \(env 2\)"):
                tr.epoch()


def test_nonfinite_parameter_is_named_and_training_stops_keeping_the_last_checkpoint(tmp_path, capsys):
    train(Config(**SMALL, max_epochs=2, checkpoint_dir=tmp_path))
    good = load_checkpoint(tmp_path)
    with Trainer(Config(**SMALL, max_bad_updates=1)) as tr:
        with torch.no_grad():
            tr.policy.net[0].weight[0, 0] = float("inf")
        with pytest.raises(NonFiniteError, match="epoch 1: 1 updates in a row had a non-finite"):
            tr.epoch()
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == good["epoch"] and all(
        torch.equal(state["policy"][k], good["policy"][k]) for k in good["policy"]
    )


def test_nan_loss_from_a_policy_stops_the_cli_with_one_line(tmp_path, capsys, monkeypatch):
    import fastpg.policy

    real = fastpg.policy.MLPPolicy.forward

    def nan_forward(self, obs):
        dist = real(self, obs)
        return torch.distributions.Categorical(logits=dist.logits * float("nan"), validate_args=False)

    monkeypatch.setattr(fastpg.policy.MLPPolicy, "forward", nan_forward)
    code = main(
        [
            "train",
            "--max-epochs",
            "5",
            "--fused",
            "off",  # the generic path calls the patched forward
            "--max-bad-updates",
            "2",
            "--quiet",
            "--num-steps",
            "32",
            "--checkpoint-dir",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [
        "fastpg: error: epoch 2: 2 updates in a row had a non-finite loss and were skipped "
        "(--max-bad-updates 2); the parameters are those of the last good update"
    ]


# -- misbehaving environments --------------------------------------------------------------------------


def _faulty_async(fault: str, timeout_s: float = 60.0) -> GymVectorEnv:
    fns = (
        [functools.partial(FaultyEnv)]
        + [functools.partial(FaultyEnv, fault=fault, at=3)]
        + [functools.partial(FaultyEnv)]
    )
    env = GymVectorEnv(gym.vector.AsyncVectorEnv(fns), env_id="Faulty-v0")
    env.async_timeout_s = timeout_s
    return env


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium logs the worker's traceback as warnings
@pytest.mark.parametrize(
    "fault, match",
    [
        ("raise", r"env Faulty-v0: step failed in async worker 1: ValueError: the simulator exploded"),
        ("die", r"env Faulty-v0: step failed in async worker 1: \w+"),
        ("hang", r"env Faulty-v0: step failed in async (worker 1|a worker): no answer within 2 s \(hung or died\)"),
    ],
)
def test_async_worker_fault_names_env_and_worker_and_stops_all_workers(fault, match):
    env = _faulty_async(fault, timeout_s=2.0)
    procs = list(env.vec_env.processes)
    env.reset(seed=0)
    t0 = time.monotonic()
    with pytest.raises(EnvWorkerError, match=match):
        for _ in range(5):
            env.step(torch.zeros(3, dtype=torch.int64))
    assert time.monotonic() - t0 < 30  # bounded, no hang
    env.close()
    for p in procs:
        p.join(timeout=10)
    assert not any(p.is_alive() for p in procs)
