#!/usr/bin/env bash
# One short script for a machine with an NVIDIA GPU (read-only: it never changes a GPU
# setting). Reads the NVML adapter, runs the NVML and energy tests (the GPU-marked ones
# included), then the energy-to-target benchmark with joules from NVML's energy counter:
# first on the CPU search space, then on the GPU one (batch size and bf16 too), then the
# untuned arm against placement found by the device view, and the search efficiency sweep
# (its 12-point grid, the controller with 3 trials). Every step
# is time-boxed and logs under OUT_DIR, so a step that runs long loses only itself.
# The steps take longer than one device call allows, so they come in two parts:
#   bash bench/gpu_check.sh [OUT_DIR] [1|2]
# part 1 (the default): NVML, tests, energy to target on the CPU and GPU spaces; part 2:
# the untuned arm against placement, and the search-efficiency sweep.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-bench/results}}"
PART="${2:-${PART:-1}}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
export PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True
step() { echo; echo "=== $1 ($(date -u +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,power.draw,power.limit,memory.total --format=csv
"$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "$PART" = 1 ]; then
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
fi

if [ "$PART" = 2 ]; then
step "untuned (d) against the controller (c), placement knobs found by the device view"
# (d): the byte LM's plain defaults (fp32, batch 32, default power limit, no pruning);
# (c): lr named only, energy.placement: auto adds bf16/tf32, batch sizes that fit, and
# gradient accumulation. A bigger model than the CPU runs, so the board is not launch-bound;
# the JSON's "ceiling" gives each arm's training tokens/J as a share of the physical ceiling.
timeout "${E2T_PLACEMENT_S:-240}" "$PY" -m bench.energy_to_target --target 2.9 --trials 4 \
  --tokens-per-trial 8000000 --default-tokens 16000000 --check-every 400000 --skip-warm \
  --shape 256,4,4,128 --space placement --arms untuned,controller \
  --out "$OUT/energy_to_target_gpu_placement.json"

step "search efficiency: lr x batch x precision sweep against the controller"
timeout "${SEARCH_S:-300}" "$PY" -m bench.search_efficiency --target 2.9 \
  --lrs 0.0015,0.003,0.006 --batches 32,128 --precisions fp32,bf16 --recheck 1 \
  --tokens-cap 8000000 --check-every 400000 --out "$OUT/search_efficiency_gpu.json"
fi
step "done"
