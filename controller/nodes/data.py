"""The data node: ingest new files, build the dataset version, measure drift, ask the data
agent whether to retrain."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.energy import EnergyReading, HostCpuEnergyMeter
from adapters.store.datasets import DatasetVersion
from adapters.store.registry import ModelVersion
from agents.actions import Action
from agents.data import DataObservation, decide_data
from agents.drift import js_divergence
from agents.live import LIVE_TRIGGER
from controller.context import CycleState, LineContext
from controller.retrain_value import judge_value


class DataNode:
    def __init__(self, ctx: LineContext) -> None:
        self.ctx = ctx

    def __call__(self, state: CycleState) -> dict[str, Any]:
        ctx, cid = self.ctx, state["cycle_id"]
        completed = ctx.book.completed_count(ctx.name)
        report = ctx.ingestor.ingest(
            ctx.source, completed, cycle_id=cid, policy_version=ctx.policy.version
        )
        dataset = ctx.catalog.latest(ctx.name)
        fresh = [f.sha256 for f in ctx.catalog.unassigned(ctx.name)]
        expired = self._expired(dataset)
        if fresh or expired:
            dataset = self._new_dataset(dataset, fresh, cid, expired)
        # "new" means no model has been trained on it yet: a deferred or failed cycle leaves
        # its data new for the next one (re-running this node computes the same answer)
        trained = self._last_trained_dataset()
        new = (
            sorted(set(dataset.file_hashes) - set(trained.file_hashes if trained else ()))
            if dataset is not None
            else []
        )
        if report.quarantined or fresh:
            self._audit_ingest(cid, len(fresh), len(new), len(report.quarantined), dataset)
        champion = ctx.champion()
        obs = DataObservation(
            new_files=len(new),
            new_bytes=sum(f.size_bytes for f in ctx.catalog.files(ctx.name, new)),
            quarantined=len(report.quarantined),
            dataset_version=dataset.version if dataset else None,
            has_champion=champion is not None,
            live_drift=state.get("trigger") == LIVE_TRIGGER,
        )
        if champion is not None and new:
            obs = self._drift(obs, champion, new, cid)
        decision = decide_data(obs, ctx.policy)
        actions, retrain = list(decision.actions), decision.retrain
        value: dict[str, Any] = {}
        # is it worth its energy? (the line's history; live drift asks once per champion,
        # and a deferral would leave its captured traffic untrained: not judged)
        if retrain and champion is not None and not obs.live_drift:
            verdict = judge_value(ctx, obs, champion.created_at)
            actions.append(verdict)
            retrain, value = verdict.outcome == "taken", dict(verdict.figures)
        for i, action in enumerate(actions):
            ctx.record(action, cid, f"data:{action.action}:{i}")
        ctx.reporter.info(f"[data] {actions[-1].reason}")
        first_seen = [f.first_seen for f in ctx.catalog.files(ctx.name, new) if f.first_seen]
        return {
            "dataset_version": obs.dataset_version,
            "retrain": retrain,
            "new_files": new,
            "champion_new_bpb": obs.champion_new_bpb,
            "new_since": _iso_to_unix(min(first_seen)) if first_seen else None,
            "drift": {
                "had_champion": champion is not None,
                "js_divergence": obs.js_divergence,
                "loss_increase_pct": obs.loss_increase_pct,
            },
            "value": value,
        }

    def _audit_ingest(
        self, cid: str, fresh: int, new: int, quarantined: int, dataset: DatasetVersion | None
    ) -> None:
        ctx = self.ctx
        ctx.record(
            Action(
                "data",
                "ingest",
                "taken",
                f"{fresh} file(s) ingested into dataset "
                f"{dataset.version if dataset else '-'}, {quarantined} quarantined",
                {
                    "ingested": fresh,
                    "untrained_files": new,
                    "quarantined": quarantined,
                    "dataset_version": dataset.version if dataset else None,
                    "source": ctx.source.description,
                },
            ),
            cid,
            "data:ingest",
        )

    def _last_trained_dataset(self) -> DatasetVersion | None:
        versions = self.ctx.registry.versions(self.ctx.name)
        return self.ctx.catalog.get(versions[-1].dataset_version) if versions else None

    def _histogram(self, hashes: list[str] | tuple[str, ...]) -> list[int]:
        hist = [0] * 256
        for h in hashes:
            for path in self.ctx.ingestor.blob_paths(h):
                data = Path(self.ctx.local(path)).read_bytes()
                for b in set(data):
                    hist[b] += data.count(b)
        return hist

    def _expired(self, dataset: DatasetVersion | None) -> list[str]:
        """Files of the dataset whose text expired since (captured traffic)."""
        if dataset is None:
            return []
        usable = set(self.ctx.catalog.usable(self.ctx.name, dataset.file_hashes))
        return [h for h in dataset.file_hashes if h not in usable]

    def _new_dataset(
        self, parent: DatasetVersion | None, new: list[str], cid: str, expired: list[str] = ()
    ) -> DatasetVersion:
        """The parent's files and the new ones, less any that expired (whose byte counts
        are then recounted from what is left)."""
        ctx = self.ctx
        kept = set(parent.file_hashes if parent else ()) - set(expired)
        files = sorted(kept | set(new))
        digest = hashlib.sha256("\n".join([ctx.name, *files]).encode()).hexdigest()
        if expired:
            hist = self._histogram(files)
            n_bytes = sum(r.size_bytes for r in ctx.catalog.files(ctx.name, files))
        else:
            hist = list(parent.byte_hist) if parent else [0] * 256
            hist = [a + b for a, b in zip(hist, self._histogram(new), strict=True)]
            n_bytes = (parent.n_bytes if parent else 0) + sum(
                r.size_bytes for r in ctx.catalog.files(ctx.name, new)
            )
        return ctx.catalog.create(
            policy_name=ctx.name,
            version=digest[:16],
            parent=parent.version if parent else None,
            file_hashes=files,
            new_file_hashes=new,
            n_bytes=n_bytes,
            byte_hist=hist,
            cycle_id=cid,
        )

    def _score_champion(
        self, champion: ModelVersion, new: list[str], trained_on: DatasetVersion | None
    ) -> tuple[float | None, float | None, int, EnergyReading]:
        """The champion's bits/byte on the new data and on its own, in one energy window."""
        ctx = self.ctx
        meter = HostCpuEnergyMeter(ctx.policy.energy.watts_per_core)
        window = meter.begin()
        tokens = 0
        new_bpb: float | None = None
        ref_bpb: float | None = None
        try:
            artefact = ctx.registry.verified_path(champion)
            scored = ctx.evaluate(artefact, ctx.holdouts(new))
            new_bpb, tokens = scored.bpb, scored.tokens
            ref_files = ctx.holdouts(trained_on.file_hashes) if trained_on else []
            if ref_files:
                ref = ctx.evaluate(artefact, ref_files)
                ref_bpb, tokens = ref.bpb, tokens + ref.tokens
        except Exception as exc:  # a broken champion must not stop data handling
            ctx.reporter.info(f"[data] champion could not be scored: {exc}")
            new_bpb = ref_bpb = None
        return new_bpb, ref_bpb, tokens, meter.end(window)

    def _drift(
        self, obs: DataObservation, champion: ModelVersion, new: list[str], cid: str
    ) -> DataObservation:
        """Both drift signals: byte-distribution JS, and the champion's loss on the new data."""
        ctx = self.ctx
        trained_on = ctx.catalog.get(champion.dataset_version)
        js = js_divergence(self._histogram(new), trained_on.byte_hist) if trained_on else None
        with ctx.measuring:  # one in-process measurement at a time: CPU time is per process
            new_bpb, ref_bpb, tokens, reading = self._score_champion(champion, new, trained_on)
        ctx.book_eval(f"{cid}:drift-eval", cid, tokens, reading)
        return DataObservation(
            new_files=obs.new_files,
            new_bytes=obs.new_bytes,
            quarantined=obs.quarantined,
            dataset_version=obs.dataset_version,
            has_champion=True,
            js_divergence=js,
            champion_new_bpb=new_bpb,
            champion_ref_bpb=ref_bpb,
            live_drift=obs.live_drift,
        )


def _iso_to_unix(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
