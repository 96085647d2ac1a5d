"""Checkpoints that survive a crash: durable before visible, the last K kept, a checksum checked
before loading, and a fall back to the previous checkpoint when the newest is damaged (issue 23)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastpg.checkpoint as ck
from fastpg import Config, train
from fastpg.checkpoint import CHECKPOINT_NAME, history, load_checkpoint, save_checkpoint, state_digest
from fastpg.errors import ConfigError

SMALL = dict(num_envs=8, num_steps=64, eval_episodes=0, quiet=True, seed=2)


def _state(epoch: int) -> dict:
    g = torch.Generator().manual_seed(epoch)
    return {"config": {"env": "x"}, "epoch": epoch, "weights": torch.randn(64, generator=g), "rng": g.get_state()}


def _epochs(path: Path) -> list[dict]:
    keep = lambda m: {k: v for k, v in m.items() if not k.endswith("_s") and k != "sps"}  # noqa: E731
    return [keep(m) for m in map(json.loads, path.read_text().splitlines()) if isinstance(m.get("epoch"), int)]


def test_a_write_is_durable_before_it_is_visible_and_pruned_only_after(tmp_path, monkeypatch):
    """The order of the calls: the file fsynced, its history name linked, renamed over
    checkpoint.pt, the directory fsynced; only then the oldest history file removed."""
    for epoch in (1, 2):
        save_checkpoint(_state(epoch), tmp_path)
    calls: list[str] = []
    real = {name: getattr(os, name) for name in ("fsync", "link", "replace")}
    monkeypatch.setattr(ck.os, "fsync", lambda fd: (calls.append("fsync " + _kind(fd)), real["fsync"](fd))[1])
    monkeypatch.setattr(ck.os, "link", lambda a, b: (calls.append(f"link {Path(b).name}"), real["link"](a, b))[1])
    monkeypatch.setattr(
        ck.os, "replace", lambda a, b: (calls.append(f"replace {Path(b).name}"), real["replace"](a, b))[1]
    )
    real_unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda p, **kw: (calls.append(f"unlink {p.name}"), real_unlink(p, **kw))[1])
    save_checkpoint(_state(3), tmp_path)
    assert calls == [
        "fsync file",
        "link checkpoint-000003.pt",
        "replace checkpoint.pt",
        "fsync directory",
        "unlink checkpoint-000001.pt",
        "fsync directory",
    ]


def _kind(fd: int) -> str:
    import stat

    return "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_the_newest_k_are_kept_and_checkpoint_pt_is_the_newest(tmp_path, keep):
    for epoch in range(1, 6):
        save_checkpoint(_state(epoch), tmp_path, keep=keep)
    kept = history(tmp_path)
    assert [n for n, _ in kept] == list(range(6 - keep, 6))
    assert os.path.samefile(kept[-1][1], tmp_path / CHECKPOINT_NAME)  # a link, not a second copy
    assert load_checkpoint(tmp_path)["epoch"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CHECKPOINT_NAME, *(p.name for _, p in kept)])


def _flip_a_byte_of(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(tensor.numpy().tobytes())
    assert at >= 0, "the tensor's bytes are stored as they are"
    data[at + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(data))  # in place: the history link (same file) changes too


def test_a_flipped_byte_in_a_tensor_is_refused(tmp_path):
    """torch's loader does not check the zip CRCs: the file still loads, with another value; the
    checksum refuses it, and with one checkpoint kept there is nothing to fall back to."""
    state = _state(1)
    save_checkpoint(state, tmp_path, keep=1)
    _flip_a_byte_of(tmp_path / CHECKPOINT_NAME, state["rng"])
    loaded = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # plain torch: no error ...
    assert not torch.equal(loaded["rng"], state["rng"])  # ... and a different generator state
    with pytest.raises(ConfigError, match=r"checkpoint.pt is corrupt: its contents do not match their SHA-256"):
        load_checkpoint(tmp_path)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path):
    for epoch in (1, 2):
        save_checkpoint(_state(epoch), tmp_path)
    _flip_a_byte_of(tmp_path / CHECKPOINT_NAME, _state(2)["weights"])
    with pytest.warns(
        RuntimeWarning, match=r"checkpoint.pt is corrupt: .*SHA-256: resuming from .*checkpoint-000001.pt \(epoch 1\)"
    ):
        assert load_checkpoint(tmp_path)["epoch"] == 1


def test_a_truncated_checkpoint_falls_back_and_the_resumed_run_continues_bit_for_bit(tmp_path, capsys):
    full, part, ckpt = tmp_path / "full.jsonl", tmp_path / "part.jsonl", tmp_path / "ckpt"
    train(Config(**SMALL, max_epochs=6, metrics_file=full))
    train(Config(**SMALL, max_epochs=4, metrics_file=part, checkpoint_dir=ckpt, checkpoint_every=2))
    newest = ckpt / CHECKPOINT_NAME
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # epoch 4, half written
    with pytest.warns(RuntimeWarning, match=r"is not a readable fastpg checkpoint .*resuming from .*\(epoch 2\)"):
        train(Config(**SMALL, max_epochs=6, metrics_file=part, resume=ckpt))
    assert _epochs(part) == _epochs(full) and len(_epochs(full)) == 6  # epochs 3, 4 again, identical
    assert load_checkpoint(ckpt)["epoch"] == 6


def test_nothing_sound_left_is_one_error_naming_each_file(tmp_path):
    save_checkpoint(_state(1), tmp_path)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"checkpoint.pt is not a readable .*\(no sound checkpoint left\)"):
        load_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match=r"no checkpoint at .*checkpoint.pt"):
        load_checkpoint(tmp_path / "empty")


def test_a_kill_while_pruning_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL at the moment the oldest history file is being removed (after the new checkpoint
    is durable): the new checkpoint loads, and the next write prunes what was left."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        import torch
        from fastpg.checkpoint import save_checkpoint
        d = Path({str(tmp_path)!r})
        state = lambda e: {{"config": {{}}, "epoch": e, "w": torch.full((8,), float(e))}}
        save_checkpoint(state(1), d)
        save_checkpoint(state(2), d)
        Path.unlink = lambda self, **kw: os.kill(os.getpid(), signal.SIGKILL)
        save_checkpoint(state(3), d)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [n for n, _ in history(tmp_path)] == [1, 2, 3]  # killed before the oldest went
    assert load_checkpoint(tmp_path)["epoch"] == 3
    save_checkpoint({"config": {}, "epoch": 4, "w": torch.zeros(8)}, tmp_path)
    assert [n for n, _ in history(tmp_path)] == [3, 4]


def test_a_fresh_run_with_overwrite_drops_another_runs_history(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    train(Config(**SMALL, max_epochs=3, checkpoint_dir=ckpt, checkpoint_every=1))
    assert [n for n, _ in history(ckpt)] == [2, 3]
    train(Config(**SMALL, max_epochs=1, checkpoint_dir=ckpt, overwrite=True))
    assert [n for n, _ in history(ckpt)] == [1] and load_checkpoint(ckpt)["epoch"] == 1


def test_a_format_1_checkpoint_without_a_checksum_still_loads(tmp_path):
    state = {"format": 1, **_state(7)}
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    assert load_checkpoint(tmp_path)["epoch"] == 7


def test_the_digest_sees_every_value_and_no_order():
    a = {"x": torch.arange(4.0), "n": 1, "d": {"b": 2, "a": [1.5, (2, None)]}}
    b = {"d": {"a": [1.5, (2, None)], "b": 2}, "n": 1, "x": torch.arange(4.0)}
    assert state_digest(a) == state_digest(b) == state_digest({**a, "sha256": "anything"})
    for changed in ({**a, "n": 2}, {**a, "x": torch.arange(4)}, {**a, "d": {"b": 2, "a": [1.5, [2, None]]}}):
        assert state_digest(changed) != state_digest(a)


def test_keep_checkpoints_from_the_command_line(tmp_path, capsys):
    from fastpg.cli import main

    ckpt = tmp_path / "ckpt"
    args = ["train", "--num-envs", "8", "--num-steps", "32", "--eval-episodes", "0", "--quiet", "--max-epochs", "5"]
    assert main([*args, "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1", "--keep-checkpoints", "3"]) == 0
    assert [n for n, _ in history(ckpt)] == [3, 4, 5]
    assert main([*args, "--keep-checkpoints", "0"]) == 2
    assert "--keep-checkpoints: must be an integer >= 1, got 0" in capsys.readouterr().err
