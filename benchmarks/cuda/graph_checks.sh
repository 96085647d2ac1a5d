#!/usr/bin/env bash
# On a lent GPU machine: the CUDA tests (the whole suite, CUDA tests included), then fastpg bench's
# train phase with the CUDA-graph epoch and the generic path at N = 2^10 ... 2^22, then time to
# solve CartPole-v1 on the GPU. Wheels for what the GPU image lacks travel in .whl.
# tests/test_graph.py includes the capture of Box actions and the value network: when they pass,
# set fastpg.graph.GRAPH_BOX_AND_VALUE = True (graph_problem then admits them) and record it.
# Knobs: TESTS=graph (only tests/test_graph.py), PYTEST_ARGS (e.g. "-v -n 12 --timeout 150": the
# image has pytest-xdist and pytest-timeout), BENCH=0 / SOLVE=0 to skip those, *_S time limits.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a $OUT/gpu.txt
if [ "${TESTS:-all}" = graph ]; then T=tests/test_graph.py; else T=tests; fi
timeout ${TEST_S:-240} python3 -m pytest -q -p no:cacheprovider -rs ${PYTEST_ARGS:-} $T > $OUT/cuda_tests.log 2>&1; echo "pytest rc=$?"; grep -E "(FAILED|ERROR) tests/" $OUT/cuda_tests.log | sort -u | head -40; tail -5 $OUT/cuda_tests.log
[ "${BENCH:-1}" = 1 ] && for f in auto off; do
  timeout ${BENCH_S:-150} python3 -m fastpg.cli bench --phases train --backends torch --num-steps 128 --hidden-sizes 32 --activation tanh \
    --num-envs 1024 4096 16384 65536 262144 1048576 4194304 --repeats 3 --device cuda --fused $f --json $OUT/graph_bench_$f.json 2>&1 | tail -4
done
[ "${SOLVE:-1}" = 1 ] && timeout ${SOLVE_S:-240} python3 benchmarks/solve_gpu.py --json $OUT/solve_gpu.json | tee $OUT/solve_gpu.txt
