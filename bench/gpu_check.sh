#!/usr/bin/env bash
# One short script for a machine with an NVIDIA GPU (read-only: it never changes a GPU
# setting). Reads the NVML adapter, runs the NVML and energy tests (the GPU-marked ones
# included), then the energy-to-target benchmark with joules from NVML's energy counter:
# first on the CPU search space, then on the GPU one (batch size and bf16 too). Every step
# is time-boxed and logs under OUT_DIR, so a step that runs long loses only itself.
#   bash bench/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-bench/results}}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
export PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True
step() { echo; echo "=== $1 ($(date -u +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,power.draw,power.limit,memory.total --format=csv
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step "NVML adapter, read-only"
timeout 60 "$PY" - <<'PY'
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

step "tests: NVML adapter and energy meters (GPU-marked included)"
timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_nvml.py tests/test_energy.py

step "energy to target, CPU search space"
timeout "${E2T_CPU_S:-200}" "$PY" -m bench.energy_to_target --target 2.9 --trials 3 \
  --tokens-per-trial 4000000 --default-tokens 12000000 --check-every 200000 --skip-warm \
  --out "$OUT/energy_to_target_gpu.json"

step "energy to target, GPU search space (batch size, bf16)"
timeout "${E2T_GPU_S:-200}" "$PY" -m bench.energy_to_target --target 2.9 --trials 4 \
  --tokens-per-trial 4000000 --default-tokens 12000000 --check-every 200000 --skip-warm \
  --space gpu --arms random,controller --out "$OUT/energy_to_target_gpu_space.json"
step "done"
