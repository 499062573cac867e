#!/usr/bin/env bash
# The whole device-time table in one run, for a GPU machine whose time is short: ours,
# optax.adafactor and optax.adam, float32 and bfloat16, on BERT-base and ViT-B/16 unscanned and
# scanned (their layers stacked), with wall time, device time and kernels from a profiler trace,
# and the physical bound at the device's measured copy bandwidth. Run from the repository's root
# with the machine's own jax and optax (nothing to install; the package is read from the tree):
#
#     bash benchmarks/device_table.sh            # writes the tables and JSON under $OUT
#
# Arguments after it go to benchmarks/run.py and override its own (on the CPU, for a dry run:
# `--reps 1 --steps-per-rep 1`).
#
# About 5 minutes on one H100 (compiles included). Prints, in order: the device; the copy
# bandwidth and what the trace of a small step holds (to check that the reading of the trace
# fits this jaxlib); the float32 table; the bfloat16 table. The JSON goes to
# docs/benchmark_device_<gpu>.json by hand, and `python docs/gen_performance.py` puts it on the
# performance page.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/device_table}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
python3 -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())"
python3 benchmarks/bounds.py 2>&1 | tee "$out/trace_lines.txt"
rc=0
for dtype in float32 bfloat16; do
  python3 benchmarks/run.py --trees bert vit bert_scan vit_scan \
      --optimizers adafactor_jax.adafactor optax.adafactor optax.adam \
      --dtype "$dtype" --reps 7 --steps-per-rep 10 --device-time \
      --json "$out/device_$dtype.json" "$@" 2>&1 | tee "$out/device_$dtype.md" || rc=1
done
exit "$rc"
