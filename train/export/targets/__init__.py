"""Export targets: one small declarative :class:`TargetSpec` per device, in its own module.

``@register_target`` adds a spec (a name can be registered once), ``get_target(name)`` looks one
up and refuses an unknown name with the valid ones and a close-match suggestion,
``list_targets("c*")`` discovers them. The table of what each target emits and accepts is
``describe_targets()``; ``python -m train.export --list-targets`` prints it.

The target modules are imported explicitly at the bottom of this file: a broken target is an
import error, never a silently missing entry.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Literal

Quantization = Literal["full_int8", "float16", "float32", "dynamic_range"]
Delegate = Literal["none", "xnnpack", "edgetpu", "gpu"]

#: Options every target accepts (names as in ``export_bundle`` and the CLI, with ``_`` for ``-``).
COMMON_OPTIONS = ("sparsity", "clustering", "threads", "max_accuracy_drop")
#: Options that only make sense for a full-integer model.
INT8_OPTIONS = ("calibration_samples", "qat", "io_dtype")


@dataclass(frozen=True)
class Artefact:
    """One model file a target emits."""

    role: str  # "model" = the bundle's model.tflite; otherwise its key in manifest.extra_files
    filename: str
    quantization: Quantization
    description: str


@dataclass(frozen=True)
class TargetSpec:
    """What one export target emits and what it accepts.

    The first artefact is the bundle's ``model.tflite``; the others are written next to it and
    listed in the manifest's ``extra_files``.
    """

    name: str
    description: str
    artefacts: tuple[Artefact, ...]
    delegate: Delegate = "none"
    io_dtypes: tuple[str, ...] = ("float32",)  # accepted --io-dtype values, the default first
    static_batch: bool = False  # freeze the batch dimension to 1
    records_threads: bool = False  # write --threads into the manifest (CPU interpreters)
    compiler: str | None = None  # executable run on the model when it is on PATH
    preflight: Literal["edgetpu"] | None = None  # our own compatibility report
    gpu_check: bool = False  # tf.lite Analyzer with gpu_compatibility=True
    onnx: bool = False  # also emit ONNX (tf2onnx), checked with onnxruntime
    notes: str = ""
    accepts: tuple[str, ...] = field(default=COMMON_OPTIONS)

    def __post_init__(self) -> None:
        if not self.artefacts or self.artefacts[0].role != "model":
            raise ValueError(f"target {self.name!r}: the first artefact must have role 'model'")
        if not self.io_dtypes:
            raise ValueError(f"target {self.name!r}: io_dtypes must name at least one dtype")

    @property
    def primary(self) -> Artefact:
        return self.artefacts[0]

    @property
    def full_int8(self) -> bool:
        return any(a.quantization == "full_int8" for a in self.artefacts)

    def emits(self) -> list[str]:
        out = [f"{a.filename} ({a.quantization})" for a in self.artefacts]
        if self.onnx:
            out.append("model.onnx")
        if self.compiler:
            out.append(f"{self.primary.filename.removesuffix('.tflite')}_edgetpu.tflite (when {self.compiler} is on PATH)")
        return out


class UnknownTargetError(ValueError):
    """``--target`` names no registered target."""


_REGISTRY: dict[str, TargetSpec] = {}


def register_target(fn: Callable[[], TargetSpec]) -> Callable[[], TargetSpec]:
    """Decorator: register the :class:`TargetSpec` that ``fn()`` returns under its name.

    A duplicate name raises ``ValueError``.
    """
    spec = fn()
    if not isinstance(spec, TargetSpec):
        raise TypeError(f"{fn.__qualname__} must return a TargetSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY:
        raise ValueError(f"export target {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return fn


def list_targets(pattern: str = "*") -> list[str]:
    """Registered target names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def describe_targets() -> str:
    """A table of targets: what each emits and which options it accepts."""
    lines = []
    for name in list_targets():
        t = _REGISTRY[name]
        lines.append(f"  {name:<7} {t.description}")
        lines.append(f"          emits:   {', '.join(t.emits())}")
        opts = [f"--{o.replace('_', '-')}" + (f" {'|'.join(t.io_dtypes)}" if o == "io_dtype" else "") for o in t.accepts]
        lines.append(f"          accepts: {', '.join(opts)}")
    return "\n".join(lines)


def get_target(name: str) -> TargetSpec:
    """The spec registered under ``name``; ``UnknownTargetError`` lists the valid ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), list_targets(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownTargetError(
        f"unknown export target {name!r}.{hint} Valid targets:\n{describe_targets()}"
    )


# Explicit imports: each module registers its target.
from train.export.targets import coral, cpu, jetson, rpi  # noqa: E402,F401

__all__ = [
    "Artefact",
    "TargetSpec",
    "UnknownTargetError",
    "describe_targets",
    "get_target",
    "list_targets",
    "register_target",
]
