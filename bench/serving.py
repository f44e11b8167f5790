"""Serving throughput and latency: the embedded HTTP server against in-process generation.

    python -m bench.serving [--requests 40] [--max-tokens 64] [--concurrency 4]

Trains a small byte-level model (a few seconds), then, in one run: generates in-process
(batch 1, sequential), through `/v1/completions` over loopback (batch 1, sequential), and
through HTTP with several concurrent clients; the server runs in its own process.
Reports completion tokens/s, p50 and p99 latency, and the ratios against in-process. The
server does not batch concurrent requests into one forward pass yet; concurrency uses the
server's worker threads.
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
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(name: str, latencies: list[float], tokens: int, wall_s: float) -> dict[str, Any]:
    return {
        "case": name,
        "requests": len(latencies),
        "tokens_per_s": tokens / wall_s,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


def _serve(artefact: str, max_tokens: int, ready: Any, stop: Any) -> None:
    """The server in its own process, as a real deployment has it (no shared GIL)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from adapters.serving import ServedModel, ServingServer
    from adapters.workload.bytelm import ByteLMWorkload

    torch.set_num_threads(1)
    gen = ByteLMWorkload().load(artefact, threads=1)
    server = ServingServer(port=0, max_tokens_limit=max_tokens)
    server.start()
    server.swap(ServedModel(model_id="bench:v1", version=1, generator=gen))
    ready.put(server.url)
    stop.wait()
    server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from adapters.data_sources import stdlib_dir
    from adapters.workload.bytelm import ByteLMWorkload
    from adapters.workload.protocol import TrainRequest

    torch.set_num_threads(1)
    files = [str(p) for p in sorted((stdlib_dir() / "json").glob("*.py"))]
    with tempfile.TemporaryDirectory() as tmp:
        artefact = Path(tmp) / "m.pt"
        ByteLMWorkload().train(
            TrainRequest(
                params={"d_model": 128, "n_layers": 2, "n_heads": 4, "context": 128},
                train_files=files,
                valid_files=files[:1],
                max_tokens=200_000,
                out_path=str(artefact),
                threads=2,
            )
        )
        gen = ByteLMWorkload().load(str(artefact), threads=1)
        prompt, n = "def ", args.max_tokens
        gen.generate(prompt, n, seed=0)  # warm-up

        lat: list[float] = []
        t0 = time.perf_counter()
        for i in range(args.requests):
            s = time.perf_counter()
            gen.generate(prompt, n, seed=i)
            lat.append(time.perf_counter() - s)
        rows = [summarise("in-process, batch 1", lat, n * args.requests, time.perf_counter() - t0)]

        ctx = mp.get_context("spawn")
        ready, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_serve, args=(str(artefact), max(n, 16), ready, stop))
        proc.start()
        url = f"{ready.get(timeout=120)}/v1/completions"
        body = {"model": "bench", "prompt": prompt, "max_tokens": n}
        failures = 0
        try:
            with httpx.Client(timeout=60) as client:
                client.post(url, json=body)  # warm-up
                lat = []
                t0 = time.perf_counter()
                for i in range(args.requests):
                    s = time.perf_counter()
                    r = client.post(url, json=body | {"seed": i})
                    failures += r.status_code != 200
                    lat.append(time.perf_counter() - s)
                rows.append(
                    summarise("HTTP, batch 1", lat, n * args.requests, time.perf_counter() - t0)
                )

            lat_c: list[float] = []
            lock = threading.Lock()
            per_client = max(1, args.requests // args.concurrency)

            def worker(k: int) -> None:
                nonlocal failures
                with httpx.Client(timeout=120) as client:
                    for i in range(per_client):
                        s = time.perf_counter()
                        r = client.post(url, json=body | {"seed": 1000 * k + i})
                        with lock:
                            failures += r.status_code != 200
                            lat_c.append(time.perf_counter() - s)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.concurrency)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rows.append(
                summarise(
                    f"HTTP, {args.concurrency} concurrent clients",
                    lat_c,
                    n * per_client * args.concurrency,
                    time.perf_counter() - t0,
                )
            )
        finally:
            stop.set()
            proc.join(30)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["x_in_process"] = r["tokens_per_s"] / base
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": "python -m bench.serving " + " ".join(sys.argv[1:]),
        "max_tokens": n,
        "failed_requests": failures,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'case':<34}{'tokens/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x in-proc':>11}")
    for r in rows:
        print(
            f"{r['case']:<34}{r['tokens_per_s']:>10.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['x_in_process']:>11.2f}"
        )
    print(f"failed requests: {failures}\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
