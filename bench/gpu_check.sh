#!/usr/bin/env bash
# One short script for a machine with an NVIDIA GPU (read-only: it never changes a GPU
# setting). Reads the NVML adapter, runs the GPU-marked tests, then the energy-to-target
# benchmark with joules measured by NVML's energy counter.
#   bash bench/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-bench/results}}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
"$PY" - <<'PY'
from adapters.gpu.probe import probe_gpus
gpu, why = probe_gpus("nvml")
print(why)
if gpu is not None:
    for d in gpu.devices():
        print(d)
    for s in gpu.sample():
        print(s, s.throttle_names)
    print("energy counter (J):", [gpu.energy_j(d.index) for d in gpu.devices()])
PY
"$PY" -m pytest -q -m gpu tests/
"$PY" -m bench.energy_to_target --target 2.9 --trials 3 --tokens-per-trial 4000000 \
  --default-tokens 12000000 --check-every 200000 --skip-warm \
  --out "$OUT/energy_to_target_gpu.json"
