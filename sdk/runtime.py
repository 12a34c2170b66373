"""Interpreter factory and bundle loading (pycoral style: returns a stock interpreter).

``make_interpreter(path, delegate=..., num_threads=...)`` picks the delegate (Edge TPU for
``*_edgetpu.tflite`` models), ``load_bundle(dir)`` checks a bundle against its manifest and
returns a :class:`Bundle` holding the manifest, the labels and a ready interpreter.
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _interp
from .bundle import MANIFEST_FILE, BundleError, Manifest, load_manifest, sha256_file
from .errors import ManifestError, ModelError, RuntimeUnavailableError

logger = logging.getLogger(__name__)

DELEGATES = ("auto", "none", "xnnpack", "edgetpu", "gpu")
EDGETPU_LIB = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
GPU_LIB = "libtensorflowlite_gpu_delegate.so"


def resolve_delegate(model_path: str | Path, delegate: str = "auto") -> str:
    """``auto`` means Edge TPU for ``*_edgetpu.tflite`` models and the CPU otherwise."""
    if delegate not in DELEGATES:
        raise ValueError(f"unknown delegate {delegate!r}; valid: {', '.join(DELEGATES)}")
    if delegate == "auto":
        return "edgetpu" if Path(model_path).stem.endswith("_edgetpu") else "none"
    return delegate


def backend_name() -> str:
    """The interpreter package in use: ``ai_edge_litert``, ``tflite_runtime`` or ``tensorflow`` (tf.lite)."""
    return _interp.backend()[0]


def make_interpreter(model_path: str | Path | bytes, delegate: str = "auto", num_threads: int | None = None,
                     device: str | None = None) -> Any:
    """A stock TFLite interpreter with tensors allocated.

    ``model_path`` is a .tflite file or its bytes (a model just converted on the host).
    ``delegate``: auto | none | xnnpack | edgetpu | gpu. ``device`` is the Edge TPU to use
    (``usb``, ``pci``, ``usb:0``...), passed to libedgetpu as in pycoral.
    Raises :class:`ModelError` for a missing/corrupt model, :class:`RuntimeUnavailableError`
    when no interpreter package or the delegate library is available.
    """
    if isinstance(model_path, (bytes, bytearray)):
        source: dict[str, Any] = {"model_content": bytes(model_path)}
        model_path = Path("<model bytes>.tflite")  # for messages; auto picks the CPU
    else:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise ModelError(f"{model_path}: model file not found")
        source = {"model_path": str(model_path)}
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 (got {num_threads})")
    _, interp_cls, load_delegate = _interp.backend()
    which = resolve_delegate(model_path, delegate)
    delegates = []
    if which == "edgetpu":
        lib = EDGETPU_LIB.get(platform.system(), "libedgetpu.so.1")
        try:
            delegates.append(load_delegate(lib, {"device": device} if device else {}))
        except (ValueError, OSError, RuntimeError) as e:
            raise RuntimeUnavailableError(
                f"{model_path.name} is compiled for the Edge TPU but the delegate {lib} could not be "
                f"loaded ({e}). Install libedgetpu1-std from Coral's apt repository and plug in the "
                "accelerator, or run the CPU model of the bundle (delegate: none)."
            ) from e
    elif which == "gpu":
        try:
            delegates.append(load_delegate(GPU_LIB))
        except (ValueError, OSError, RuntimeError) as e:
            raise RuntimeUnavailableError(f"GPU delegate {GPU_LIB} could not be loaded ({e})") from e
    kwargs: dict[str, Any] = {**source, "num_threads": num_threads}
    if delegates:
        kwargs["experimental_delegates"] = delegates
    try:
        interpreter = interp_cls(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"{model_path}: not a loadable TFLite model ({e})") from e
    return interpreter


@dataclass
class Bundle:
    """A loaded model bundle: what the pipeline needs to classify and to report the model."""

    path: Path
    manifest: Manifest
    interpreter: Any
    delegate: str

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels


def _check_against_manifest(interpreter: Any, manifest: Manifest, model_path: Path) -> None:
    """Refuse a model whose tensors do not match what the manifest promises."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{model_path}: expected 1 input and 1 output tensor, got {len(inputs)} and {len(outputs)}")
    problems = []
    for role, det, spec in (("input", inputs[0], manifest.input), ("output", outputs[0], manifest.output)):
        shape = [int(v) for v in det["shape"]]
        if shape != list(spec.shape):
            problems.append(f"{role} shape {shape} != manifest {spec.shape}")
        dtype = det["dtype"].__name__ if hasattr(det["dtype"], "__name__") else str(det["dtype"])
        if dtype != spec.dtype:
            problems.append(f"{role} dtype {dtype} != manifest {spec.dtype}")
        scale, zp = det["quantization"]
        if spec.dtype in ("int8", "uint8"):
            q = spec.quantization
            if q is None:
                problems.append(f"{role} is {spec.dtype} but the manifest has no quantization")
            elif abs(q.scale - scale) > 1e-6 * max(1.0, abs(scale)) or q.zero_point != zp:
                problems.append(f"{role} quantization ({scale}, {zp}) != manifest ({q.scale}, {q.zero_point})")
    n_out = int(outputs[0]["shape"][-1])
    if n_out != len(manifest.labels):
        problems.append(f"output has {n_out} classes but the manifest lists {len(manifest.labels)} labels")
    if problems:
        raise ModelError(f"{model_path}: model does not match its manifest: " + "; ".join(problems))


