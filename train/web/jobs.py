"""Long work the studio starts for the user: a retrain (``python -m train.retrain``) or a first
model (``python -m train.train`` then ``python -m train.export``), each in child processes so
TensorFlow never runs inside the web server, and a publish or rollback (the
:mod:`train.loop.publish` library in a thread, waiting for each device's answer).

One training job (retrain or train) runs at a time. Each job keeps the last lines of its output,
its progress (the epoch Keras last printed), its outcome and the new run and bundle: a retrain's
from the run's ``retrain.json``, a first model's from its run folder and the export's bundle.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdk.errors import ExitCode

_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)")
LOG_LINES = 400
TRAINING = ("retrain", "train")


class JobConflict(RuntimeError):
    """A retrain is already running."""


@dataclass
class Job:
    id: str
    kind: str                           # retrain | train | publish | rollback
    title: str
    status: str = "running"             # running | succeeded | failed
    started: float = field(default_factory=time.time)
    ended: float | None = None
    returncode: int | None = None
    error: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    log: deque = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    result: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "status": self.status,
                "started": self.started, "ended": self.ended, "returncode": self.returncode, "error": self.error,
                "epoch": self.epoch, "epochs": self.epochs, "log": list(self.log)[-60:], "result": self.result}


class Jobs:
    """The studio's jobs, newest first."""

    def __init__(self, python: str = sys.executable):
        self.python = python
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started, reverse=True)

    def running(self, kind: str) -> Job | None:
        return next((j for j in self.all() if j.kind == kind and j.status == "running"), None)

    def _new(self, kind: str, title: str) -> Job:
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, title=title)
        with self._lock:
            self._jobs[job.id] = job
        return job

    # -- training: retrain, or a first model ----------------------------------------------
    def start_retrain(self, argv: list[str], run_dir: Path, title: str, env: dict | None = None) -> Job:
        """Run ``python -m train.retrain ARGV`` (which writes ``run_dir``); JobConflict if a training runs."""
        return self.start_steps("retrain", [("train.retrain", argv)], run_dir, title, env)

    def start_train(self, train_argv: list[str], export_argv: list[str] | None, run_dir: Path, title: str,
                    env: dict | None = None) -> Job:
        """A first model: ``python -m train.train TRAIN_ARGV`` (writing ``run_dir``), then, when
        ``export_argv`` is given, ``python -m train.export EXPORT_ARGV``; JobConflict if a training runs."""
        steps = [("train.train", train_argv)] + ([("train.export", export_argv)] if export_argv is not None else [])
        return self.start_steps("train", steps, run_dir, title, env)

    def start_steps(self, kind: str, steps: list[tuple[str, list[str]]], run_dir: Path, title: str,
                    env: dict | None = None) -> Job:
        with self._lock:  # the check and the new job under one hold: two clicks start one job
            if any(j.kind in TRAINING and j.status == "running" for j in self._jobs.values()):
                raise JobConflict("a training job is already running; wait for it to finish")
            job = Job(id=uuid.uuid4().hex[:12], kind=kind, title=title)
            self._jobs[job.id] = job
        job.result["run_dir"] = str(run_dir)
        job.result["argv"] = steps[0][1]
        threading.Thread(target=self._run_steps, args=(job, steps, run_dir, env), name=f"job-{job.id}",
                         daemon=True).start()
        return job

    def _run_steps(self, job: Job, steps: list[tuple[str, list[str]]], run_dir: Path, env: dict | None) -> None:
        try:
            self._steps(job, steps, run_dir, env)
        except Exception as e:  # shown on the job's page; never a job left 'running'
            job.error = job.error or f"{type(e).__name__}: {e}"
            job.returncode = job.returncode if job.returncode not in (None, 0) else ExitCode.INTERNAL
        finally:
            job.status = "succeeded" if job.returncode == 0 and job.error is None else "failed"
            job.ended = time.time()

    def _steps(self, job: Job, steps: list[tuple[str, list[str]]], run_dir: Path, env: dict | None) -> None:
        for module, argv in steps:
            job.log.append(f"$ python -m {module} {' '.join(argv)}")
            proc = subprocess.Popen([self.python, "-u", "-m", module, *argv], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, errors="replace")
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                m = _EPOCH.match(line)
                if m:
                    job.epoch, job.epochs = int(m.group(1)), int(m.group(2))
                if line:
                    job.log.append(line)
            job.returncode = proc.wait()
            if job.returncode != 0:
                try:
                    name = ExitCode(job.returncode).name.lower()
                except ValueError:
                    name = "killed" if job.returncode < 0 else "error"
                job.error = f"{module} exited {job.returncode} ({name}): " + (job.log[-1] if job.log else "no output")
                break
        self._read_result(job, run_dir, steps)

    @staticmethod
    def _read_result(job: Job, run_dir: Path, steps: list[tuple[str, list[str]]]) -> None:
        name = "retrain.json" if job.kind == "retrain" else "metrics.json"
        report = run_dir / name
        if report.is_file():
            try:
                job.result["report"] = json.loads(report.read_text())
            except json.JSONDecodeError as e:
                job.error = job.error or f"{report}: unreadable ({e})"
        if job.kind == "retrain":
            job.result["bundle"] = (job.result.get("report") or {}).get("bundle")
        elif job.returncode == 0 and len(steps) > 1:
            argv = steps[1][1]
            bundle = Path(argv[argv.index("--out") + 1])
            job.result["bundle"] = str(bundle) if (bundle / "manifest.json").is_file() else None

    # -- publish / rollback ---------------------------------------------------------------
    def start_call(self, kind: str, title: str, call: Callable[[], list]) -> Job:
        """Run ``call`` (a publish or rollback returning DeviceOutcomes) in a thread."""
        job = self._new(kind, title)

        def run() -> None:
            try:
                outcomes = call()
                job.result["outcomes"] = [{"device": o.device, "outcome": o.outcome, "reason": o.reason,
                                           "version": o.version, "line": o.line()} for o in outcomes]
                job.status = "succeeded" if all(o.ok for o in outcomes) else "failed"
                if job.status == "failed":
                    job.error = "; ".join(o.line() for o in outcomes if not o.ok)
            except Exception as e:  # shown on the page; the studio keeps running
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"
            job.ended = time.time()
            for o in job.result.get("outcomes", []):
                job.log.append(o["line"])

        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()
        return job
