import json, sys, pathlib
TIMING = {"wall_s", "sps", "collect_s", "update_s", "time_to_solve_s", "train_wall_s", "checkpoint"}
a, b = map(pathlib.Path, sys.argv[1:3])
ok = True
for fa in sorted(a.glob("*.jsonl")):
    fb = b / fa.name
    la = [json.loads(l) for l in fa.read_text().splitlines()]
    lb = [json.loads(l) for l in fb.read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}
    diffs = [(i, k, strip(x).get(k), strip(y).get(k)) for i, (x, y) in enumerate(zip(la, lb)) for k in set(strip(x)) | set(strip(y)) if strip(x).get(k) != strip(y).get(k)]
    same = len(la) == len(lb) and not diffs
    ok &= same
    print(f"{fa.name:<16} epochs {len(la)-1:>3} vs {len(lb)-1:>3}  {'bit-identical (timing keys excluded)' if same else 'DIFFERENT'} {diffs[:4] if diffs else ''}")
print("ALL IDENTICAL" if ok else "DIFFERENCES FOUND")
