"""The studio's retrain and roll-out routes: ``/retrain`` (the page), ``/api/retrain`` (fine-tune
the base run on the labels), ``/api/train`` (a first model from the labels alone), ``/jobs/<id>``
and ``/api/jobs/<id>`` (progress and outcome), ``/api/publish`` and ``/api/rollback`` (signed updates
to devices or the fleet, each device's answer from ``model/state``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from sdk.topics import is_segment
from train.loop.export import MIN_PER_CLASS, too_few_labels
from train.loop.store import FeedbackStore
from train.web.fleet import FleetMonitor
from train.web.jobs import JobConflict, Jobs
from train.web.settings import ApiError, StudioSettings

#: Models offered for a first model (python -m train.train --list-models has them all).
FIRST_MODELS = {"fast_cnn": "fast_cnn: a plain conv net, 1.2 MB INT8 (colour, 32-96 px)",
                "mobilenet_v2": "mobilenet_v2: width 0.5, 1.0 MB INT8, Edge TPU friendly",
                "resnet_small": "resnet_small: a small residual net",
                "lenet5": "lenet5: small grey inputs (digits)"}
TARGETS = ("rpi", "coral", "jetson", "cpu")


def add_rollout_routes(app: FastAPI, *, settings: StudioSettings, store: FeedbackStore, jobs: Jobs,
                       fleet: FleetMonitor | None, publisher: Callable[..., list] | None,
                       page: Callable[..., HTMLResponse], body: Callable, fleet_snapshot: Callable[[], dict]) -> None:
    """Add the routes to ``app``; ``page``, ``body`` and ``fleet_snapshot`` are the app's own
    (rendering with its CSRF token, reading a JSON body, the fleet now)."""
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
        short = too_few_labels(labels, counts)
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
