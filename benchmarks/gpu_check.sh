#!/usr/bin/env bash
# One-shot GPU check for the device machine (see docs/design.md s.6): install the carried
# wheels (.whl: diffmah; everything else is on the machine's image), then
#   1. save the centre and stiff-corner states + Jacobians of 256 halos for a CPU comparison
#      (benchmarks/compare_devices.py compare CPU.npz GPU.npz, run here afterwards);
#   2. time the engine at 1e4 halos (all rows) and 1e5 halos (centre solve and Jacobian, then
#      the stiff corner), each size under its own time limit; partial JSON survives a cut.
# Writes to $OUT.  Total ~8 minutes on an H200.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, diffrax, equinox; print('jax', jax.__version__, 'diffrax', diffrax.__version__, jax.devices())"
timeout 90 python3 benchmarks/compare_devices.py save $OUT/gpu_states_256.npz --halos 256 2>&1 | tee $OUT/compare.log
timeout 170 python3 benchmarks/bench_engine.py --halos 10000 --repeats 1 --out $OUT/bench_gpu_1e4.json 2>&1 | tee $OUT/bench_gpu_1e4.log
timeout 200 python3 benchmarks/bench_engine.py --halos 100000 --repeats 1 \
  --rows baseline_vmap_tsit5_centre_s,engine_centre_s,engine_jacobian_centre_s,engine_stiff_corner_s \
  --out $OUT/bench_gpu_1e5.json 2>&1 | tee $OUT/bench_gpu_1e5.log
