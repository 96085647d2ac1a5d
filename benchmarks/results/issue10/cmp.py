"""Compare per-epoch metrics of two refcheck.sh runs, timing keys left out: python cmp.py BEFORE AFTER"""

import json
import pathlib
import sys

TIMING = {"wall_s", "sps", "collect_s", "update_s", "time_to_solve_s", "train_wall_s", "checkpoint"}


def records(path: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


before, after = map(pathlib.Path, sys.argv[1:3])
ok = True
for fa in sorted(before.glob("*.jsonl")):
    a, b = records(fa), records(after / fa.name)
    pairs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b))]
    diffs = [(i, k, x.get(k), y.get(k)) for i, x, y in pairs for k in set(x) | set(y) if x.get(k) != y.get(k)]
    same = len(a) == len(b) and not diffs
    ok &= same
    verdict = "bit-identical (timing keys excluded)" if same else f"DIFFERENT {diffs[:4]}"
    print(f"{fa.name:<16} epochs {len(a) - 1:>3} vs {len(b) - 1:>3}  {verdict}")
print("ALL IDENTICAL" if ok else "DIFFERENCES FOUND")
