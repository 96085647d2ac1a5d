#!/usr/bin/env bash
# Same-run A/B of fastpg bench's train phase: a previous commit against the working tree, in
# alternating processes (ROUNDS rounds), on the cells of issue 11's targets.
#
#   bash benchmarks/ab_commits.sh OLD_REV OUT_DIR [ROUNDS]
#
# The previous commit runs from a git worktree on PYTHONPATH (same venv); each cell is one
# `fastpg bench --phases train` call per version and round. Ratios: python benchmarks/ab_report.py OUT_DIR
set -euo pipefail
old=$1 out=$2 rounds=${3:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
py=$root/.venv/bin/python
tree=$(mktemp -d)/old
git -C "$root" worktree add -f --detach "$tree" "$old" >/dev/null
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
mkdir -p "$out"
cells=("16 512 128 relu" "16 512 32 tanh" "64 256 128 relu" "16384 128 32 tanh")
for round in $(seq 1 "$rounds"); do
  for cell in "${cells[@]}"; do
    read -r n t h a <<<"$cell"
    for version in old new; do
      pp=$([ $version = old ] && echo "$tree" || echo "$root")
      reps=$([ "$n" -ge 4096 ] && echo 3 || echo 10)
      (cd /tmp && PYTHONPATH=$pp $py -m fastpg.cli bench --phases train --backends torch --device cpu \
        --num-envs "$n" --num-steps "$t" --hidden-sizes "$h" --activation "$a" --repeats "$reps" --quiet \
        --json "$out/$version-N$n-T$t-$h$a-r$round.json" >/dev/null)
    done
  done
done
echo "done: $out"
