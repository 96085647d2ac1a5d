#!/usr/bin/env bash
# usage: refcheck.sh PYTHON OUTDIR  -- per-epoch metrics of several configs, for before/after comparison
PY=$1; OUT=$2; mkdir -p $OUT
run() { name=$1; shift; $PY -m fastpg.cli train --quiet --overwrite --metrics-file $OUT/$name.jsonl "$@" > $OUT/$name.out 2>&1; echo "$name rc=$?"; }
run defaults
run seed3 --seed 3 --max-epochs 30
run value --baseline value --unfinished bootstrap --max-epochs 15 --entropy-coef 0.01 --max-grad-norm 0.5
run mean --baseline mean --no-normalize-returns --max-epochs 10 --hidden-sizes 32 32 --activation tanh
run pendulum --env Pendulum-v1 --max-epochs 6 --num-envs 8 --num-steps 200
run vector --backend vector --max-epochs 8 --num-envs 8 --num-steps 128
run cpp --env-kernel cpp --max-epochs 10 --env-dtype float64
run acrobot --env Acrobot-v1 --max-epochs 8 --num-envs 32 --num-steps 256
