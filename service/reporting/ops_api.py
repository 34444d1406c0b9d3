"""Ops reporting over HTTP: the report API (ops token) and the /ops dashboard page.

    GET /api/reports/summary?from=&to=[&service_level_s=60]   section 5 metrics (fixed shape)
    GET /api/reports/matrix?from=&to=                          touchpoint matrix
    GET /api/reports/candidates?from=&to=                      self-service candidates, ranked
    GET /api/reports/journeys?from=&to=[&limit=5]              journeys and drop-outs
    GET /api/reports/unrecognised?from=&to=[&limit=50]         unrecognised traffic, clustered
    GET /api/reports/trend?from=&to=[&bucket=hour|day|week]    headline rates over time
    GET /api/reports/matrix.csv?from=&to=                      the matrix as CSV (a download)
    GET /api/reports/attributes?from=&to=                      customer attributes and values
    GET /api/queues                                            now: waiting, longest wait, agents
    POST /api/rules/reload                                     reload this instance's rules
    GET /ops                                                   the dashboard (static page)

API calls need `Authorization: Bearer <token>` with an ops token (`switchboard tokens add
--role ops`): 401 without a valid one, 403 for another role. from/to are ISO 8601 (a date is
midnight UTC); `to` defaults to now and `from` to seven days earlier; a bad value is a 400.
Every report takes `segment_by=customer.<attribute>`: split into one report per value the
attribute takes (`segments`), or, with `segment=<value>` (empty: customers without it), only
that segment's customers. With `Prefer: respond-async`, such a report whose roll-ups by the
attribute are not computed yet is a 202 with the progress while they are (preparing.py).
"""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import asyncpg
import redis.exceptions
import structlog
from aiohttp import web

from service import WEB_DIR
from service.appkeys import AUTH_THROTTLE, OUTBOX, PG, PREPARING, ROUTER, RULES
from service.infra import tokens
from service.reporting import candidates, export, metrics, reports, rollups, unrecognised
from service.reporting.reports import BadSegment, BadWindow, ReportRules, Window
from service.rules.versions import LoadCause

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NO_STORE = {"Cache-Control": "no-store"}
# A database down, busy or too slow: not a bug of ours.
UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.OperatorInterventionError, asyncpg.InsufficientResourcesError, OSError,
               TimeoutError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def routes() -> list[web.RouteDef]:
    return [web.get("/ops", _static("ops.html")), web.get("/ops/ops.js", _static("ops.js")),
            web.get("/ops/ops.css", _static("ops.css")),
            web.get("/api/reports/summary", summary), web.get("/api/reports/matrix", matrix),
            web.get("/api/reports/matrix.csv", matrix_download),
            web.get("/api/reports/attributes", customer_attributes),
            web.get("/api/reports/candidates", self_service_candidates),
            web.get("/api/reports/journeys", journeys), web.get("/api/reports/trend", trend),
            web.get("/api/reports/unrecognised", unrecognised_traffic),
            web.get("/api/queues", queues_now), web.get("/api/outbox", outbox_now),
            web.post("/api/rules/reload", rules_reload)]


def _static(name: str) -> Handler:
    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / name, headers=NO_STORE)
    return serve


# ---- errors and authorization ------------------------------------------------------------

def json_error(status: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json",
                  headers={**NO_STORE, **headers})


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def ops_report(name: str, source: str = "the event log", roles: tuple[str, ...] = ("ops",),
               what: str = "reports") -> Callable[[Handler], Handler]:
    """Only for tokens of `roles`; counts requests; a database outage is a 503, not a stack
    trace."""
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            await _require_role(request, roles, what)
            return await handler(request)
        return counted(name, f"{source} cannot be read right now; try again")(checked)
    return decorate


def counted(name: str, unavailable: str) -> Callable[[Handler], Handler]:
    """Counts the handler's requests by status; a database or Redis outage is a 503 saying
    `unavailable`, not a stack trace."""
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except UNAVAILABLE as exc:
                log.warning("api.unavailable", endpoint=name, error=str(exc))
                status = 503
                raise json_error(web.HTTPServiceUnavailable, unavailable) from exc
            finally:
                metrics.OPS_API_REQUESTS.labels(name, str(status)).inc()
        return guarded
    return decorate


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON body, which must be an object (400 otherwise)."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "expected a JSON object")
    return body


