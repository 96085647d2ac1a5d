"""``fastpg bench``: throughput of each phase of the straight line, per backend and N.

``config`` holds ``BenchConfig``; ``engine`` measures one phase (the runners the pytest-benchmark
suites in ``benchmarks/`` time too); ``report`` runs the grid and writes the table, JSON and plot.
The CLI imports this package only for ``fastpg bench``.
"""

from fastpg.bench.config import PHASES, BenchConfig, check_bench_config
from fastpg.bench.report import format_table, machine_info, main_bench, run_bench, write_plot

__all__ = [
    "BenchConfig",
    "PHASES",
    "check_bench_config",
    "run_bench",
    "main_bench",
    "format_table",
    "machine_info",
    "write_plot",
]
