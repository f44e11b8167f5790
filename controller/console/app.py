"""The operator console's HTTP app: a JSON API under ``/api/v1`` (its OpenAPI spec at
``/openapi.json``) and the dashboard that uses it (``/``), on a port of its own.

Reads and actions go through `controller.queries` and `controller.operator_actions`, the
same code as the CLI. Every answer that is not 2xx is ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.http_thread import is_loopback
from controller.console.guard import ConsoleError, Gate
from controller.console.live import live_view
from controller.operator_actions import ActionDone, ActionRefused, OperatorActions
from controller.queries import Queries, event_dict

_log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
_STATIC_FILES = {"index.html", "console.js", "console.css"}
_LINE = PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_INT_MAX = 2**31 - 1  # the store's integer columns
_REFUSAL_STATUS = {"not_found": 404, "conflict": 409, "invalid": 400}
# the page loads only its own files: an injected script or a framing site gets nowhere
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Reason(BaseModel):
    """Why: it goes into the audit log beside the operator's name."""

    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S")

    @field_validator("reason")
    @classmethod
    def _printable(cls, value: str) -> str:
        if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value):
            raise ValueError("no control characters but tab and newlines")
        return value.strip()


class RollbackRequest(Reason):
    to: int | None = Field(
        default=None,
        ge=1,
        le=_INT_MAX,
        strict=True,  # JSON true is not version 1, nor "2" version 2
        description="Version to restore; default: the previous champion.",
    )


@dataclass
class ConsoleDeps:
    queries: Queries
    actions: OperatorActions
    gate: Gate
    serving: Any = None  # the daemon's ServingServer, for live figures
    plotly_js: Path | None = None


