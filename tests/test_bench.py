"""``fastpg bench``: runs every phase, writes JSON with the machine description, refuses bad input."""

import json

import pytest

from fastpg import bench
from fastpg.bench import BenchConfig, check_bench_config, format_table, run_bench
from fastpg.bench import report as bench_report
from fastpg.cli import main
from fastpg.config import ConfigError


def test_bench_measures_every_phase_and_counts_reset_steps_apart():
    b = BenchConfig(backends=("torch", "vector"), num_envs=(8,), num_steps=16, repeats=2, warmup=0, hidden_sizes=(16,))
    report = run_bench(b)
    rows = {(r["phase"], r["backend"]): r for r in report["results"]}
    assert set(rows) == {(p, be) for p in ("env", "collect", "update", "train") for be in ("torch", "vector")} | {
        ("returns", None)
    }
    for r in rows.values():
        assert r["rate_min"] <= r["rate_median"] <= r["rate_max"] and r["rate_min"] > 0
        assert len(r["times_s"]) == 2
    # Native envs reset within the step; gymnasium's vector env spends steps on resets (NEXT_STEP),
    # which are reported apart and not counted in the rate.
    assert rows[("collect", "torch")]["reset_steps"] == 0 and rows[("collect", "torch")]["items"] == 16 * 8
    assert rows[("collect", "vector")]["reset_steps"] > 0
    assert rows[("collect", "vector")]["items"] + rows[("collect", "vector")]["reset_steps"] == 16 * 8
    m = report["machine"]
    assert m["torch"] and m["gymnasium"] and m["cpu"] and m["torch_threads"] >= 1
    table = format_table(report)
    assert "collect" in table and "N=8" in table and "torch threads" in table


def test_sync_beyond_the_cap_is_skipped_not_run(monkeypatch):
    monkeypatch.setattr(bench_report, "MAX_ENVS_GYM_LOOP", 4)
    b = BenchConfig(backends=("sync",), num_envs=(2, 8), num_steps=4, phases=("env",), repeats=1, warmup=0)
    report = run_bench(b)
    rows = report["results"]
    assert "skipped" not in rows[0] and "skipped" in rows[1]
    assert "skipped" in format_table(report)


def test_async_beyond_its_cap_is_skipped_not_run(monkeypatch):
    monkeypatch.setattr(bench_report, "MAX_ENVS_ASYNC", 1)
    b = BenchConfig(backends=("async",), num_envs=(2,), num_steps=4, phases=("env",), repeats=1, warmup=0)
    (row,) = run_bench(b)["results"]
    assert "worker process per copy" in row["skipped"] and "rate_median" not in row


def test_cli_bench_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--num-envs",
            "4",
            "--num-steps",
            "8",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--phases",
            "env",
            "returns",
            "--backends",
            "torch",
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "env" in printed and "returns" in printed and "N=4" in printed
    data = json.loads(out.read_text())
    assert data["config"]["num_envs"] == [4] and len(data["results"]) == 2 and data["machine"]["python"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--env", "Pendulum-v1", "--backends", "vector"],
            "--backends: 'vector' needs an env with its own vectorized implementation",
        ),
        (["--num-envs", "0"], "--num-envs: must be integers >= 1"),
        (["--repeats", "0"], "--repeats: must be an integer >= 1"),
        (["--json", "/nonexistent-dir/x.json"], "--json: directory /nonexistent-dir does not exist"),
        (["--env-kernel", "cpp", "--device", "cuda"], "--env-kernel: 'cpp' is a CPU kernel"),
    ],
)
def test_cli_bench_bad_input_is_one_line(argv, words, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastpg: error: ") and words in err and "\n" not in err


def test_plot_needs_matplotlib_or_writes_png(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs matplotlib"):
            check_bench_config(BenchConfig(plot=tmp_path / "p.png"))
        return
    b = BenchConfig(
        backends=("torch",), num_envs=(4, 8), num_steps=4, phases=("env",), repeats=1, warmup=0, plot=tmp_path / "p.png"
    )
    bench.main_bench(b)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
