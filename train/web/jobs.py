"""Long work the studio starts for the user: a retrain (``python -m train.retrain`` in a child
process, so TensorFlow never runs inside the web server) and a publish or rollback (the
:mod:`train.loop.publish` library in a thread, waiting for each device's answer).

One retrain runs at a time. Each job keeps the last lines of its output, its progress (the
epoch Keras last printed), its outcome and, for a retrain, the new run and bundle read from the
run's ``retrain.json``.
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


class JobConflict(RuntimeError):
    """A retrain is already running."""


@dataclass
class Job:
    id: str
    kind: str                           # retrain | publish | rollback
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

    # -- retrain --------------------------------------------------------------------------
    def start_retrain(self, argv: list[str], run_dir: Path, title: str, env: dict | None = None) -> Job:
        """Run ``python -m train.retrain ARGV`` (which writes ``run_dir``); JobConflict if one runs."""
        with self._lock:
            if any(j.kind == "retrain" and j.status == "running" for j in self._jobs.values()):
                raise JobConflict("a retrain is already running; wait for it to finish")
        job = self._new("retrain", title)
        job.result["run_dir"] = str(run_dir)
        job.result["argv"] = argv
        proc = subprocess.Popen([self.python, "-u", "-m", "train.retrain", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        threading.Thread(target=self._follow, args=(job, proc, run_dir), name=f"job-{job.id}", daemon=True).start()
        return job

    def _follow(self, job: Job, proc: subprocess.Popen, run_dir: Path) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            m = _EPOCH.match(line)
            if m:
                job.epoch, job.epochs = int(m.group(1)), int(m.group(2))
            if line:
                job.log.append(line)
        job.returncode = proc.wait()
        report = run_dir / "retrain.json"
        if report.is_file():
            try:
                job.result["report"] = json.loads(report.read_text())
            except json.JSONDecodeError as e:
                job.error = f"{report}: unreadable ({e})"
        job.result["bundle"] = (job.result.get("report") or {}).get("bundle")
        if job.returncode == 0:
            job.status = "succeeded"
        else:
            job.status = "failed"
            try:
                name = ExitCode(job.returncode).name.lower()
            except ValueError:
                name = "killed" if job.returncode < 0 else "error"
            job.error = job.error or f"train.retrain exited {job.returncode} ({name}): " + (
                job.log[-1] if job.log else "no output")
        job.ended = time.time()

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