def build_console_app(deps: ConsoleDeps) -> FastAPI:
    app = FastAPI(
        title="aifactory operator console",
        version="1",
        description="Status, history and operator actions of an aifactory factory.",
        docs_url=None,
        redoc_url=None,
    )
    _error_handlers(app)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Any]) -> Response:
        raw = request.scope.get("raw_path", b"") + b"?" + request.scope.get("query_string", b"")
        if _CONTROL.search(unquote_to_bytes(raw)):
            return _error(400, "invalid_request", "control characters in the path or query")
        host = (request.url.hostname or "").strip("[]")
        if deps.gate.reads_open and not is_loopback(host):
            # open reads on loopback only for loopback names: a page whose name was
            # rebound to 127.0.0.1 cannot read the console through the victim's browser
            return _error(
                403, "forbidden_host", f"the console answers loopback names only, not {host[:80]!r}"
            )
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    app.include_router(_read_routes(deps))
    app.include_router(_action_routes(deps))
    _static_routes(app, deps)
    return app


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ConsoleError)
    async def _console(_: Request, exc: ConsoleError) -> JSONResponse:
        auth = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.code, exc.message, auth)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:5]
        ]
        return _error(400, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        response = _error(exc.status_code, code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        _log.exception("console request failed")  # a bug: the fuzz tests look for these
        return _error(500, "internal_error", f"the console failed: {type(exc).__name__}")

    @app.exception_handler(DataError)
    async def _refused_by_store(_: Request, exc: DataError) -> JSONResponse:
        return _error(400, "invalid_request", "the store refused a value of the request")

    @app.exception_handler(OperationalError)
    async def _store_down(_: Request, exc: OperationalError) -> JSONResponse:
        return _error(503, "store_unavailable", "the store did not answer; try again shortly")


_bearer = HTTPBearer(auto_error=False, description="An operator's console token.")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _authorization(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return f"Bearer {creds.credentials}" if creds is not None else None


def _line_known(q: Queries) -> Callable[[str], str]:
    """A dependency: the ``{line}`` of the path, when the store knows it (else 404)."""

    def line_known(line: str = _LINE) -> str:
        if not q.has_line(line):
            raise ConsoleError(404, "not_found", f"no production line {line!r} in the store")
        return line

    return line_known


def _read_routes(deps: ConsoleDeps) -> APIRouter:
    q = deps.queries

    def reader(
        request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> str | None:
        """Reads are open on loopback; elsewhere they need a token as writes do."""
        if deps.gate.reads_open and creds is None:
            return None
        return deps.gate.operator(
            _authorization(creds), request.method, request.url.path, _client(request)
        )

    line_known = _line_known(q)

    r = APIRouter(prefix="/api/v1", dependencies=[Depends(reader)])

    @r.get("/whoami", summary="The operator the token names")
    def whoami(
        request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> dict[str, str]:
        name = deps.gate.operator(_authorization(creds), "GET", request.url.path, _client(request))
        return {"name": name}

    @r.get("/factory", summary="Every line's status and the members")
    def factory() -> dict[str, Any]:
        return q.factory()

    @r.get("/lines/{line}", summary="One line's status")
    def line_status(line: str = Depends(line_known)) -> dict[str, Any]:
        return q.line_status(line)

    @r.get("/lines/{line}/models", summary="Model versions with aliases")
    def models(line: str = Depends(line_known)) -> dict[str, Any]:
        return {"models": q.models(line)}

    @r.get("/lines/{line}/models/{version}", summary="One version with its lineage")
    def model(
        version: int = PathParam(ge=1, le=_INT_MAX), line: str = Depends(line_known)
    ) -> dict[str, Any]:
        found = q.model(line, version)
        if found is None:
            raise ConsoleError(404, "not_found", f"no model version {version} of {line}")
        return found

    @r.get("/lines/{line}/cycles", summary="Recent cycles with what they spent")
    def cycles(
        line: str = Depends(line_known), limit: int = Query(20, ge=1, le=500)
    ) -> dict[str, Any]:
        return {"cycles": q.cycles(line, limit)}

    @r.get("/cycles/{cycle_id}/trials", summary="A cycle's trials and Pareto front")
    def trials(cycle_id: str = PathParam(min_length=1, max_length=64)) -> dict[str, Any]:
        found = q.trials(cycle_id)
        if found is None:
            raise ConsoleError(404, "not_found", f"no cycle {cycle_id!r}")
        return {"cycle": cycle_id, "trials": found}

    @r.get("/lines/{line}/rollouts", summary="Recent canary rollouts with their history")
    def rollouts(
        line: str = Depends(line_known), limit: int = Query(10, ge=1, le=100)
    ) -> dict[str, Any]:
        return {"rollouts": q.rollouts_of(line, limit)}

    @r.get("/lines/{line}/report", summary="The ledger by cycle, day or model")
    def report(
        line: str = Depends(line_known), by: Literal["cycle", "day", "model"] = "cycle"
    ) -> dict[str, Any]:
        return {"rows": q.report(line, by)}

    @r.get("/lines/{line}/live", summary="What the line's endpoint serves now")
    def live(line: str = Depends(line_known)) -> dict[str, Any]:
        return {"versions": live_view(deps.serving, line)}

    @r.get("/report/lines", summary="Chargeback: the ledger by line and owner")
    def chargeback() -> dict[str, Any]:
        return q.chargeback().as_dict()

    _audit_routes(r, q)
    return r


def _audit_routes(r: APIRouter, q: Queries) -> None:
    @r.get("/audit", summary="Audit events, newest last")
    def audit(
        line: str | None = Query(None, max_length=64),
        agent: str | None = Query(None, max_length=64),
        action: str | None = Query(None, max_length=64),
        cycle: str | None = Query(None, max_length=64),
        since: str | None = Query(None, max_length=40, description="ISO time"),
        limit: int = Query(100, ge=1, le=5000),
    ) -> dict[str, Any]:
        events = q.audit_events(
            line=line, agent=agent, action=action, cycle_id=cycle, since=since, limit=limit
        )
        return {"events": [event_dict(e) for e in events]}

    @r.get("/audit/verify", summary="Verify the audit log's hash chain")
    def verify() -> dict[str, Any]:
        return q.verify()

    @r.get("/approvals", summary="Promotions waiting for (or given) a person's answer")
    def approvals(
        line: str | None = Query(None, max_length=64),
        status: Literal["pending", "approved", "rejected"] | None = None,
    ) -> dict[str, Any]:
        return {"approvals": q.approvals(line, status)}


def _action_routes(deps: ConsoleDeps) -> APIRouter:
    q, act = deps.queries, deps.actions

    def operator(
        request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> str:
        return deps.gate.operator(
            _authorization(creds), request.method, request.url.path, _client(request)
        )

    line_known = _line_known(q)

    r = APIRouter(prefix="/api/v1")

    @r.post("/approvals/{approval_id}/{verb}", summary="Approve or reject a promotion")
    def decide(
        body: Reason,
        verb: Literal["approve", "reject"],
        approval_id: int = PathParam(ge=1, le=_INT_MAX),
        who: str = Depends(operator),
    ) -> dict[str, Any]:
        return _done(lambda: act.decide_approval(approval_id, verb == "approve", who, body.reason))

    @r.post("/lines/{line}/rollback", summary="Restore the previous champion (or `to`)")
    def rollback(
        body: RollbackRequest, line: str = Depends(line_known), who: str = Depends(operator)
    ) -> dict[str, Any]:
        return _done(lambda: act.rollback(line, body.to, who, body.reason))

    @r.post("/lines/{line}/rollout/{decision}", summary="Continue a paused canary, or abort it")
    def rollout(
        body: Reason,
        decision: Literal["continue", "abort"],
        line: str = Depends(line_known),
        who: str = Depends(operator),
    ) -> dict[str, Any]:
        return _done(lambda: act.decide_rollout(line, decision, who, body.reason))

    @r.post("/lines/{line}/pause", summary="Pause a line: no new cycles; serving goes on")
    def pause(
        body: Reason, line: str = Depends(line_known), who: str = Depends(operator)
    ) -> dict[str, Any]:
        return _done(lambda: act.pause(line, who, body.reason))

    @r.post("/lines/{line}/resume", summary="Resume a paused line")
    def resume(
        body: Reason, line: str = Depends(line_known), who: str = Depends(operator)
    ) -> dict[str, Any]:
        return _done(lambda: act.resume(line, who, body.reason))

    return r


def _done(action: Callable[[], ActionDone]) -> dict[str, Any]:
    try:
        done = action()
    except ActionRefused as exc:
        raise ConsoleError(_REFUSAL_STATUS[exc.kind], exc.kind, exc.message) from exc
    return {"message": done.message, **done.data}


def _static_routes(app: FastAPI, deps: ConsoleDeps) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name == "plotly.min.js" and deps.plotly_js is not None:
            return FileResponse(deps.plotly_js, media_type="text/javascript")
        if name not in _STATIC_FILES or not (STATIC_DIR / name).is_file():
            raise ConsoleError(404, "not_found", f"no file {name[:80]!r}")
        return FileResponse(STATIC_DIR / name)
