"""The device's store of received bundles: one folder each, and ``active.json`` saying which one
runs, what a rollback returns to, the last outcome and the update ids already handled."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
from pathlib import Path

from ..bundle import BundleError, Manifest, load_manifest

logger = logging.getLogger(__name__)

STATE_FILE = "active.json"
STAGING_DIR = ".staging"
SEEN_KEEP = 200             # update ids remembered (duplicates after a redelivery are ignored)


def model_ref(manifest: Manifest, update_id: str | None, dir_name: str | None) -> dict:
    """How ``active.json`` names a model: manifest name, version and sha256, the update that brought
    it and its folder in the store (``None`` for both: the configured model)."""
    return {"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256,
            "update_id": update_id, "dir": dir_name}


def public_ref(ref: dict | None) -> dict | None:
    """What ``model/state`` reports of a model (no local paths)."""
    if ref is None:
        return None
    return {"name": ref["name"], "version": ref["version"], "sha256": ref["sha256"], "update_id": ref.get("update_id")}


def _safe_name(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("._") or "model"
    return out[:64]


_BUNDLE_DIR = re.compile(r"[A-Za-z0-9._-]{1,64}-[0-9a-f]{8,12}")  # ModelStore.install's folder names


def remove_tree(path: Path, what: str) -> bool:
    """Delete the folder ``path`` (``what`` it holds, for the log); True when it is gone. A failure is
    logged with its cause and the path, never reported as done."""
    if not path.exists() and not path.is_symlink():
        return True
    errors: list[str] = []
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda fn, p, e: errors.append(f"{p}: {e}"))
    else:
        shutil.rmtree(path, onerror=lambda fn, p, info: errors.append(f"{p}: {info[1]}"))
    if errors or path.exists():
        logger.error("could not delete %s %s (%s); it stays on disk", what, path, "; ".join(errors[:3]) or "still there")
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path, "a leftover folder")
    else:
        path.unlink(missing_ok=True)


class ModelStore:
    """Received bundles, one folder each under ``root``, and ``active.json``: which one runs
    (``active``), what a rollback returns to (``previous``), the last outcome, and the update
    ids already handled. A ``dir`` of ``None`` means the configured model (``config.model``)."""

    def __init__(self, root: str | Path, keep: int = 3):
        if keep < 2:
            raise ValueError(f"keep must be >= 2 (the active and the previous model); got {keep}")
        self.root = Path(root).expanduser()
        self.keep = keep
        self._lock = threading.Lock()
        self._state_unreadable = False
        self.state = self._read()
        self._clean_up()

    @staticmethod
    def _empty() -> dict:
        return {"format": 1, "base": None, "active": None, "previous": None, "installed": [],
                "last_update": None, "seen": [], "signed_created": None}

    def _read(self) -> dict:
        path = self.root / STATE_FILE
        if not path.is_file():
            return self._empty()
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != 1:
                raise ValueError("unknown format")
            return {**self._empty(), **data}
        except (OSError, ValueError) as e:
            logger.error("%s is unreadable (%s); starting from the configured model", path, e)
            self._state_unreadable = True
            return self._empty()

    def _clean_up(self) -> None:
        """Remove what an interrupted run left behind: staging files, ``.incoming-*`` folders and
        bundle folders that ``active.json`` no longer references (never the active or previous
        one; nothing of the bundles when ``active.json`` could not be read)."""
        if not self.root.is_dir():
            return
        try:
            staging = self.root / STAGING_DIR
            if staging.is_dir() and not staging.is_symlink():
                for p in staging.iterdir():
                    _remove(p)
            keep = set(self.state["installed"]) | {r["dir"] for r in (self.state["active"], self.state["previous"])
                                                   if isinstance(r, dict) and r.get("dir")}
            for p in self.root.iterdir():
                if p.name.startswith(".incoming-"):
                    _remove(p)
                elif (not self._state_unreadable and p.name not in keep and _BUNDLE_DIR.fullmatch(p.name)
                      and p.is_dir() and not p.is_symlink()):
                    logger.info("removing %s: a model folder active.json does not reference", p)
                    _remove(p)
        except Exception as e:  # noqa: BLE001 - a clean-up must never keep the device from starting
            logger.warning("cleaning up the model store %s failed: %s", self.root, e)

    def save(self) -> None:
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{STATE_FILE}.tmp"
            tmp.write_text(json.dumps(self.state, indent=2) + "\n")
            os.replace(tmp, self.root / STATE_FILE)

    @property
    def active(self) -> dict | None:
        return self.state["active"]

    @property
    def previous(self) -> dict | None:
        return self.state["previous"]

    def path_of(self, ref: dict, configured: str | Path | None) -> Path | None:
        """Where ``ref``'s bundle is: its store folder, or the configured model (None: there is none)."""
        if ref.get("dir") is not None:
            return self.root / ref["dir"]
        return Path(configured) if configured is not None else None

    def staging(self) -> Path:
        d = self.root / STAGING_DIR
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- start-up ----------------------------------------------------------------------------
    def startup_model(self, configured: str | Path | None) -> Path | None:
        """The bundle to start with: the one an update installed, unless the configured model
        changed since (then the configured one wins and the stored choice is set aside).
        ``configured`` None (``model: null``): the installed one if the first update came to a
        device without a model (``base`` None), else None (capture mode only).

        ``base`` is the configured model the first update replaced; None when that update found no
        model running (a device bootstrapped in capture mode): then the stored model wins while the
        configuration still says ``model: null``, and a model configured since wins over it."""
        active, base = self.state["active"], self.state["base"]
        if active is None or active.get("dir") is None:
            return Path(configured) if configured is not None else None
        if configured is None:
            if base is not None:  # the configured model was removed since the update: no model then
                logger.warning("model is null but the updated model %s %s replaced the configured %s %s: running "
                               "without a model (capture mode); the updated model is set aside", active["name"],
                               active["version"], base["name"], base["version"])
                self._set_aside()
                return None
        else:
            configured = Path(configured)
            try:
                configured_sha = load_manifest(configured).sha256
            except BundleError:
                configured_sha = None
            # base None: the first update came with no model running, so any model configured since is a change
            if configured_sha is not None and (base is None or configured_sha != base["sha256"]):
                was = "it was null when the first model arrived" if base is None else \
                    f"sha256 {base['sha256'][:12]}... -> {configured_sha[:12]}..."
                logger.warning("the configured model %s changed since the last update (%s): using it; the updated "
                               "model %s %s is set aside", configured, was, active["name"], active["version"])
                self._set_aside()
                return configured
        path = self.root / active["dir"]
        logger.info("using the model installed by update %s: %s %s (%s)", active.get("update_id"), active["name"],
                    active["version"], path)
        return path

    def _set_aside(self) -> None:
        self.state.update(active=None, previous=None, base=None)
        self.save()

    def fall_back(self, reason: str) -> None:
        """The stored active model did not load: run the configured one (or none) from now on."""
        bad = self.state["active"]
        logger.error("the updated model %s %s failed to load (%s); falling back to the configured model (with "
                     "model: null, to capture mode)", bad and bad["name"], bad and bad["version"], reason)
        self.state.update(active=None, previous=None)
        self.save()

    # -- changes -----------------------------------------------------------------------------
    def install(self, extracted: Path, manifest: Manifest, update_id: str) -> str:
        """Move an extracted bundle into the store; returns its folder name."""
        name = f"{_safe_name(manifest.version)}-{update_id[:12]}"
        dest = self.root / name
        if dest.exists():
            shutil.rmtree(dest)
        self.root.mkdir(parents=True, exist_ok=True)
        os.replace(extracted, dest)
        return name

    def activate(self, ref: dict, current: dict | None) -> None:
        """``ref`` is now running; ``current`` (what ran before) becomes the rollback target (None:
        no model ran, the first model of a device in capture mode: nothing to roll back to)."""
        if self.state["base"] is None and current is not None and current.get("dir") is None:
            self.state["base"] = dict(current)
        self.state["previous"], self.state["active"] = current, ref
        if ref.get("dir") and ref["dir"] not in self.state["installed"]:
            self.state["installed"].append(ref["dir"])
        self.prune()

    def swap_back(self) -> None:
        self.state["active"], self.state["previous"] = self.state["previous"], self.state["active"]

    def record(self, update_id: str | None, last_update: dict, remember: bool = True) -> None:
        """Store the last outcome; with ``remember``, also ``update_id`` as handled (duplicates ignored)."""
        self.state["last_update"] = last_update
        if update_id and remember:
            seen = [u for u in self.state["seen"] if u != update_id] + [update_id]
            self.state["seen"] = seen[-SEEN_KEEP:]
        self.save()

    def seen(self, update_id: str) -> bool:
        return update_id in self.state["seen"]

    def prune(self) -> None:
        """Keep at most ``keep`` received bundles; never the active or the previous one. A folder that
        cannot be deleted stays listed (and is tried again at the next prune)."""
        protected = {r["dir"] for r in (self.state["active"], self.state["previous"]) if r and r.get("dir")}
        installed = self.state["installed"]
        excess = len(installed) - self.keep
        for victim in [d for d in installed if d not in protected][:max(0, excess)]:
            if remove_tree(self.root / victim, "the old model"):
                installed.remove(victim)
                logger.info("pruned old model %s", victim)

    def discard(self, dir_name: str) -> None:
        if dir_name not in {r["dir"] for r in (self.state["active"], self.state["previous"]) if r}:
            remove_tree(self.root / dir_name, "the refused model")

