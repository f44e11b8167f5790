"""Serving throughput and latency: batched and unbatched HTTP serving against in-process.

    python -m bench.serving [--requests 40] [--max-tokens 64] [--concurrency 1,4,8]
                            [--repeats 3]

Trains a small byte-level model (a few seconds), then, in one run and for each number of
concurrent clients, measures the same requests three ways:

  (a) in-process generation at batch 1 (``max_batch=1``, one thread per client): baseline;
  (b) ``/v1/completions`` with batching off (``max_batch=1``): each request generates in a
      server worker thread, as before batching existed;
  (c) ``/v1/completions`` with batching on (the default ``max_batch``): one forward per step
      over all requests in flight.

Both servers live in one separate process (as a deployment has it: no shared GIL with the
clients); only one is loaded at a time, the other sits idle.  Every client sends its share of
``--requests`` sequentially.  Reports completion tokens/s, p50 and p99 latency and failed
requests, and the tokens/s ratios (b)/(a), (c)/(a), (c)/(b); each figure is the median over
``--repeats`` rounds, which interleave the cases so drift hits them alike.  Also reported:
CPU milliseconds per generated token, of this process for (a) and of the server process for
(b) and (c) (read from /proc, so Linux only): unbatched threads may spread over more cores
than the one torch thread the model was loaded with, so tokens/s alone flatters them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx

from agents.stats import percentile

ROOT = Path(__file__).resolve().parent.parent
CASES = ("(a) in-process, batch 1", "(b) HTTP, batching off", "(c) HTTP, batching on")


def process_cpu_s(pid: int | None = None) -> float | None:
    """CPU seconds (user + system) of a process: this one, or another by pid (Linux only)."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _serve(artefact: str, max_tokens: int, ready: Any, stop: Any) -> None:
    """Both servers in their own process, one torch thread, as the daemon loads models."""
    sys.path.insert(0, str(ROOT))
    import torch

    from adapters.serving import ServedModel, ServingServer
    from adapters.workload.bytelm import ByteLMWorkload

    torch.set_num_threads(1)
    servers = []
    for max_batch in (1, 16):
        gen = ByteLMWorkload().load(artefact, threads=1, max_batch=max_batch)
        server = ServingServer(port=0, max_tokens_limit=max_tokens)
        server.start()
        served = ServedModel(model_id="bench:v1", version=1, generator=gen, line="bench")
        server.line("bench").swap(served)
        servers.append(server)
    ready.put([s.url for s in servers])
    stop.wait()
    for server in servers:
        server.stop()


Call = Callable[[int, int], bool]


