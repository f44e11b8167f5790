"""What a line's endpoint is doing right now, read from this daemon's serving server: per
version its requests, failures, tokens, mean latency, share of traffic and the live
watch's last figures. A daemon that does not serve has nothing to show."""

from __future__ import annotations

from typing import Any


def live_view(server: Any, line: str) -> list[dict[str, Any]]:
    """One entry per version the line served since the daemon started (newest first);
    ``share`` is the fraction of the line's traffic it gets (0.1: a tenth)."""
    if server is None or line not in server.lines():
        return []
    endpoint = server.line(line)
    current = endpoint.current
    challenger = endpoint.challenger
    # the endpoint says the challenger's share in %; the view's shares are fractions
    weight = challenger[1] / 100.0 if challenger is not None else 0.0
    shares: dict[int, tuple[str, float]] = {}
    if current is not None:
        shares[current.version] = ("champion", 1.0 - weight)
    if challenger is not None:
        shares[challenger[0].version] = ("challenger", weight)
    figures = endpoint.live_figures()
    counted = {v: m for (name, v), m in server.metrics().items() if name == line}
    out = []
    for version in sorted(set(counted) | set(shares), reverse=True):
        m = counted.get(version, {})
        requests = m.get("requests", 0.0)
        role, share = shares.get(version, ("retired", 0.0))
        out.append(
            {
                "version": version,
                "role": role,
                "share": round(share, 6),
                "requests": int(requests),
                "failures": int(m.get("failures", 0.0)),
                "prompt_tokens": int(m.get("prompt_tokens", 0.0)),
                "completion_tokens": int(m.get("completion_tokens", 0.0)),
                "mean_latency_ms": round(1000.0 * m.get("latency_s_sum", 0.0) / requests, 3)
                if requests
                else None,
                "live": figures.get(version, {}),
            }
        )
    return out
