"""SimulatedGpu and its workload model against the measured H200 files, and ReplayGpu."""

from __future__ import annotations

import csv
import json
import math
from itertools import pairwise
from pathlib import Path

import pytest

from adapters.gpu import (
    GpuControl,
    GpuError,
    GpuProbe,
    ReplayGpu,
    SimulatedGpu,
    SimulatedTraining,
    TraceFormatError,
    default_calibration,
    estimate_training,
)
from adapters.gpu.base import bundled_data_path

DATA = bundled_data_path("")
SWEEP = json.loads((DATA / "h200_sweep.json").read_text())["sweep"]
PROBE = json.loads((DATA / "h200_probe.json").read_text())
GPT_86M = 85_645_824  # the d768 L12 model of the sweep


class FakeClock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def within(value: float, measured: float, tolerance: float = 0.15) -> bool:
    return abs(value / measured - 1.0) <= tolerance


# --- calibration and workload model -------------------------------------------------------


def test_calibration_matches_the_probe() -> None:
    cal = default_calibration()
    assert cal.name == "NVIDIA H200"
    assert cal.idle_w == pytest.approx(80.0, rel=0.05)
    assert (cal.power_limit_min_w, cal.power_limit_max_w, cal.power_limit_default_w) == (
        200.0,
        700.0,
        700.0,
    )
    assert (cal.sm_clock_min_mhz, cal.sm_clock_max_mhz, cal.mem_clock_mhz) == (345, 1980, 3201)
    assert cal.sm_clock_at_cap_mhz == pytest.approx(1575.0, rel=0.05)
    assert len(cal.sweep) == 48


def test_headline_points_of_the_86m_model() -> None:
    fp32 = estimate_training(GPT_86M, 8, "fp32")
    bf16 = estimate_training(GPT_86M, 512, "bf16")
    assert within(fp32.tokens_per_j, 102.0) and within(bf16.tokens_per_j, 911.0)
    assert fp32.method == bf16.method == "simulated"
    assert bf16.power_capped and bf16.sm_clock_mhz == pytest.approx(1590, rel=0.05)


def test_every_measured_sweep_point_is_reproduced() -> None:
    misses = []
    for row in SWEEP:
        est = estimate_training(row["params"], row["batch"], row["prec"], 700.0)
        for name, got, want in (
            ("tokens/s", est.tokens_per_s, row["tokens_per_s"]),
            ("W", est.avg_power_w, row["avg_watts"]),
            ("tokens/J", est.tokens_per_j, row["tokens_per_joule"]),
        ):
            if not within(got, want):
                misses.append(f"{row['params']} b{row['batch']} {row['prec']} {name}: {got}/{want}")
    assert not misses, misses


def test_interpolation_stays_between_neighbours_and_clamps_outside() -> None:
    lo = estimate_training(GPT_86M, 32, "bf16").tokens_per_s
    hi = estimate_training(GPT_86M, 128, "bf16").tokens_per_s
    assert lo < estimate_training(GPT_86M, 64, "bf16").tokens_per_s < hi
    edge = estimate_training(GPT_86M, 512, "bf16")
    assert estimate_training(10 * GPT_86M, 4096, "bf16").tokens_per_s == edge.tokens_per_s


def test_lower_power_limit_lowers_power_and_speed() -> None:
    runs = [estimate_training(GPT_86M, 512, "bf16", w) for w in (700, 600, 450, 300, 200)]
    for a, b in pairwise(runs):
        assert b.avg_power_w < a.avg_power_w and b.tokens_per_s < a.tokens_per_s
    assert runs[-1].avg_power_w == 200.0 and runs[-1].sm_clock_mhz < runs[0].sm_clock_mhz
    # the law: tokens/s scale with ((L - idle) / (draw at 700 W - idle)) ** 0.75
    idle, draw = default_calibration().idle_w, runs[0].avg_power_w
    expected = ((450 - idle) / (draw - idle)) ** 0.75
    assert runs[2].tokens_per_s / runs[0].tokens_per_s == pytest.approx(expected)


