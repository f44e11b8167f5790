"""The console in a real browser: Debian's Chromium, headless, driven by Playwright's Python
package (its own browser download cannot work here). The pages show every line and plots
with data; an approval clicked in the page promotes the model, the page shows it, and the
audit log names the token's owner. Without Chromium the tests skip, except under CI=true.

With CONSOLE_SCREENSHOTS=DIR the page screenshots are also written to DIR (the README's
come from `CONSOLE_SCREENSHOTS=docs`)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_fill import fill_factory
from test_console_e2e import console_url
from test_e2e import daemon, policy_file, wait_for

from adapters.http_thread import HttpThread
from adapters.store.audit import AuditLog
from adapters.store.db import Store
from controller.console.app import ConsoleDeps, build_console_app
from controller.console.guard import Gate
from controller.console.server import plotly_js
from controller.console.tokens import TokenSource
from controller.operator_actions import OperatorActions
from controller.queries import Queries

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "browser-token-0123456789abcdef"


def _need_chromium() -> None:
    why = None
    if not Path(CHROMIUM).exists():
        why = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "Playwright's Python package is not installed"
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"browser tests need Chromium in CI: {why}")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium (Playwright gives it a fresh temporary profile; each test's
    context is a fresh profile of its own: no cookies, no storage carried over)."""
    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    pg = context.new_page()
    pg.errors = []  # script errors: a page that throws fails the test
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()
    assert not pg.errors, pg.errors


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    wanted = os.environ.get("CONSOLE_SCREENSHOTS")
    if wanted:
        shutil.copy(path, Path(wanted) / path.name)


@pytest.fixture
def filled_console(tmp_path: Path) -> Iterator[str]:
    """The console over a store filled like a factory of two lines, on a real port."""
    store = Store(f"sqlite:///{tmp_path / 'console.db'}")
    store.create_all()
    filled = fill_factory(store, tmp_path)
    queries = Queries(store, filled.models_dir)
    gate = Gate(TokenSource("X", f"ops-alice:{TOKEN}", tmp_path), True, queries.audit.append, print)
    deps = ConsoleDeps(
        queries, OperatorActions(queries.registry, queries.audit), gate, None, plotly_js()
    )
    http = HttpThread(build_console_app(deps), "127.0.0.1", 0, "console")
    http.start()
    yield http.url + "/"
    http.stop()
    store.dispose()


def _points(page: Any, testid: str) -> int:
    plot = page.get_by_test_id(testid)
    plot.wait_for()
    page.wait_for_function(
        f"() => Number(document.querySelector('[data-testid={testid}]')"
        ".getAttribute('data-points')) > 0"
    )
    assert plot.locator(".main-svg").count() > 0  # Plotly drew it
    return int(plot.get_attribute("data-points"))


def test_every_page_renders_the_factory_with_plotted_data(
    page: Any, filled_console: str, tmp_path: Path
) -> None:
    page.goto(filled_console + "?refresh=1000")
    for line in ("tiny", "other"):
        page.get_by_test_id(f"line-card-{line}").wait_for()
    assert "v2" in page.get_by_test_id("champion-tiny").inner_text()
    _shot(page, tmp_path, "overview")

    page.goto(filled_console + "?refresh=1000#/line/tiny")
    assert _points(page, "plot-quality") == 3  # v1, v2, v3
    assert _points(page, "plot-energy") >= 3
    assert _points(page, "plot-trials") == 3
    assert _points(page, "plot-rollout") >= 3
    _shot(page, tmp_path, "line")

    page.goto(filled_console + "?refresh=1000#/audit")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=chain-status]').textContent.includes('OK')"
    )
    assert page.get_by_test_id("audit-table").locator("tbody tr").count() >= 7
    _shot(page, tmp_path, "audit")

    page.goto(filled_console + "?refresh=1000#/approvals")
    page.get_by_test_id("approve-1").wait_for()
    _shot(page, tmp_path, "approvals")


def test_an_approval_clicked_in_the_page_promotes_and_names_the_operator(
    page: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    pol = policy_file(tmp_path, **{"gates:": "approval: required\ngates:"})
    log = tmp_path / "daemon.log"
    env = {"AIFACTORY_CONSOLE_TOKENS": f"ops-alice:{TOKEN}"}
    args = ["--policy", str(pol), "--state-dir", str(state), "--port", "0", "--tick-s", "0.3"]
    with daemon(*args, log=log, env=env) as proc:
        base = wait_for(lambda: console_url(log), 60, "console URL", log, proc)
        api = httpx.Client(base_url=base + "api/v1", timeout=30)
        pending = wait_for(
            lambda: api.get("/approvals", params={"status": "pending"}).json()["approvals"],
            120,
            "approval",
            log,
            proc,
        )
        approval = pending[0]["id"]
        page.goto(base + "?refresh=500#/approvals")
        page.get_by_test_id("token-input").fill(TOKEN)
        page.get_by_test_id("token-submit").click()
        page.wait_for_function(
            "() => document.querySelector('[data-testid=whoami]').textContent === 'ops-alice'"
        )
        page.get_by_test_id(f"approve-{approval}-reason").fill("checked in the browser")
        page.get_by_test_id(f"approve-{approval}").click()
        page.goto(base + "?refresh=500#/")
        page.wait_for_function(
            "() => (document.querySelector('[data-testid=champion-tiny]') || {})"
            ".textContent?.includes('v1')",
            timeout=60_000,
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    store = Store(f"sqlite:///{state / 'aifactory.db'}")
    approved = [e for e in AuditLog(store).events(agent="operator") if e.action == "approve"]
    assert [e.reason for e in approved] == ["ops-alice approved v1: checked in the browser"]
    store.dispose()
