"""Where a GPU trial's joules go: process start-up versus training, cold versus warm.

    python -m bench.trial_overhead [--tokens 800000] [--repeats 3]

Each repeat starts a fresh Python process, as a trial worker is started, that reads the
board's energy counter (NVML, `measured`) at each phase boundary:

  imports      torch and the workload module imported (the interpreter already running)
  cuda_init    the CUDA context created (first tensor on the GPU)
  cold_trial   one training run of ``--tokens`` tokens (the policy default: lr 3e-3,
               batch 32) on the era-0 stdlib sources, data loading and the final
               evaluation included: what a trial worker does
  warm_trial   the same run again in the same process: the baseline, what a trial would
               cost if workers kept their CUDA context and data

Reports the median seconds and joules of each phase and the ratio of a whole worker (all
phases up to and including the cold trial) to the warm trial.  Needs an NVIDIA GPU with an
energy counter: without one it says so and exits 2, since host figures would be estimates of
a different thing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.energy_to_target import ERA0  # the same era-0 sources

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("imports", "cuda_init", "cold_trial", "warm_trial")


def _files() -> tuple[list[str], list[str]]:
    from adapters.data_sources import stdlib_dir

    files = sorted(str(p) for pkg in ERA0 for p in (stdlib_dir() / pkg).rglob("*.py"))
    return [f for i, f in enumerate(files) if i % 10], files[::10]


def _child(tokens: int, device: str, out: Any) -> None:
    """One worker's life, with the energy counter read at each phase boundary."""
    from adapters.gpu.nvml import NvmlGpu

    gpu = NvmlGpu()

    def mark() -> tuple[float, float]:
        return time.perf_counter(), gpu.energy_j(0)

    marks = [mark()]
    import torch

    from adapters.workload.bytelm import ByteLMWorkload
    from adapters.workload.protocol import TrainRequest

    marks.append(mark())
    torch.zeros(1, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    sync()
    marks.append(mark())
    train, valid = _files()
    devices = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2):
            result = ByteLMWorkload().train(
                TrainRequest(
                    params={
                        "lr": 0.003,
                        "batch_size": 32,
                        "d_model": 128,
                        "n_layers": 2,
                        "n_heads": 4,
                        "context": 128,
                    },
                    train_files=train,
                    valid_files=valid,
                    max_tokens=tokens,
                    out_path=str(Path(tmp) / f"m{k}.pt"),
                    device=device,
                )
            )
            sync()
            devices.append(result.device)
            marks.append(mark())
    gpu.close()
    out.put({"marks": marks, "devices": devices})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tokens", type=int, default=800_000, help="tokens per training run")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes; figures are medians")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "trial_overhead.json")
    ap.add_argument("--device", default="cuda", help="torch device the runs train on")
    args = ap.parse_args()
    from adapters.gpu.probe import probe_gpus

    gpu, why = probe_gpus("nvml")
    if gpu is None:
        print(f"needs an NVIDIA GPU with NVML's energy counter ({why}); nothing measured")
        return 2
    name = gpu.devices()[0].name
    gpu.close()
    ctx = mp.get_context("spawn")
    runs: list[dict[str, dict[str, float]]] = []
    for r in range(args.repeats):
        out = ctx.Queue()
        proc = ctx.Process(target=_child, args=(args.tokens, args.device, out))
        proc.start()
        got = out.get(timeout=600)
        proc.join(60)
        marks = got["marks"]
        phases = {
            p: {"s": marks[i + 1][0] - marks[i][0], "j": marks[i + 1][1] - marks[i][1]}
            for i, p in enumerate(PHASES)
        }
        runs.append(phases)
        print(
            f"[bench] repeat {r + 1}: "
            + ", ".join(f"{p} {v['s']:.1f} s {v['j']:.0f} J" for p, v in phases.items())
            + f" (devices {got['devices']})",
            flush=True,
        )
    med = {p: {k: statistics.median(run[p][k] for run in runs) for k in ("s", "j")} for p in PHASES}
    worker_j = statistics.median(sum(run[p]["j"] for p in PHASES[:3]) for run in runs)
    worker_s = statistics.median(sum(run[p]["s"] for p in PHASES[:3]) for run in runs)
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{name}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "command": "python -m bench.trial_overhead " + " ".join(sys.argv[1:]),
        "energy": "measured (NVML board energy counter)",
        "tokens_per_run": args.tokens,
        "runs": runs,
        "median": med,
        "worker_joules": worker_j,
        "worker_seconds": worker_s,
        "ratio_worker_over_warm_trial_joules": worker_j / med["warm_trial"]["j"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"\nMedian of {args.repeats} fresh processes, {args.tokens:,} tokens per run "
        "(joules measured):"
    )
    print(f"{'phase':<12}{'seconds':>9}{'joules':>9}")
    for p, v in med.items():
        print(f"{p:<12}{v['s']:>9.1f}{v['j']:>9.0f}")
    print(
        f"a worker's trial (start-up + cold trial): {worker_s:.1f} s, {worker_j:.0f} J; "
        f"/ warm trial: {result['ratio_worker_over_warm_trial_joules']:.2f}x"
    )
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
