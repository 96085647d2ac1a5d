"""pytest-benchmark plumbing shared by the suites in this folder.

The suites are not collected by the plain test command (``pytest`` looks in ``tests/`` only; the
files here are named ``bench_*.py``). Run them by path, for example::

    .venv/bin/python -m pytest benchmarks/bench_env_sps.py --benchmark-json benchmarks/results/env_sps.json

Each benchmark records a throughput (``extra_info["sps"]``: items per second from the median round)
with ``record``; at the end of the session the ratios that the suites declare in ``RATIOS`` are
printed under the timing table and written into the JSON output (``fastpg_ratios``), so every ratio
comes from one run on one machine.
"""

from __future__ import annotations

import platform

import pytest
import torch

_RESULTS: dict[tuple[str, int, str], float] = {}
_RATIOS: list[tuple[str, tuple[str, int, str], tuple[str, int, str]]] = []


def declare_ratio(label: str, numerator: tuple[str, int, str], denominator: tuple[str, int, str]) -> None:
    """Report ``sps(numerator) / sps(denominator)``; keys are (implementation, N, device)."""
    _RATIOS.append((label, numerator, denominator))


@pytest.fixture
def record():
    """``record(benchmark, impl, n, items_per_round, device)``: store the throughput of a benchmark."""

    def _record(benchmark, impl: str, n: int, items_per_round: int, device: str = "cpu") -> float | None:
        benchmark.extra_info.update(impl=impl, N=n, device=device, items_per_round=items_per_round)
        if benchmark.stats is None:  # --benchmark-disable
            return None
        sps = items_per_round / benchmark.stats.stats.median
        benchmark.extra_info["sps"] = sps
        _RESULTS[(impl, n, device)] = sps
        return sps

    return _record


def time_runner(benchmark, runner, device: str, rounds: int, warmup: int) -> None:
    """Time ``runner.run()`` (a ``fastpg.bench.engine.Runner``, its kernels built or loaded
    before timing) over ``rounds`` after ``warmup`` rounds, each round waiting for the GPU on a
    CUDA device; closes the runner."""

    def run():
        runner.run()
        if device != "cpu":
            torch.cuda.synchronize()

    try:
        benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup)
    finally:
        runner.close()


def _ratio_rows() -> list[dict]:
    rows = []
    for label, num, den in _RATIOS:
        if num in _RESULTS and den in _RESULTS:
            rows.append(
                {
                    "ratio": label,
                    "numerator": {"impl": num[0], "N": num[1], "device": num[2], "sps": _RESULTS[num]},
                    "denominator": {"impl": den[0], "N": den[1], "device": den[2], "sps": _RESULTS[den]},
                    "value": _RESULTS[num] / _RESULTS[den],
                }
            )
    return rows


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["fastpg_ratios"] = _ratio_rows()
    output_json["fastpg_env"] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("fastpg throughput (median round)")
    for (impl, n, device), sps in sorted(_RESULTS.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        tr.write_line(f"{impl:<28} N={n:<8} {device:<5} {sps / 1e6:10.3f} M/s")
    rows = _ratio_rows()
    if rows:
        tr.section("fastpg ratios (same run)")
        for r in rows:
            tr.write_line(f"{r['ratio']:<52} {r['value']:8.2f}x")
