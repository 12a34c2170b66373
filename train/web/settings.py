"""What the studio's parts share: how it was started (:class:`StudioSettings`) and the error its
handlers raise for a clear answer (:class:`ApiError`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sdk.mqtt import TlsSettings
from sdk.topics import DEFAULT_PREFIX


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
