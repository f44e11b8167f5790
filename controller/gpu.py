"""The factory's GPUs: probe once, restore what a crashed run left changed, and apply a
trial's power limit within the facility cap (journaled before it is set, audited).

Shared by every line; the knob is offered to a line only where its policy allows it.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

from adapters.gpu.guard import GpuSettingsGuard
from adapters.gpu.probe import probe_gpus
from adapters.store.audit import AuditLog
from adapters.store.db import Store
from adapters.store.gpu_settings import SqlSettingsJournal
from agents.energy import PowerRequest, allocate_power_limits
from agents.placement import DeviceView
from policies.model import Policy


class FactoryGpus:
    def __init__(self, store: Store, audit: AuditLog, nvml_module: str | None) -> None:
        self.store, self.audit = store, audit
        self._nvml_module = nvml_module
        self.gpu: Any = None
        self.note = "not probed"
        self.guard: GpuSettingsGuard | None = None
        self.facility_cap_w: float | None = None
        self._active: dict[str, PowerRequest] = {}  # trial key -> its request, while it runs
        self._lock = threading.Lock()

    def probe(self, prefer: str) -> None:
        """Probe the adapter; restore any setting a crashed run left changed."""
        nvml = importlib.import_module(self._nvml_module) if self._nvml_module else None
        self.gpu, self.note = probe_gpus(prefer, nvml=nvml)
        if self.gpu is None:
            return
        if hasattr(self.gpu, "set_power_limit_w"):
            devices = self.gpu.devices()
            self.guard = GpuSettingsGuard(self.gpu, SqlSettingsJournal(self.store), devices)
            # for exits the runner's shutdown does not reach (the main thread raising, a
            # trial thread setting a limit after it); no signals: ours only set a flag
            self.guard.install_exit_hooks(
                on_restored=lambda results: self._audit_restored(results, "at interpreter exit")
            )
            self.restore("at start (a previous run did not restore it)", policy_version=None)

    def trial_devices(self) -> int:
        """GPUs that trials on this machine really use (NVML's; a simulated or replayed
        GPU only plans)."""
        from adapters.gpu.nvml import NvmlGpu

        if not isinstance(self.gpu, NvmlGpu):
            return 0
        try:
            return len(self.gpu.devices())
        except Exception:
            return 0

    def device_view(
        self,
        knob_problem: str | None,
        bytes_per_sample: int | None,
        tokens_per_sample: int | None = None,
    ) -> DeviceView:
        """What `agents.placement` plans with: the GPU trials run on here, or none."""
        if self.trial_devices() == 0:
            return DeviceView(False, "this machine's CPU", power_knob_problem=knob_problem)
        d = self.gpu.devices()[0]
        ampere = d.compute_capability is not None and d.compute_capability >= (8, 0)
        finite = d.power_limit_default_w == d.power_limit_default_w  # not NaN
        return DeviceView(
            True,
            d.name,
            memory_bytes=d.memory_total_bytes or None,
            bf16=ampere,
            tf32=ampere,
            power_default_w=d.power_limit_default_w if finite else None,
            power_min_w=d.power_limit_min_w if d.power_limit_min_w == d.power_limit_min_w else None,
            power_knob_problem=knob_problem,
            bytes_per_sample=bytes_per_sample,
            tokens_per_sample=tokens_per_sample,
        )

    def max_power_w(self, policy: Policy) -> float:
        """P_max for the Zeus-style cost: the devices' maximum, or the host estimate."""
        if self.gpu is None:
            return (os.cpu_count() or 1) * policy.energy.watts_per_core
        return sum(d.power_limit_max_w for d in self.gpu.devices())

    def knob_problem(self, policy: Policy) -> str | None:
        """Why a line may not tune power limits here (None: it may)."""
        if self.gpu is None:
            return self.note
        if not policy.energy.allow_power_limits:
            return "the policy does not allow it (energy.allow_power_limits)"
        if self.guard is None:
            return f"{self.note}: read-only"
        return None

    def restore(self, when: str, policy_version: str | None) -> None:
        if self.guard is not None:
            self._audit_restored(self.guard.restore_all(), when, policy_version)

    def _audit_restored(
        self, results: list[Any], when: str, policy_version: str | None = None
    ) -> None:
        for result in results:
            self.audit.append(
                agent="energy",
                action="restore_gpu_setting",
                outcome="taken" if result.status in ("applied", "unchanged") else "failed",
                reason=f"GPU {result.index} {result.knob} back to {result.requested:g} {when}: "
                f"{result.status}",
                figures={
                    "index": result.index,
                    "knob": result.knob,
                    "previous": result.previous,
                    "restored": result.requested,
                },
                policy_version=policy_version,
            )

    def set_power_limit(self, policy: Policy, watts: float, key: str) -> str:
        """Apply a trial's power limit within the facility cap. Trials share the device, so one
        trial at a time may hold its limit (trials of several lines may run at once)."""
        assert self.guard is not None
        device = self.gpu.devices()[0]
        cap = self.facility_cap_w or policy.energy.facility_power_cap_w
        with self._lock:
            holder = next((k for k in self._active if k != key), None)
            if holder is not None:  # one device, one limit: the trial holding it keeps it
                status = f"refused: trial {holder} holds GPU {device.index}'s power limit"
                self._audit(
                    policy,
                    key,
                    "refused",
                    status + "; this trial runs at it",
                    {"requested_w": watts, "holder": holder},
                )
                return status
            self._active[key] = PowerRequest(
                key, watts, device.power_limit_min_w, device.power_limit_max_w
            )
            limits = allocate_power_limits(cap, list(self._active.values())) if cap else None
            if cap is not None and limits is None:
                del self._active[key]
                status = f"refused: facility cap {cap:g} W is below the device minimum"
                self._audit(policy, key, "refused", status, {"requested_w": watts, "cap_w": cap})
                return status
            applied = limits[key] if limits is not None else watts
            result = self.guard.apply_power_limit_w(device.index, applied, reason=key)
        ok = result.status in ("applied", "unchanged")
        status = f"{result.status}: {applied:g} W" + (
            f" (asked {watts:g} W, facility cap {cap:g} W)" if applied != watts else ""
        )
        reason = f"GPU {device.index} power limit {status}" + (
            "" if ok else f"; planning without this knob ({result.message})"
        )
        figures = {
            "index": device.index,
            "requested_w": watts,
            "applied_w": applied,
            "previous_w": result.previous,
            "status": result.status,
            "cap_w": cap,
        }
        self._audit(policy, key, "taken" if ok else "refused", reason, figures)
        return status

    def trial_ended(self, key: str) -> None:
        with self._lock:
            self._active.pop(key, None)

    def _audit(
        self, policy: Policy, key: str, outcome: str, reason: str, figures: dict[str, Any]
    ) -> None:
        self.audit.append(
            agent="energy",
            action="set_power_limit",
            outcome=outcome,  # type: ignore[arg-type]
            reason=reason,
            figures=figures,
            key=f"{key}:power",
            policy_version=policy.version,
            line=policy.name,
        )

    def sample(self) -> dict[str, Any]:
        """GPU figures for the watch tick's telemetry (none without a GPU)."""
        if self.gpu is None:
            return {}
        gpus = self.gpu.sample()
        if not gpus:
            return {}
        return {
            "gpu_power_w": round(sum(g.power_w for g in gpus), 1),
            "gpu_util_pct": round(sum(g.util_gpu_pct for g in gpus) / len(gpus), 1),
            "gpu_method": gpus[0].method,
        }
