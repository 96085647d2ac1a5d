"""Ratios of an ab_commits.sh run: python benchmarks/ab_report.py OUT_DIR"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

rates: dict[tuple[str, str], list[float]] = defaultdict(list)
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    version, cell = path.stem.split("-", 1)
    cell = cell.rsplit("-r", 1)[0]
    rates[(cell, version)] += [r["rate_median"] for r in json.loads(path.read_text())["results"]]
print(f"{'cell':<24} {'old steps/s':>12} {'new steps/s':>12} {'new/old':>8}  per round")
for cell in dict.fromkeys(c for c, _ in rates):
    old, new = rates[(cell, "old")], rates[(cell, "new")]
    per_round = ", ".join(f"{b / a:.1f}" for a, b in zip(old, new))
    o, n = statistics.median(old), statistics.median(new)
    print(f"{cell:<24} {o / 1e6:>11.3f}M {n / 1e6:>11.3f}M {n / o:>7.1f}x  ({per_round})")
