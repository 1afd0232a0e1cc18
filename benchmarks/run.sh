#!/usr/bin/env bash
# Reruns the recorded benchmarks (benchmarks/RESULTS.md) from the repository root; needs ../shared.
# Each run prints its summary and leaves its report in runs/<name>/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
RAYDISTILL=.venv/bin/raydistill

# The built-in default (digits, pixel prior): what `make demo` runs.
/usr/bin/time -f "demo wall seconds: %e" $RAYDISTILL run --ipc 10 --out runs/bench-demo

# Issue 2: CIFAR-10, taef2 latents at 64 px, ResNet-56 soft labels, ConvNet-3 student, IPC 10, 500 images per class.
for method in ddoq kmeans; do
  /usr/bin/time -f "cifar10 $method wall seconds: %e" $RAYDISTILL run --data ../shared/data/cifar10 \
    --prior taef2:../shared/weights/taef2 \
    --teacher cifar-resnet56:../shared/weights/cifar10-resnet/resnet56.safetensors \
    --student convnet3 --ipc 10 --max-per-class 500 --method "$method" --out "runs/bench-c10-$method"
done

# Issue 3: D3HR group sampling at ImageNet shapes, and encode + invert / sample + decode per actor.
.venv/bin/python -m benchmarks.group_sampling --candidates 100000
.venv/bin/python -m benchmarks.invert_throughput