def run_clients(
    concurrency: int, per_client: int, session: Callable[[], AbstractContextManager[Call]]
) -> tuple[list[float], int, float]:
    """``concurrency`` threads each open a ``session`` and make ``per_client`` calls in it.

    A call gets (client, request) numbers and says whether it succeeded.  Returns the
    latencies, the number of failed calls and the wall time of the whole round.
    """
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()

    def worker(k: int) -> None:
        nonlocal failures
        with session() as one:
            for i in range(per_client):
                s = time.perf_counter()
                ok = one(k, i)
                elapsed = time.perf_counter() - s
                with lock:
                    failures += not ok
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=40, help="requests per case and round")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,4,8", help="comma-separated client counts")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; figures are medians")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serving.json")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    sys.path.insert(0, str(ROOT))
    import torch

    from adapters.data_sources import stdlib_dir
    from adapters.workload.bytelm import ByteLMWorkload
    from adapters.workload.protocol import TrainRequest

    started = time.perf_counter()
    torch.set_num_threads(1)
    files = [str(p) for p in sorted((stdlib_dir() / "json").glob("*.py"))]
    prompt, n = "def ", args.max_tokens
    # samples[(case, concurrency)] -> one dict per round
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
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
        gen = ByteLMWorkload().load(str(artefact), threads=1, max_batch=1)
        gen.generate(prompt, n, seed=0)  # warm-up

        def in_process(k: int, i: int) -> bool:
            gen.generate(prompt, n, seed=1000 * k + i)
            return True

        ctx = mp.get_context("spawn")
        ready, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_serve, args=(str(artefact), max(n, 16), ready, stop))
        proc.start()
        urls = [f"{u}/v1/completions" for u in ready.get(timeout=120)]
        body = {"model": "bench", "prompt": prompt, "max_tokens": n}

        def over_http(url: str) -> Callable[[], AbstractContextManager[Call]]:
            @contextlib.contextmanager
            def session() -> Iterator[Call]:
                with httpx.Client(timeout=120) as client:  # keep-alive, like a real client

                    def one(k: int, i: int) -> bool:
                        try:
                            r = client.post(url, json=body | {"seed": 1000 * k + i})
                        except httpx.HTTPError:
                            return False
                        return r.status_code == 200

                    yield one

            return session

        try:
            with httpx.Client(timeout=120) as client:
                for url in urls:
                    client.post(url, json=body)  # warm-up
            sessions = [lambda: contextlib.nullcontext(in_process), *map(over_http, urls)]
            calls = dict(zip(CASES, sessions, strict=True))
            # whose CPU time a case costs: this process for (a), the server's for (b), (c)
            cpu_pid = dict(zip(CASES, [None, proc.pid, proc.pid], strict=True))
            for _ in range(args.repeats):
                for c in levels:
                    per_client = max(1, args.requests // c)
                    for case, session in calls.items():
                        cpu0 = process_cpu_s(cpu_pid[case])
                        lat, failed, wall = run_clients(c, per_client, session)
                        cpu1 = process_cpu_s(cpu_pid[case])
                        tokens = n * (len(lat) - failed)
                        cpu_ms = (
                            1000 * (cpu1 - cpu0) / tokens
                            if cpu0 is not None and cpu1 is not None and tokens
                            else float("nan")
                        )
                        samples.setdefault((case, c), []).append(
                            {
                                "tokens_per_s": tokens / wall,
                                "cpu_ms_per_token": cpu_ms,
                                "p50_ms": 1000 * statistics.median(lat),
                                "p99_ms": 1000 * (percentile(lat, 99) or 0.0),
                                "failed": failed,
                            }
                        )
        finally:
            stop.set()
            proc.join(30)

    rows = []
    for c in levels:
        for case in CASES:
            runs = samples[(case, c)]
            rows.append(
                {
                    "concurrency": c,
                    "case": case,
                    "requests": max(1, args.requests // c) * c,
                    **{
                        key: statistics.median(r[key] for r in runs)
                        for key in ("tokens_per_s", "p50_ms", "p99_ms", "cpu_ms_per_token")
                    },
                    "failed": int(sum(r["failed"] for r in runs)),
                }
            )
    ratios = []
    for c in levels:
        a, b, cc = (r["tokens_per_s"] for r in rows if r["concurrency"] == c)
        ratios.append({"concurrency": c, "b/a": b / a, "c/a": cc / a, "c/b": cc / b})
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "command": "python -m bench.serving " + " ".join(sys.argv[1:]),
        "max_tokens": n,
        "repeats": args.repeats,
        "rows": rows,
        "ratios": ratios,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"{'clients':>7}  {'case':<26}{'tokens/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
        f"{'CPU ms/tok':>12}"
    )
    for r in rows:
        print(
            f"{r['concurrency']:>7}  {r['case']:<26}{r['tokens_per_s']:>9.0f}"
            f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['failed']:>8}"
            f"{r['cpu_ms_per_token']:>12.2f}"
        )
    print(f"\n{'clients':>7}{'(b)/(a)':>9}{'(c)/(a)':>9}{'(c)/(b)':>9}")
    for q in ratios:
        print(f"{q['concurrency']:>7}{q['b/a']:>9.2f}{q['c/a']:>9.2f}{q['c/b']:>9.2f}")
    print(
        f"\nmedians of {args.repeats} rounds, {n} tokens per request; "
        f"{result['seconds']:.0f} s in all\nJSON: {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
