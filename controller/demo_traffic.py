"""The demo's own users: when a line's policy has `demo.traffic`, the daemon sends that
line requests (`adapters.traffic_client`), so its canary judges real requests and its live
watch sees real prompts. What the users ask about follows the champion
(`by_champion[k]` while v(k+1) serves): users bring tomorrow's topics before any file does.

Started on the tick once the line serves a champion, stopped with the line; a leader's
lines only (a follower's lines do not tick).
"""

from __future__ import annotations

from collections.abc import Callable

from adapters.traffic_client import TrafficClient, stdlib_prompts
from controller.context import LineContext
from policies.model import DemoTrafficPolicy


class DemoTraffic:
    def __init__(self, ctx: LineContext, serving_url: Callable[[], str | None]) -> None:
        self.ctx = ctx
        self.serving_url = serving_url
        self.client: TrafficClient | None = None
        self._spec: DemoTrafficPolicy | None = None
        self._topics: list[str] = []
        self._prompts: list[str] = []

    def sync(self) -> None:
        """Follow the policy (start, stop, retune) and the champion (the topics)."""
        demo = self.ctx.policy.demo
        spec = demo.traffic if demo is not None else None
        url = self.serving_url()
        if spec != self._spec or url is None:
            self.stop()
        champion = self.ctx.champion_version()
        if spec is None or url is None or champion is None:
            return
        topics = spec.by_champion[min(champion, len(spec.by_champion)) - 1]
        if topics != self._topics:
            self._prompts, self._topics = stdlib_prompts(topics), topics
            self.ctx.reporter.info(
                f"[demo] demo traffic asks about {', '.join(topics)} while v{champion} serves"
            )
        if self.client is None:
            self._spec = spec
            self.client = TrafficClient(
                url,
                self.ctx.name,
                lambda: self._prompts,
                rate_per_s=spec.rate_per_s,
                workers=spec.workers,
                max_tokens=spec.max_tokens,
            ).start()

    def stop(self) -> None:
        """Stop sending (never waits: called from the tick and on shutdown)."""
        if self.client is not None:
            self.client.stop(timeout_s=0)
            self.client, self._spec, self._topics = None, None, []