def test_limit_above_the_draw_changes_nothing() -> None:
    light = estimate_training(495_104, 8, "bf16")  # ~131 W
    limited = estimate_training(495_104, 8, "bf16", 200.0)
    assert (limited.tokens_per_s, limited.avg_power_w) == (light.tokens_per_s, light.avg_power_w)
    assert not limited.power_capped


@pytest.mark.parametrize(
    ("params", "batch", "prec", "limit"),
    [(0, 8, "bf16", 700.0), (GPT_86M, 0, "bf16", 700.0), (GPT_86M, 8, "int4", 700.0)]
    + [(GPT_86M, 8, "bf16", w) for w in (150.0, 750.0, float("nan"))],
)
def test_estimate_rejects_nonsense(params: int, batch: int, prec: str, limit: float) -> None:
    with pytest.raises(ValueError):
        estimate_training(params, batch, prec, limit)


# --- SimulatedGpu --------------------------------------------------------------------------


def test_idle_device_looks_like_the_measured_idle() -> None:
    gpu = SimulatedGpu(count=2, power_noise_pct=0.0)
    assert isinstance(gpu, GpuProbe) and isinstance(gpu, GpuControl)
    assert [d.source for d in gpu.devices()] == ["simulated", "simulated"]
    assert len({d.uuid for d in gpu.devices()}) == 2
    for s in gpu.sample():
        assert s.method == "simulated"
        assert s.power_w == pytest.approx(80.0, rel=0.05)
        assert (s.util_gpu_pct, s.sm_clock_mhz, s.mem_clock_mhz) == (0.0, 345.0, 3201.0)
        assert s.throttle_names == ("gpu_idle",)


def test_load_shows_in_samples_and_follows_the_limit() -> None:
    gpu = SimulatedGpu(power_noise_pct=0.0)
    gpu.set_load(0, estimate_training(GPT_86M, 512, "bf16"))
    busy = gpu.sample()[0]
    assert busy.power_w == pytest.approx(699.9, abs=0.1) and busy.util_gpu_pct == 100.0
    assert busy.throttle_names == ("sw_power_cap",) and busy.temp_c > 45
    result = gpu.set_power_limit_w(0, 400.0)
    assert (result.status, result.previous, result.applied) == ("applied", 700.0, True)
    assert "simulated" in result.message
    capped = gpu.sample()[0]
    assert capped.power_w == pytest.approx(400.0) and capped.sm_clock_mhz < busy.sm_clock_mhz
    running = gpu.running(0)
    assert running is not None and running.tokens_per_s < 637_359 * 0.8
    gpu.set_load(0, None)
    assert gpu.sample()[0].power_w == pytest.approx(79.7, abs=0.1) and gpu.running(0) is None


def test_hand_built_load_uses_its_draw() -> None:
    gpu = SimulatedGpu(power_noise_pct=0.0)
    gpu.set_load(0, SimulatedTraining(tokens_per_s=1000.0, avg_power_w=500.0, tokens_per_j=2.0))
    assert gpu.sample()[0].power_w == 500.0
    gpu.set_power_limit_w(0, 300.0)
    running = gpu.running(0)
    assert running is not None and running.avg_power_w == 300.0 and running.tokens_per_s < 1000


def test_power_limit_behaves_like_the_board() -> None:
    gpu = SimulatedGpu()
    for watts in (199.0, 701.0, float("nan")):
        result = gpu.set_power_limit_w(0, watts)
        assert result.status == "out_of_range" and "200-700 W" in result.message
    assert gpu.set_power_limit_w(0, 700.0).status == "unchanged"
    assert gpu.power_limit_w(0) == 700.0
    with pytest.raises(GpuError, match="no GPU 3"):
        gpu.set_power_limit_w(3, 500.0)


def test_refusals_can_be_simulated() -> None:
    gpu = SimulatedGpu(permitted=False)
    refused = gpu.set_power_limit_w(0, 500.0)
    assert (refused.status, refused.previous, gpu.power_limit_w(0)) == ("not_permitted", 700, 700)
    gpu.permitted, gpu.supported = True, False
    assert gpu.set_power_limit_w(0, 500.0).status == "unsupported"


