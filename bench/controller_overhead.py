"""The daemon's own CPU with idle lines: what the factory costs when nothing happens.

    python -m bench.controller_overhead [--lines 1 10 50] [--window-s 30] [--tick-s 2]

For each count, a real daemon (`aifactory run --factory`, serving on) runs that many lines
whose data directory is empty: each line's first cycle finds nothing new, then the lines
only tick (policy file watch, serving reconcile, answered pauses, new data, heartbeat). Once
every line has finished its first cycle, the daemon's CPU time (user + system, from
/proc/<pid>/stat) is read over `--window-s`. Reported per count: the share of one core
and the CPU per tick (the median of `--repeats` runs), and the ratio against one line
measured in the same run.
Goal: 50 idle lines under 1% of one core at the default tick (2 s).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.output import emit

ROOT = Path(__file__).resolve().parent.parent
CLOCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK  # utime + stime


def _factory(work: Path, n: int) -> Path:
    empty = work / "incoming"
    empty.mkdir()
    for i in range(n):
        (work / f"idle{i:02d}.yaml").write_text(
            f"name: idle{i:02d}\n"
            f"data: {{source: {{kind: directory, path: {empty}}}}}\n"
            "triggers: {schedule: {every_s: 86400}}\n"
        )
    lines = "\n".join(f"  - {{policy: idle{i:02d}.yaml, owner: team}}" for i in range(n))
    path = work / "factory.yaml"
    path.write_text(f"name: idle\nlimits: {{slots: 1}}\nlines:\n{lines}\n")
    return path


def measure(n: int, window_s: float, tick_s: float) -> dict[str, Any]:
    from adapters.store.cycles import CycleBook
    from adapters.store.db import Store

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        factory = _factory(work, n)
        state = work / "state"
        cmd = [sys.executable, "-m", "controller.cli", "run", "--factory", str(factory)]
        cmd += [
            "--state-dir",
            str(state),
            "--port",
            "0",
            "--console-port",
            "0",
            "--tick-s",
            str(tick_s),
        ]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (state / "aifactory.db").exists():
                time.sleep(0.2)
            store = Store(f"sqlite:///{state / 'aifactory.db'}")
            store.create_all()  # the daemon may not have made its tables yet
            book = CycleBook(store)
            names = [f"idle{i:02d}" for i in range(n)]
            while time.monotonic() < deadline:
                if all(book.completed_count(x) >= 1 for x in names):
                    break
                time.sleep(0.5)
            else:
                raise SystemExit(f"{n} lines did not finish their first cycle")
            store.dispose()
            time.sleep(2 * tick_s)  # settle
            before, t0 = _cpu_s(proc.pid), time.monotonic()
            time.sleep(window_s)
            after, t1 = _cpu_s(proc.pid), time.monotonic()
        finally:
            proc.terminate()
            proc.wait(60)
    cpu = after - before
    ticks = (t1 - t0) / tick_s
    return {
        "lines": n,
        "window_s": round(t1 - t0, 1),
        "cpu_s": round(cpu, 3),
        "core_pct": round(100.0 * cpu / (t1 - t0), 3),
        "cpu_ms_per_tick": round(1000.0 * cpu / ticks, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--tick-s", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per count (median)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    counts = sorted(set([1, *args.lines]))
    rows = []
    for n in counts:
        runs = [measure(n, args.window_s, args.tick_s) for _ in range(args.repeats)]
        row = sorted(runs, key=lambda r: r["core_pct"])[len(runs) // 2]  # the median run
        rows.append(row | {"core_pct_runs": [r["core_pct"] for r in runs]})
    base = rows[0]["cpu_ms_per_tick"] or 1e-9
    for r in rows:
        r["per_tick_over_one_line"] = round(r["cpu_ms_per_tick"] / base, 2)
    result = {"date": time.strftime("%Y-%m-%d"), "tick_s": args.tick_s, "rows": rows}
    emit(result, args.out)


if __name__ == "__main__":
    main()
