"""Export targets: one small declarative :class:`TargetSpec` per device, in its own module.

``@register_target`` adds a spec (a name can be registered once), ``get_target(name)`` looks one
up and refuses an unknown name with the valid ones and a close-match suggestion,
``list_targets("c*")`` discovers them. The table of what each target emits and accepts is
``describe_targets()``; ``python -m train.export --list-targets`` prints it.

What a target adds beyond its .tflite files (a checked ONNX model, a compiled Edge TPU model, a
compatibility report) it declares as :class:`ArtefactBuilder` entries of ``TargetSpec.builders``,
written in its own module; the export calls each in turn with a :class:`BuildContext` and merges
the :class:`Built` it returns into the bundle. The export itself knows no target by name.

The target modules are imported explicitly at the bottom of this file: a broken target is an
import error, never a silently missing entry.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from train.export.conversion import Quantization
from train.export.errors import UnknownTargetError
from train.export.measure import Reference

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
class BuildContext:
    """What an :class:`ArtefactBuilder` is handed: the bundle so far and the models it came from."""

    spec: TargetSpec
    bundle: Path  # the bundle directory; the .tflite artefacts are written there already
    model: Any  # the optimised tf_keras model the artefacts were converted from
    primary: bytes  # the bundle's model.tflite, as written
    reference: Reference  # the float model's figures, to judge another artefact by


@dataclass
class Built:
    """What one builder added to the bundle."""

    report: dict[str, Any] = field(default_factory=dict)  # sections of export_report.json
    extra_files: dict[str, str] = field(default_factory=dict)  # role -> file name, into the manifest's extra_files
    artefacts: list[dict[str, Any]] = field(default_factory=list)  # measured entries (Reference.judge) for the report


@dataclass(frozen=True)
class ArtefactBuilder:
    """One thing a target adds to its bundle after the .tflite artefacts: a check, another format, a compiled model.

    ``build(ctx)`` writes its files into ``ctx.bundle`` and returns what it added; when it cannot
    produce a file the target promises it raises ``TargetArtefactError`` and the export stops
    before the manifest. ``markdown(report)`` and ``summary(report)`` render its report sections
    for ``export_report.md`` and the command's summary.
    """

    name: str
    build: Callable[[BuildContext], Built]
    emits: str | None = None  # the file it promises, as ``--list-targets`` shows it
    markdown: Callable[[dict], list[str]] | None = None
    summary: Callable[[dict], list[str]] | None = None


@dataclass(frozen=True)
class TargetSpec:
    """What one export target emits and what it accepts.

    The first artefact is the bundle's ``model.tflite``; the others are written next to it and
    listed in the manifest's ``extra_files``, as is what the ``builders`` add.
    """

    name: str
    description: str
    artefacts: tuple[Artefact, ...]
    delegate: Delegate = "none"
    delegate_file: str | None = None  # role in extra_files the delegate needs; without it the manifest says "none"
    io_dtypes: tuple[str, ...] = ("float32",)  # accepted --io-dtype values, the default first
    static_batch: bool = False  # freeze the batch dimension to 1
    records_threads: bool = False  # write --threads into the manifest (CPU interpreters)
    compiler: str | None = None  # executable a builder runs on the model when it is on PATH
    builders: tuple[ArtefactBuilder, ...] = ()  # run in order after the .tflite artefacts
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

    def delegate_for(self, extra_files: dict[str, str]) -> Delegate:
        """The delegate the manifest records, given the files the bundle holds."""
        return "none" if self.delegate_file is not None and self.delegate_file not in extra_files else self.delegate

    def emits(self) -> list[str]:
        out = [f"{a.filename} ({a.quantization})" for a in self.artefacts]
        return out + [b.emits for b in self.builders if b.emits]


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
    "ArtefactBuilder",
    "BuildContext",
    "Built",
    "TargetSpec",
    "UnknownTargetError",
    "describe_targets",
    "get_target",
    "list_targets",
    "register_target",
]
