#!/usr/bin/env bash
# One-shot GPU check for the device machine: install carried wheels, then time the engine
# at 256, 1e4 and 1e5 halos (each size under its own time limit).  Writes to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, diffrax, equinox; print('jax', jax.__version__, 'diffrax', diffrax.__version__, jax.devices())"
timeout 200 python3 benchmarks/bench_engine.py --halos 256 --repeats 2 --out $OUT/bench_gpu_256.json 2>&1 | tee $OUT/bench_gpu_256.log
timeout 200 python3 benchmarks/bench_engine.py --halos 10000 --repeats 1 --out $OUT/bench_gpu_1e4.json 2>&1 | tee $OUT/bench_gpu_1e4.log
timeout 150 python3 benchmarks/bench_engine.py --halos 100000 --repeats 1 --out $OUT/bench_gpu_1e5.json 2>&1 | tee $OUT/bench_gpu_1e5.log