def test_energy_integrates_power_over_the_fake_clock() -> None:
    clock = FakeClock()
    gpu = SimulatedGpu(count=2, now=clock)
    idle_w = default_calibration().idle_w
    assert gpu.energy_j(0) == 0.0
    clock.t += 10.0
    assert gpu.energy_j(0) == pytest.approx(10 * idle_w)
    gpu.set_load(0, estimate_training(GPT_86M, 512, "bf16"))  # ~700 W
    clock.t += 5.0
    gpu.set_power_limit_w(0, 300.0)
    clock.t += 2.0
    expected = 10 * idle_w + 5 * 699.949 + 2 * 300.0
    assert gpu.energy_j(0) == pytest.approx(expected, rel=1e-4)
    assert gpu.energy_j(1) == pytest.approx(17 * idle_w)  # the other device stayed idle
    assert gpu.sample()[0].at_unix == clock.t


def test_same_seed_same_samples() -> None:
    a, b = SimulatedGpu(count=3, seed=7), SimulatedGpu(count=3, seed=7)
    assert [s.power_w for s in a.sample()] == [s.power_w for s in b.sample()]


# --- ReplayGpu -----------------------------------------------------------------------------


def _trace_rows() -> list[dict[str, str]]:
    with (DATA / "h200_trace.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_replay_plays_the_measured_trace() -> None:
    rows = _trace_rows()
    lo_w = min(int(r["power_mw"]) for r in rows) / 1000
    hi_w = max(int(r["power_mw"]) for r in rows) / 1000
    gpu = ReplayGpu()
    assert isinstance(gpu, GpuProbe) and not isinstance(gpu, GpuControl)
    (info,) = gpu.devices()
    assert (info.name, info.uuid, info.source) == ("NVIDIA H200", PROBE["static"]["uuid"], "replay")
    assert gpu.energy_j(0) == 0.0
    energies, seen = [], []
    for _ in rows:
        (s,) = gpu.sample()
        assert s.method == "replayed" and lo_w <= s.power_w <= hi_w
        energies.append(gpu.energy_j(0))
        seen.append(gpu.current.phase if gpu.current else "")
    assert all(b >= a for a, b in pairwise(energies)) and energies[-1] > 30_000
    assert list(dict.fromkeys(seen)) == list(dict.fromkeys(r["phase"] for r in rows))
    assert gpu.phases[0] == "idle" and "cooldown" in gpu.phases
    # looping carries time and energy on
    (again,) = gpu.sample()
    assert gpu.energy_j(0) > energies[-1] and again.at_unix > float(rows[-1]["t"])


def test_replay_without_loop_ends() -> None:
    gpu = ReplayGpu(loop=False)
    for _ in gpu.rows:
        gpu.sample()
    with pytest.raises(GpuError, match="ended"):
        gpu.sample()


def _write_trace(path: Path, edit: dict[int, dict[str, str]]) -> Path:
    rows = _trace_rows()[:5]
    for i, change in edit.items():
        rows[i].update(change)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({2: {"power_mw": "lots"}}, r"line 4: column 'power_mw' value 'lots' is not a number"),
        ({0: {"clock_reasons": "4.5"}}, r"line 2: column 'clock_reasons' .* not an integer"),
        ({3: {"temp_c": ""}}, r"line 5: column 'temp_c' is empty"),
        ({4: {"energy_mj": "1"}}, r"line 6: energy counter went backwards"),
    ],
)
def test_malformed_trace_names_the_line(
    tmp_path: Path, edit: dict[int, dict[str, str]], message: str
) -> None:
    path = _write_trace(tmp_path / "bad.csv", edit)
    with pytest.raises(TraceFormatError, match=message):
        ReplayGpu(path)


def test_trace_missing_a_column(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("t,power_mw\n1.0,80000\n")
    with pytest.raises(TraceFormatError, match=r"short.csv line 1: missing column"):
        ReplayGpu(path)


def test_every_figure_is_finite_in_the_bundled_trace() -> None:
    gpu = ReplayGpu()
    assert all(math.isfinite(r.power_w) and r.sm_clock_mhz > 0 for r in gpu.rows)
