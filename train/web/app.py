"""The studio's web application (FastAPI, server-rendered Jinja2 pages, a small script of our own).

Pages: ``/fleet`` (live, from :class:`~train.web.fleet.FleetMonitor`), ``/samples`` (the feedback
store as a gallery, labelled with the keyboard), ``/retrain`` (start ``train.retrain``, then
publish or roll back), ``/jobs/<id>`` (a job's progress and outcome) and ``/runs/<name>/...``
(a run's ``report.html`` and figures). The JSON API under ``/api`` is what the pages' script
calls; every POST is checked by :class:`~train.web.security.Guard`. Nothing here writes the
store except through :class:`~train.loop.store.FeedbackStore` (one transaction per action).
"""
from __future__ import annotations

import asyncio
import html
import json
import logging
import mimetypes
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from train.loop.images import encode_png
from train.loop.samples import FeedbackError, Sample
from train.loop.store import ORDERS, STATUSES, FeedbackStore
from train.web.fleet import FleetMonitor
from train.web.jobs import Jobs
from train.web.rollout import add_rollout_routes
from train.web.security import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, Guard
from train.web.settings import ApiError, StudioSettings

__all__ = ["ApiError", "StudioSettings", "create_app"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 60
REASONS = {"low_confidence": "confidence", "small_margin": "margin", "high_entropy": "entropy",
           "random_audit": "audit", "capture": "capture"}


def create_app(settings: StudioSettings, guard: Guard, *, store: FeedbackStore | None = None,
               fleet: FleetMonitor | None = None, jobs: Jobs | None = None,
               publisher: Callable[..., list] | None = None) -> FastAPI:
    """The studio app. ``store``/``fleet``/``jobs`` default to ones built from ``settings``; the
    fleet monitor is started with the app and stopped with it. ``publisher``: ``(kind, **kw)``
    -> outcomes, default :mod:`train.loop.publish`."""
    store = store or FeedbackStore(settings.store)
    jobs = jobs or Jobs()
    if fleet is None and settings.broker is not None:
        fleet = FleetMonitor(*settings.broker, prefix=settings.prefix, tls=settings.tls,
                             username=settings.username, password=settings.password)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["pct"] = lambda v: "-" if v is None else f"{v * 100:.2f}%"
    templates.env.filters["ago"] = _ago

    async def lifespan(app: FastAPI):
        if fleet is not None:
            fleet.start()
        yield
        if fleet is not None:
            fleet.stop()

    app = FastAPI(title="edgeclf studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings, app.state.store, app.state.fleet, app.state.jobs = settings, store, fleet, jobs
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- security and errors ----------------------------------------------------------------
    @app.middleware("http")
    async def secure(request: Request, call_next):
        host = request.headers.get("host")
        if not guard.host_allowed(host):
            return Response(f"host {host!r} is not served by this studio (bound to {guard.host})", 400,
                            media_type="text/plain")
        path = request.url.path
        public = path == "/login" or path.startswith("/static/")
        if not public and not guard.signed_in(request.cookies.get(SESSION_COOKIE), request.headers.get("authorization")):
            if path.startswith("/api/"):
                return JSONResponse({"error": "sign in first (or send Authorization: Bearer <password>)"}, 401)
            return RedirectResponse("/login?" + urlencode({"next": path}), 303)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if not guard.origin_ok(request.headers.get("origin"), host):
                return _refuse(path, 403, f"cross-site request refused (Origin {request.headers.get('origin')})")
            # the sign-in form sends its token as a field, checked by the endpoint
            if path != "/login" and not guard.csrf_ok(request.cookies.get(CSRF_COOKIE), request.headers.get(CSRF_HEADER)):
                return _refuse(path, 403, "missing or wrong CSRF token: reload the page and try again")
        response = await call_next(request)
        if CSRF_COOKIE not in request.cookies and request.method == "GET":
            response.set_cookie(CSRF_COOKIE, request.state.csrf if hasattr(request.state, "csrf") else guard.new_csrf(),
                                httponly=False, samesite="strict")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                    "frame-ancestors 'none'; form-action 'self'")
        return response

    def _refuse(path: str, status: int, message: str) -> Response:
        if path.startswith("/api/"):
            return JSONResponse({"error": message}, status)
        return HTMLResponse(f"<!doctype html><title>Refused</title><p>{html.escape(message)}</p>", status)

    def csrf_of(request: Request) -> str:
        token = request.cookies.get(CSRF_COOKIE)
        if not token:
            token = guard.new_csrf()
            request.state.csrf = token
        return token

    def page(request: Request, name: str, code: int = 200, **ctx) -> HTMLResponse:
        ctx.update(csrf=csrf_of(request), nav=name.split(".")[0], needs_login=guard.needs_login,
                   broker=None if settings.broker is None else f"{settings.broker[0]}:{settings.broker[1]}")
        return templates.TemplateResponse(request, name, ctx, status_code=code)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, exc.status)
        return page(request, "error.html", exc.status, message=str(exc), status=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, exc.status_code)
        return page(request, "error.html", exc.status_code, message=message, status=exc.status_code)

    # -- sign-in ----------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/fleet"):
        return page(request, "login.html", next=_safe_next(next), failed=False)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        nxt = _safe_next(str(form.get("next") or "/fleet"))
        if not guard.csrf_ok(request.cookies.get(CSRF_COOKIE), str(form.get("csrf") or "")):
            return page(request, "login.html", 403, next=nxt, failed=False,
                        message="missing or wrong CSRF token: reload the page and try again")
        if not guard.check_password(str(form.get("password") or "")):
            return page(request, "login.html", 401, next=nxt, failed=True)
        response = RedirectResponse(nxt, 303)
        response.set_cookie(SESSION_COOKIE, guard.new_session(), httponly=True, samesite="strict")
        return response

    @app.post("/api/logout")
    async def logout(request: Request):
        guard.end_session(request.cookies.get(SESSION_COOKIE))
        response = JSONResponse({"ok": True})
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- fleet ------------------------------------------------------------------------------
    @app.get("/")
    async def home():
        return RedirectResponse("/fleet", 303)

    def fleet_snapshot() -> dict[str, Any]:
        if fleet is None:
            return {"version": 0, "connected": False, "broker": None, "devices": [],
                    "error": "no broker: start the studio with --broker HOST:PORT to see the fleet"}
        return fleet.snapshot()

    @app.get("/fleet", response_class=HTMLResponse)
    async def fleet_page(request: Request):
        return page(request, "fleet.html", fleet=fleet_snapshot(), counts=store.counts())

    @app.get("/api/fleet")
    async def fleet_api():
        return fleet_snapshot()

    @app.get("/api/fleet/events")
    async def fleet_events(request: Request):
        async def stream():
            seen, last_beat = -1, time.monotonic()
            while not await request.is_disconnected():
                snap = fleet_snapshot()
                # 'seen_s_ago' and 'stale' move with the clock: resend every 2 s even without a message
                if snap["version"] != seen or time.monotonic() - last_beat > 2:
                    seen, last_beat = snap["version"], time.monotonic()
                    yield f"data: {json.dumps(snap)}\n\n"
                await asyncio.sleep(0.25)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- samples ----------------------------------------------------------------------------
    def filters(request: Request) -> dict[str, Any]:
        q = request.query_params
        status = q.get("status", "pending")
        f = {"status": None if status == "all" else status, "device": q.get("device") or None,
             "model_version": q.get("model_version") or None, "reason": q.get("reason") or None,
             "predicted": q.get("predicted") or None, "order": q.get("order", "newest")}
        if f["status"] is not None and f["status"] not in STATUSES:
            raise ApiError(400, f"unknown status {status!r}; valid: all, {', '.join(STATUSES)}")
        if f["order"] not in ORDERS:
            raise ApiError(400, f"unknown order {f['order']!r}; valid: {', '.join(ORDERS)}")
        if f["reason"] is not None and f["reason"] not in REASONS:
            raise ApiError(400, f"unknown reason {f['reason']!r}; valid: {', '.join(REASONS)}")
        try:
            f["page"] = max(1, int(q.get("page", "1")))
        except ValueError:
            raise ApiError(400, f"page must be a whole number, got {q.get('page')!r}") from None
        return f

    def sample_json(s: Sample) -> dict[str, Any]:
        return {"id": s.id, "device": s.device, "region": s.region, "model_version": s.model_version,
                "model_name": s.model_name, "reasons": s.reasons, "top_k": s.top_k, "predicted": s.predicted,
                "score": s.score, "status": s.status, "label": s.label, "ts": s.ts,
                # what to label: the model input; for a region sample without one (capture mode without
                # a model), the region cropped from the frame
                "input": f"/samples/{s.id}/input" if s.input_path is not None else (
                    f"/samples/{s.id}/region" if s.region_box is not None else None),
                "frame": f"/samples/{s.id}/frame"}

    def query(f: dict[str, Any]) -> tuple[list[Sample], int]:
        args = {k: v for k, v in f.items() if k != "page"}
        return store.query(**args, limit=PAGE_SIZE, offset=(f["page"] - 1) * PAGE_SIZE)

    @app.get("/samples", response_class=HTMLResponse)
    async def samples_page(request: Request):
        f = filters(request)
        samples, total = query(f)
        labels = store.labels()
        keys = _label_keys(labels)
        shown = {k: ("all" if k == "status" and v is None else v) for k, v in f.items() if k != "page"}
        return page(request, "samples.html", samples=[sample_json(s) for s in samples], total=total,
                    filters=shown, facets=store.facets(), labels=labels, keys=keys, labels_given=store.labels_given,
                    reasons=REASONS, orders=list(ORDERS), statuses=["all", *STATUSES], counts=store.counts(),
                    page_no=f["page"], pages=max(1, -(-total // PAGE_SIZE)),
                    query=lambda **kw: "?" + urlencode({k: v for k, v in {**shown, **kw}.items() if v}))

    @app.get("/api/samples")
    async def samples_api(request: Request):
        f = filters(request)
        samples, total = query(f)
        return {"total": total, "page": f["page"], "samples": [sample_json(s) for s in samples],
                "labels": store.labels(), "counts": store.counts()}

    def sample(sample_id: int) -> Sample:
        try:
            return store.get(sample_id)
        except FeedbackError as e:
            raise ApiError(404, str(e)) from e

    @app.get("/samples/{sample_id}/input")
    async def sample_input(sample_id: int):
        s = sample(sample_id)
        if s.input_path is None:
            raise ApiError(404, f"sample {sample_id}: the device sent no model input")
        return _file(s.input_path)

    @app.get("/samples/{sample_id}/region")
    async def sample_region(sample_id: int):
        s = sample(sample_id)
        if s.region_box is None:
            raise ApiError(404, f"sample {sample_id}: not a region sample")
        try:
            png = await run_in_threadpool(lambda: encode_png(s.region_image()))
        except FeedbackError as e:
            raise ApiError(404, f"sample {sample_id}: {e}") from e
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/samples/{sample_id}/frame")
    async def sample_frame(sample_id: int):
        return _file(sample(sample_id).image_path)

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the request body must be JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    async def store_call(fn: Callable, *args) -> Any:
        """A store call in the thread pool (a write may wait on another writer's lock), its
        FeedbackError as 404 (no such sample) or 400."""
        try:
            return await run_in_threadpool(fn, *args)
        except FeedbackError as e:
            raise ApiError(404 if "no sample with id" in str(e) else 400, str(e)) from e

    def state(s: Sample) -> dict[str, Any]:
        return {"id": s.id, "status": s.status, "label": s.label}

    @app.post("/api/samples/{sample_id}/label")
    async def label_sample(sample_id: int, request: Request):
        data = await body(request)
        label = data.get("label")
        if not isinstance(label, str):
            raise ApiError(400, f"'label' must be one of {', '.join(store.labels())}")
        before = state(sample(sample_id))
        await store_call(store.set_label, sample_id, label, settings.labeller)
        return {"before": before, "after": state(store.get(sample_id)), "counts": store.counts()}

    @app.post("/api/samples/{sample_id}/skip")
    async def skip_sample(sample_id: int):
        before = state(sample(sample_id))
        await store_call(store.skip, sample_id, settings.labeller)
        return {"before": before, "after": state(store.get(sample_id)), "counts": store.counts()}

    @app.post("/api/samples/{sample_id}/restore")
    async def restore_sample(sample_id: int, request: Request):
        data = await body(request)
        sample(sample_id)
        await store_call(store.restore, sample_id, str(data.get("status")), data.get("label"), settings.labeller)
        return {"after": state(store.get(sample_id)), "counts": store.counts()}

    @app.post("/api/samples/bulk")
    async def bulk_label(request: Request):
        data = await body(request)
        ids, label = data.get("ids"), data.get("label")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ApiError(400, "'ids' must be a non-empty list of sample ids")
        if not isinstance(label, str):
            raise ApiError(400, f"'label' must be one of {', '.join(store.labels())}")
        before = [state(await store_call(store.get, i)) for i in ids]
        n = await store_call(store.set_labels, ids, label, settings.labeller)
        return {"labelled": n, "before": before, "counts": store.counts()}

    @app.get("/api/samples/{sample_id}/similar")
    async def similar(sample_id: int, distance: int = 10):
        if not 0 <= distance <= 64:
            raise ApiError(400, f"distance must be 0..64 bits, got {distance}")
        return {"ids": await store_call(store.similar, sample_id, distance)}

    @app.post("/api/labels")
    async def define_labels(request: Request):
        """Define the classes of a store that has none (a dataset started from capture mode), or add
        classes at the end; the order of those a model may already use never changes."""
        data = await body(request)
        labels = data.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ApiError(400, "'labels': a non-empty list of class names")
        labels = [x.strip() for x in labels]
        bad = [x for x in labels if not x or x.startswith(".") or any(c in x for c in "/\\\0")]
        if bad:
            raise ApiError(400, f"class name {bad[0]!r} cannot be used (empty, a leading '.', or a '/' or '\\')")
        if len(set(labels)) != len(labels):
            raise ApiError(400, f"class names must be distinct, got {', '.join(labels)}")
        current = store.labels()
        if labels[:len(current)] != current:
            raise ApiError(409, f"the classes are {', '.join(current)} in this order (a model's outputs); "
                                "new classes can only be added after them")
        await store_call(store.set_label_names, labels)
        return {"labels": store.labels(), "keys": _label_keys(store.labels())}

    add_rollout_routes(app, settings=settings, store=store, jobs=jobs, fleet=fleet, publisher=publisher, page=page,
                       body=body, fleet_snapshot=fleet_snapshot)

    # -- reports ----------------------------------------------------------------------------
    def find_run(name: str) -> Path | None:
        for root in settings.run_dirs:
            d = (root / name).resolve()
            if d.parent == root and (d / "run.json").is_file():
                return d
        return None

    @app.get("/runs", response_class=HTMLResponse)
    async def runs_page(request: Request):
        runs, seen = [], set()
        for root in settings.run_dirs:
            if not root.is_dir():
                continue
            for d in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
                if d.is_dir() and (d / "run.json").is_file() and d.name not in seen:
                    seen.add(d.name)
                    retrain = d / "retrain.json"
                    runs.append({"name": d.name, "report": (d / "report.html").is_file(),
                                 "retrain": json.loads(retrain.read_text()) if retrain.is_file() else None})
        return page(request, "runs.html", runs=runs, roots=settings.run_dirs)

    @app.get("/runs/{name}/{path:path}")
    async def run_file(name: str, path: str):
        run = find_run(name)
        target = (run / (path or "report.html")).resolve() if run is not None else None
        if target is None or not target.is_relative_to(run) or not target.is_file():
            where = ", ".join(map(str, settings.run_dirs)) or "no runs folder (start with --base RUN or --runs-dir DIR)"
            raise ApiError(404, f"{name}/{path}: no such file of a run in {where}")
        response = _file(target)
        # report.html is self-contained (inline styles, data: images) and runs no script
        response.headers["Content-Security-Policy"] = ("default-src 'none'; img-src 'self' data:; "
                                                       "style-src 'unsafe-inline'; frame-ancestors 'none'")
        return response

    return app


RESERVED_KEYS = frozenset("xus")  # discard, undo, select near-duplicates


def _label_keys(labels: list[str]) -> dict[str, str]:
    """The keys that label: each label's index digit (0-9) for up to ten labels, and each label's
    first letter when the first letters are unique letters and none is a command key (x, u, s).
    Labels left without a key are labelled from their buttons."""
    keys = {str(i): label for i, label in enumerate(labels)} if len(labels) <= 10 else {}
    firsts = [label[:1].lower() for label in labels]
    if (len(set(firsts)) == len(firsts) and all(f.isalpha() for f in firsts)
            and not RESERVED_KEYS & set(firsts)):
        keys.update(zip(firsts, labels))
    return keys


def _safe_next(path: str) -> str:
    """Only a local path after sign-in (no open redirect to another site)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/fleet"


def _file(path: Path) -> FileResponse:
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"
