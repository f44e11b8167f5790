"""The Grafana dashboard shipped in docs/grafana: a dashboard Grafana can import as is, whose
queries use only the metric names a real ServingServer exports on `/metrics`, and that shows
every family it exports (a new family fails here until the dashboard shows it)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serving import LINE, _model

from adapters.completion_ids import CompletionIds
from adapters.serving import ServingServer
from adapters.serving_feedback import Feedback, FeedbackDesk
from adapters.traffic_capture import Captured, CaptureSpec, TrafficCapture

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana" / "aifactory-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
_METRIC = re.compile(r"\baifactory_[a-z0-9_]+")
#: Exported but deliberately not queried, and why.
NOT_SHOWN = {
    "aifactory_feedback_score": "one member's mean; the panel divides the counters summed "
    "over every member (aifactory_feedback_rating_sum_total / aifactory_feedback_total)",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]


class _Sink:
    """Takes every rating and kept prompt (the store, in the daemon)."""

    def record(self, fb: Feedback) -> float | None:
        return None

    def add(self, rows: list[Captured]) -> int:
        return len(rows)

    def bytes_on(self, line: str, day: str) -> int:
        return 0


@pytest.fixture(scope="module")
def scraped() -> Iterator[set[str]]:
    """The sample names of a real scrape of a server that has served and been rated during a
    canary, keeps prompts, publishes live figures and belongs to a shared store: every family
    the server can export."""
    capture = TrafficCapture(_Sink(), seed=0)
    srv = ServingServer(
        port=0,
        max_tokens_limit=8,
        feedback=FeedbackDesk(CompletionIds(b"k" * 32), _Sink()),
        capture=capture,
    )
    line = srv.line(LINE)
    line.route(_model("A", 1), _model("B", 2), 50.0)
    line.capture = CaptureSpec()
    line.publish_live(1, {"prompts": 8, "js_divergence": 0.1, "bpb": 2.0, "loss_increase_pct": 1})
    srv.member = {"member": "m1", "role": "leader", "epoch": 3}
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10.0) as client:
            for i in range(4):
                body = {"model": LINE, "prompt": f"a prompt long enough to keep {i}"}
                answer = client.post("/v1/completions", json=body)
                assert answer.status_code == 200, answer.text
                rating = {"id": answer.json()["id"], "rating": 1.0, "correction": "better"}
                assert client.post("/v1/feedback", json=rating).status_code == 200
            capture.flush()
            text = client.get("/metrics").text
    finally:
        srv.stop()
        capture.close()
    yield {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_it_is_an_importable_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36 and dashboard["title"] and dashboard["uid"]
    assert dashboard["id"] is None  # import gives it one
    (source,) = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS" and source["type"] == "datasource"
    assert source["pluginId"] == "prometheus"

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"line", "version"}
    for variable in variables.values():
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["query"]["query"].startswith("label_values(")
        assert variable["definition"] == variable["query"]["query"]
        assert variable["includeAll"] and variable["multi"]

    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"] and panel["datasource"] == DATASOURCE
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip()


def test_queries_are_well_formed_and_follow_the_variables(dashboard: dict[str, Any]) -> None:
    for expr in _exprs(dashboard):
        depth = {"(": 0, "{": 0, "[": 0}
        closing = {")": "(", "}": "{", "]": "["}
        for char in expr:
            if char in depth:
                depth[char] += 1
            elif char in closing:
                depth[closing[char]] -= 1
                assert depth[closing[char]] >= 0, expr
        assert set(depth.values()) == {0}, expr
        if "by (line, version" in expr:  # per-line series follow the dashboard's selection
            assert 'line=~"$line"' in expr and 'version=~"$version"' in expr, expr
        if "rate(" in expr:
            assert "[$__rate_interval]" in expr, expr


def test_every_metric_queried_is_exported_and_every_one_exported_is_shown(
    dashboard: dict[str, Any], scraped: set[str]
) -> None:
    queries = _exprs(dashboard) + [v["query"]["query"] for v in dashboard["templating"]["list"]]
    used = {name for q in queries for name in _METRIC.findall(q)}
    assert used, "no aifactory metric on the dashboard"
    assert used <= scraped, f"not exported by the server: {sorted(used - scraped)}"
    missing = scraped - used - set(NOT_SHOWN)
    assert not missing, f"exported but not on the dashboard: {sorted(missing)}"
    assert set(NOT_SHOWN) <= scraped - used