async def _require_role(request: web.Request, roles: tuple[str, ...], what: str) -> None:
    throttle = request.app[AUTH_THROTTLE]
    if await throttle.blocked(request.remote):
        raise json_error(web.HTTPTooManyRequests, "too many failed sign-ins from this address; "
                         f"try again in {throttle.window_s} s",
                         **{"Retry-After": str(throttle.window_s)})
    token = bearer_token(request)
    role = await tokens.role_of(request.app[PG], token) if token else None
    wanted = f"an {' or '.join(roles)} token"
    if role is None:
        if token:  # a wrong token, not a page asking before it has one
            await throttle.failed(request.remote)
        raise json_error(web.HTTPUnauthorized, f"{wanted} is required: send 'Authorization: "
                         "Bearer <token>' (create one with: switchboard tokens add --role "
                         f"{roles[-1]})", **{"WWW-Authenticate": 'Bearer realm="switchboard"'})
    if role not in roles:
        raise json_error(web.HTTPForbidden, f"tokens of role '{role}' cannot read {what}; use "
                         f"{wanted}")


# ---- query parameters ---------------------------------------------------------------------

def _window(request: web.Request) -> Window:
    try:
        return reports.parse_window(request.query.get("from"), request.query.get("to"))
    except BadWindow as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None


def _number(request: web.Request, name: str, default: float, low: float, high: float,
            whole: bool = False) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise json_error(web.HTTPBadRequest, f"'{name}' must be {kind} from {low:g} to "
                         f"{high:g}, not {raw!r}")
    return value


def report_rules(app: web.Application,
                 service_level_s: float = reports.DEFAULT_SERVICE_LEVEL_S) -> ReportRules:
    """The report rules of the rules in force: their catalog's repeat windows and labels."""
    return ReportRules.from_catalog(app[RULES].current.catalog, service_level_s=service_level_s)


def _report_rules(request: web.Request) -> ReportRules:
    level = _number(request, "service_level_s", reports.DEFAULT_SERVICE_LEVEL_S, 1, 86400)
    return report_rules(request.app, level)


def _json(report: dict) -> web.Response:
    return web.json_response(report, headers=NO_STORE)


async def _segmented(request: web.Request, report, answer_later: bool = True,
                     **options) -> dict:
    """The report over the request's window, for a segment, split by one, or whole (or a
    202 while its roll-ups are prepared, if the client prefers and `answer_later`)."""
    window, rules = _window(request), _report_rules(request)
    raw = request.query.get("segment_by")
    if raw is None:
        if "segment" in request.query:
            raise json_error(web.HTTPBadRequest, "'segment' needs 'segment_by' (e.g. "
                             "segment_by=customer.tier&segment=gold)")
        return await report(request.app[PG], window, rules, **options)
    try:
        attribute = reports.parse_segment_by(raw)
    except BadSegment as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None
    if answer_later:
        await _unless_preparing(request, report.__name__, window, rules, attribute,
                                split="segment" not in request.query)
    if "segment" in request.query:
        return await report(request.app[PG], window,
                            rules.with_segment(attribute, request.query["segment"]), **options)
    try:
        return await reports.split(report, request.app[PG], window, rules, attribute,
                                   **options)
    except BadSegment as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None


def prefers_async(request: web.Request) -> bool:
    """The client sent `Prefer: respond-async` (RFC 7240)."""
    return any(preference.split(";")[0].strip().lower() == "respond-async"
               for header in request.headers.getall("Prefer", ())
               for preference in header.split(","))


