#!/usr/bin/env bash
# Same-run A/B of fastpg bench: previous commit (old) and this one (new), alternating processes.
cd /tmp
for round in 1 2; do
  for v in old new; do
    if [ $v = old ]; then PP=/tmp/old/tree; else PP=/work/main; fi
    PYTHONPATH=$PP /work/main/.venv/bin/python -m fastpg.cli bench --backends torch vector --num-envs 16 256 4096 --phases collect update train --repeats 5 --device cpu --quiet --json /tmp/ab/$v-$round.json > /tmp/ab/$v-$round.txt 2>&1
  done
done
echo finished
