#!/usr/bin/env bash
# On a lent GPU machine (see the device tool): the CUDA tests and fastpg bench at large N.
# Wheels for what the GPU image lacks travel in .whl (gymnasium, tensordict, tyro and their needs).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, gymnasium, tensordict; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), gymnasium.__version__, tensordict.__version__)" | tee -a $OUT/gpu.txt
timeout ${TEST_S:-300} python3 -m pytest -q -p no:cacheprovider -rs tests 2>&1 > $OUT/cuda_tests.log; echo "pytest rc=$?"; tail -40 $OUT/cuda_tests.log
timeout ${BENCH_S:-240} python3 -m fastpg.cli bench --backends torch --num-envs 1024 16384 262144 1048576 --repeats 3 --device cuda --json $OUT/bench_cuda.json 2>&1 | tee $OUT/bench_cuda.txt | tail -15