async def _unless_preparing(request: web.Request, report: str, window: Window,
                            rules: ReportRules, attribute: str, split: bool) -> None:
    """A 202 with the progress, if the client prefers it to waiting while the report's
    roll-ups by the attribute are computed (docs/interfaces.md)."""
    names = rollups.read_by(report, window, split)
    if not names or not prefers_async(request):
        return
    progress = await request.app[PREPARING].progress(rules, names, window, attribute)
    if progress is not None:
        raise web.HTTPAccepted(text=json.dumps(progress.as_dict()),
                               content_type="application/json",
                               headers={**NO_STORE, "Preference-Applied": "respond-async",
                                        "Retry-After": "1"})


# ---- reports ------------------------------------------------------------------------------

@ops_report("summary")
async def summary(request: web.Request) -> web.Response:
    return _json(await _segmented(request, reports.summary))


@ops_report("matrix")
async def matrix(request: web.Request) -> web.Response:
    return _json(await _segmented(request, reports.matrix))


@ops_report("matrix_csv")
async def matrix_download(request: web.Request) -> web.Response:
    """The matrix as CSV, named after its window, to save."""
    report = await _segmented(request, reports.matrix, answer_later=False)  # a download
    name = f"touchpoint-matrix-{report['from'][:10]}-{report['to'][:10]}.csv"
    return web.Response(text=export.matrix_csv(report), content_type="text/csv",
                        headers={**NO_STORE,
                                 "Content-Disposition": f'attachment; filename="{name}"'})


@ops_report("attributes")
async def customer_attributes(request: web.Request) -> web.Response:
    return _json(await reports.attributes(request.app[PG], _window(request)))


@ops_report("candidates")
async def self_service_candidates(request: web.Request) -> web.Response:
    return _json(await _segmented(request, candidates.candidates))


@ops_report("journeys")
async def journeys(request: web.Request) -> web.Response:
    limit = int(_number(request, "limit", 5, 1, 100, whole=True))
    return _json(await _segmented(request, reports.journeys, limit=limit))


@ops_report("trend")
async def trend(request: web.Request) -> web.Response:
    try:
        bucket = reports.choose_bucket(_window(request), request.query.get("bucket"))
    except BadWindow as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None
    return _json(await _segmented(request, reports.trend, bucket=bucket))


@ops_report("unrecognised")
async def unrecognised_traffic(request: web.Request) -> web.Response:
    """Refused, clarified, escalated and corrected messages, in clusters of like ones."""
    window = _window(request)
    limit = int(_number(request, "limit", unrecognised.DEFAULT_LIMIT, 1, 1000, whole=True))
    labels = {t.id: t.label for t in request.app[RULES].current.catalog.types.values()}
    return _json(await unrecognised.unrecognised(request.app[PG], window, labels,
                                                 limit=limit))


# ---- live -------------------------------------------------------------------------------

@ops_report("queues", source="the queues")
async def queues_now(request: web.Request) -> web.Response:
    """The agent queues as they are now (Redis), next to their labels."""
    queues = request.app[RULES].current.tree.queues
    now = time.time()
    status = await request.app[ROUTER].status(queues, now)
    for name, figures in status["queues"].items():
        figures["label"] = queues[name].label
    return _json({"as_of": reports.iso(datetime.fromtimestamp(now, timezone.utc)), **status})


@ops_report("outbox", source="the outbox")
async def outbox_now(request: web.Request) -> web.Response:
    """What waits to go out through the channels now, and what failed for good recently."""
    summary = await request.app[OUTBOX].summary()
    return _json({"as_of": reports.iso(datetime.now(timezone.utc)), **summary})


@ops_report("rules_reload", source="PostgreSQL")
async def rules_reload(request: web.Request) -> web.Response:
    """Reload this instance's rules (all or nothing), recorded under the token's name; 422
    with every problem when the files are invalid, and then nothing changed."""
    name = await tokens.name_of(request.app[PG], bearer_token(request) or "")
    result = await request.app[RULES].reload(LoadCause("api", name or "ops token"))
    load = result.load.as_dict() if result.load else None
    body = {"ok": result.ok, "digest": result.digest, "errors": list(result.errors),
            "version": load and load["version"], "load": load and load["id"]}
    return web.json_response(body, status=200 if result.ok else 422, headers=NO_STORE)