def load_bundle(bundle_dir: str | Path, delegate: str = "auto", num_threads: int | None = None,
                device: str | None = None, verify: bool = True) -> Bundle:
    """Load a bundle directory (or a bare ``.tflite`` next to a ``manifest.json``).

    With ``delegate`` edgetpu (or auto and a ``edgetpu`` entry in ``extra_files``) the Edge TPU
    model of the bundle is used. Raises :class:`ManifestError` or :class:`ModelError`.
    """
    path = Path(bundle_dir)
    if path.is_file() and path.suffix == ".tflite":
        path = path.parent
    if not path.exists():
        raise ManifestError(f"{path}: model bundle not found")
    if not (path / MANIFEST_FILE).is_file():
        raise ManifestError(
            f"{path}: not a model bundle (no {MANIFEST_FILE}); export one with python -m train.export"
        )
    try:
        manifest = load_manifest(path)
    except BundleError as e:
        raise ManifestError(str(e)) from e
    model_path = path / manifest.model_file
    if delegate == "edgetpu" or (delegate == "auto" and manifest.delegate == "edgetpu"):
        delegate = "edgetpu"
        if "edgetpu" in manifest.extra_files:  # the compiled *_edgetpu.tflite beside the CPU model
            model_path = path / manifest.extra_files["edgetpu"]
    if not model_path.is_file():
        raise ModelError(f"{model_path}: model file named in the manifest is missing")
    if verify and model_path.name == manifest.model_file:
        digest = sha256_file(model_path)
        if digest != manifest.sha256:
            raise ModelError(
                f"{model_path}: sha256 {digest[:12]}... does not match the manifest's {manifest.sha256[:12]}... "
                "(corrupt or replaced model file)"
            )
    interpreter = make_interpreter(model_path, delegate, num_threads or manifest.num_threads, device)
    _check_against_manifest(interpreter, manifest, model_path)
    used = resolve_delegate(model_path, delegate)
    logger.info("loaded %s %s (%s, delegate %s, backend %s)", manifest.name, manifest.version,
                model_path.name, used, backend_name())
    return Bundle(path=path, manifest=manifest, interpreter=interpreter, delegate=used)


__all__ = ["Bundle", "DELEGATES", "backend_name", "load_bundle", "make_interpreter", "resolve_delegate", "RuntimeUnavailableError"]
