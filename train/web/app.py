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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sdk.mqtt import TlsSettings
from sdk.topics import DEFAULT_PREFIX, is_segment
from train.loop.samples import FeedbackError, Sample
from train.loop.store import ORDERS, STATUSES, FeedbackStore
from train.web.fleet import FleetMonitor
from train.web.jobs import JobConflict, Jobs
from train.web.security import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, Guard

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 60
REASONS = {"low_confidence": "confidence", "small_margin": "margin", "high_entropy": "entropy",
           "random_audit": "audit", "capture": "capture"}
#: Models offered for a first model (python -m train.train --list-models has them all).
FIRST_MODELS = {"fast_cnn": "fast_cnn: a plain conv net, 1.2 MB INT8 (colour, 32-96 px)",
                "mobilenet_v2": "mobilenet_v2: width 0.5, 1.0 MB INT8, Edge TPU friendly",
                "resnet_small": "resnet_small: a small residual net",
                "lenet5": "lenet5: small grey inputs (digits)"}
TARGETS = ("rpi", "coral", "jetson", "cpu")
MIN_PER_CLASS = 2


class ApiError(Exception):
    """An error answered as ``{"error": message}`` (API) or an error page, with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class StudioSettings:
    """What ``python -m train.studio`` was started with."""

    store: Path
    broker: tuple[str, int] | None = None
    prefix: str = DEFAULT_PREFIX
    tls: TlsSettings | None = None
    username: str | None = None
    password: str | None = None
    base_run: Path | None = None
    bundle: Path | None = None
    device_config: Path | None = None
    runs_dir: Path | None = None
    sign_key: Path | None = None
    labeller: str = "studio"
    retrain_args: list[str] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        """Where the studio's training jobs write runs: ``runs_dir``, else beside the base run, else
        ``runs/`` beside the store."""
        if self.runs_dir is not None:
            return self.runs_dir
        return self.base_run.parent if self.base_run is not None else self.store.resolve().parent / "runs"

    @property
    def run_dirs(self) -> list[Path]:
        """Where runs (and their report.html) live: ``out_dir`` and the base run's folder."""
        dirs = [d for d in (self.out_dir, self.base_run.parent if self.base_run is not None else None) if d is not None]
        return list(dict.fromkeys(d.resolve() for d in dirs))


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
            png = await run_in_threadpool(lambda: _png(s.region_image()))
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

    # -- retrain, publish, rollback -----------------------------------------------------------
    @app.get("/retrain", response_class=HTMLResponse)
    async def retrain_page(request: Request):
        return page(request, "retrain.html", counts=store.counts(), settings=settings, jobs=jobs.all(),
                    labels=store.labels(), first_models=FIRST_MODELS, targets=TARGETS, min_per_class=MIN_PER_CLASS,
                    devices=fleet.device_ids() if fleet is not None else [], fleet=fleet_snapshot(),
                    problems=_retrain_problems(settings), publish_problems=_publish_problems(settings))

    @app.post("/api/retrain")
    async def start_retrain(request: Request):
        data = await body(request)
        problems = _retrain_problems(settings)
        if problems:
            raise ApiError(409, "; ".join(problems))
        counts = store.counts()
        if counts["labelled"] < 2:
            raise ApiError(409, f"{counts['labelled']} labelled sample(s) in {settings.store}: label some first")
        epochs = data.get("epochs", 5)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= 200:
            raise ApiError(400, f"'epochs' must be a whole number 1..200, got {epochs!r}")
        name = f"{settings.base_run.name}-studio-{time.strftime('%Y%m%d-%H%M%S')}"
        out = settings.out_dir
        argv = ["--base", str(settings.base_run), "--feedback", str(settings.store), "--out", str(out),
                "--name", name, "--epochs", str(epochs), *settings.retrain_args]
        argv += ["--bundle", str(settings.bundle)] if settings.bundle is not None else ["--no-export"]
        if settings.device_config is not None:
            argv += ["--device-config", str(settings.device_config)]
        try:
            job = jobs.start_retrain(argv, out / name, f"retrain {settings.base_run.name} on {counts['labelled']} labels")
        except JobConflict as e:
            raise ApiError(409, str(e)) from e
        return {"job": job.as_json(), "url": f"/jobs/{job.id}"}

    @app.post("/api/train")
    async def start_train(request: Request):
        """A first model from the store's labels: train.train on a snapshot, then train.export."""
        data = await body(request)
        model, target = data.get("model", "fast_cnn"), data.get("target", "rpi")
        if model not in FIRST_MODELS:
            raise ApiError(400, f"unknown model {model!r}; valid: {', '.join(FIRST_MODELS)}")
        if target not in TARGETS:
            raise ApiError(400, f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
        epochs = data.get("epochs", 20)
        if not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= 500:
            raise ApiError(400, f"'epochs' must be a whole number 1..500, got {epochs!r}")
        size = data.get("image_size", [32, 32])
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 512 for v in size)):
            raise ApiError(400, f"'image_size': [height, width], each 8..512 pixels, got {size!r}")
        labels, counts = store.labels(), store.counts()["labels"]
        if not labels:
            raise ApiError(409, "define the classes first (on the samples page), then label some samples")
        short = [f"{c} ({counts.get(c, 0)})" for c in labels if counts.get(c, 0) < MIN_PER_CLASS]
        if short:
            raise ApiError(409, f"every class needs at least {MIN_PER_CLASS} labelled samples; too few: {', '.join(short)}")
        name = f"{model}-studio-{time.strftime('%Y%m%d-%H%M%S')}"
        out = settings.out_dir
        train_argv = ["--data", str(settings.store), "--model", model, "--epochs", str(epochs),
                      "--image-size", str(size[0]), str(size[1]), "--runs-dir", str(out), "--run-name", name,
                      "--no-tensorboard"]
        if min(counts.get(c, 0) for c in labels) >= 10:  # enough for a test split: accuracy on images never trained on
            train_argv += ["--test-fraction", "0.2"]
        if data.get("augment", True):
            train_argv.append("--augment")
        export_argv = ["--target", target, "--run", str(out / name), "--out", str(out / name / "bundles" / target)]
        try:
            job = jobs.start_train(train_argv, export_argv, out / name,
                                   f"first model: {model} on {sum(counts.values())} labels, for {target}")
        except JobConflict as e:
            raise ApiError(409, str(e)) from e
        return {"job": job.as_json(), "url": f"/jobs/{job.id}"}

    def job_or_404(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} in this studio (jobs are kept while it runs)")
        return job

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, job_id: str):
        return page(request, "job.html", job=job_or_404(job_id).as_json(),
                    devices=fleet.device_ids() if fleet is not None else [],
                    publish_problems=_publish_problems(settings))

    @app.get("/api/jobs/{job_id}")
    async def job_api(job_id: str):
        return job_or_404(job_id).as_json()

    def targets(data: dict[str, Any]) -> tuple[list[str] | None, bool]:
        devices, to_fleet = data.get("devices"), bool(data.get("fleet"))
        if to_fleet:
            return None, True
        if not isinstance(devices, list) or not devices or not all(is_segment(d) for d in devices):
            raise ApiError(400, "say where it goes: 'devices' (a list of device ids) or 'fleet': true")
        return devices, False

    def publish_kwargs(data: dict[str, Any]) -> dict[str, Any]:
        wait_s = data.get("wait_s", 60)
        if not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool) or not 1 <= wait_s <= 600:
            raise ApiError(400, f"'wait_s' must be 1..600 seconds, got {wait_s!r}")
        return {"prefix": settings.prefix, "sign_key": settings.sign_key, "wait_s": float(wait_s),
                "tls": settings.tls, "username": settings.username, "password": settings.password}

    def start_update(kind: str, data: dict[str, Any], bundle: str | None, what: str) -> dict[str, Any]:
        """A publish (``bundle``) or rollback job to ``data``'s devices or the fleet."""
        devices, to_fleet = targets(data)
        kwargs = publish_kwargs(data)
        broker = f"{settings.broker[0]}:{settings.broker[1]}"
        where = "the fleet" if to_fleet else ", ".join(devices)
        extra = {"bundle_dir": bundle} if bundle is not None else {}
        job = jobs.start_call(kind, f"{what} {where}",
                              lambda: _publisher(publisher)(kind, broker=broker, devices=devices, fleet=to_fleet,
                                                            **extra, **kwargs))
        return {"job": job.as_json(), "url": f"/jobs/{job.id}"}

    def check_publish() -> None:
        problems = _publish_problems(settings)
        if problems:
            raise ApiError(409, "; ".join(problems))

    @app.post("/api/publish")
    async def publish(request: Request):
        data = await body(request)
        check_publish()
        if not data.get("job"):
            raise ApiError(400, "'job': the id of a finished retrain whose bundle to publish")
        job = job_or_404(str(data["job"]))
        bundle = job.result.get("bundle")
        if job.status != "succeeded" or not bundle:
            raise ApiError(409, f"job {job.id} has no bundle to publish ({job.status})")
        return start_update("publish", data, bundle, f"publish {Path(bundle).name} to")

    @app.post("/api/rollback")
    async def rollback(request: Request):
        data = await body(request)
        check_publish()
        return start_update("rollback", data, None, "roll back")

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


def _publisher(publisher: Callable[..., list] | None) -> Callable[..., list]:
    if publisher is not None:
        return publisher
    from train.loop import publish as lib

    def call(kind: str, **kw):
        if kind == "publish":
            return lib.publish_bundle(kw.pop("bundle_dir"), kw.pop("broker"), **kw)
        return lib.rollback(kw.pop("broker"), **kw)
    return call


def _retrain_problems(settings: StudioSettings) -> list[str]:
    if settings.base_run is None:
        return ["start the studio with --base RUN (the training run the devices' model came from) to retrain"]
    return [] if settings.base_run.is_dir() else [f"--base {settings.base_run}: no such run folder"]


def _publish_problems(settings: StudioSettings) -> list[str]:
    out = []
    if settings.broker is None:
        out.append("start the studio with --broker HOST:PORT to publish")
    if settings.sign_key is None:
        out.append("start the studio with --sign-key KEY (python -m train.publish keygen) to publish: "
                   "devices apply only signed updates")
    return out


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


def _png(img) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise FeedbackError(f"cannot encode a {getattr(img, 'shape', '?')} image as PNG")
    return buf.tobytes()


def _file(path: Path) -> FileResponse:
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600"})


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"
