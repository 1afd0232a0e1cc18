#!/usr/bin/env bash
# Runs every benchmark from the repository root (needs ../shared); `QUICK=1 make bench` passes --quick to each, which
# keeps each within a few minutes. Without it the full runs take hours on a 2-core CPU (quality_cifar10 and
# prior_cifar10 most), and all of them resume where they stopped. Each prints a table and, last, one JSON line;
# benchmarks/RESULTS.md records the latest full results.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RAYDISTILL=.venv/bin/raydistill
QUICK_FLAG=${QUICK:+--quick}

# The built-in default (digits, pixel prior): what `make demo` runs.
/usr/bin/time -f "demo wall seconds: %e" $RAYDISTILL run --ipc 10 --out runs/bench-demo

for benchmark in encode_throughput actor_scaling quantize_speed driver_memory encode_load group_sampling \
                 invert_throughput gpu real_size train_throughput dashboard_prometheus prior_cifar10 quality_cifar10; do
  echo "== $benchmark"
  $PY -m "benchmarks.$benchmark" $QUICK_FLAG
done

# The diffusion methods need the prior that prior_cifar10 trained (its default recipe's folder).
echo "== diffusion_cifar10"
$PY -m benchmarks.diffusion_cifar10 $QUICK_FLAG \
  --prior "runs/bench-prior${QUICK:+-quick}/prior-lr0.001-warmup500-snr5-v_prediction"
