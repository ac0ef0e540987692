#!/usr/bin/env bash
# Training set on the device machine (one GPU): POINTS design points x HALOS halos, evaluated
# with --batch-points (each block of CHUNK points is one flat batch of CHUNK x HALOS lanes),
# then the store is tarred into $OUT.  Wheels carried in .whl: diffmah, zarr, numcodecs, donfig,
# google-crc32c (the rest is on the machine's image).
#   POINTS=1600 HALOS=512 CHUNK=400 bash benchmarks/gpu_generate.sh
set -u
POINTS=${POINTS:-1600}; HALOS=${HALOS:-512}; CHUNK=${CHUNK:-400}; LIMIT=${LIMIT:-240}
STORE=/tmp/gpu_p${POINTS}_h${HALOS}.zarr
if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
timeout "$LIMIT" python3 - "$STORE" "$POINTS" "$HALOS" "$CHUNK" <<'PY'
import sys, time
import jax
import training_sets as T
store, points, halos, chunk = sys.argv[1], *map(int, sys.argv[2:])
started = time.perf_counter()
report = T.generate(store, n_points=points, n_halos=halos, seed=0, chunk=chunk, batch_points=True, progress=False,
                    on_block=lambda b: print(f"block {b} written at {time.perf_counter() - started:.1f} s", flush=True))
print(report, jax.devices())
print(f"{report.points_per_hour:,.0f} points/hour, {report.computed * halos / report.seconds:,.0f} halo solves + Jacobians per s")
PY
tar -C /tmp -cf "${OUT:-/tmp}/$(basename $STORE).tar" "$(basename $STORE)"
ls -la "${OUT:-/tmp}"
