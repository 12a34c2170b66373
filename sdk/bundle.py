"""The model bundle: the contract between ``train`` (which writes it) and ``sdk`` (which runs it).

A bundle is a directory holding ``model.tflite`` (labels embedded as metadata), ``labels.txt``
and ``manifest.json``. The manifest says everything a device needs to feed the model and read
its output, so no preprocessing constant is written twice. Its JSON schema is generated from
:class:`Manifest` (``sdk/schemas/manifest.schema.json``; ``python -m sdk.schemagen`` rewrites it).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
SCHEMA_VERSION: Final = 1

DType = Literal["float32", "float16", "int8", "uint8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quantization(_Strict):
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: float = Field(gt=0, description="Real value of one quantization step.")
    zero_point: int = Field(description="Integer that represents real 0.")


class Normalization(_Strict):
    """How pixel values (0..255, after colour conversion and resize) become model input.

    ``model_input = pixel * scale + offset``, applied before input quantization.
    Models trained by ``train`` carry their own rescaling layer, so they take raw pixels
    (scale 1, offset 0).
    """

    scale: float = Field(1.0, description="Multiplier applied to 0..255 pixel values.")
    offset: float = Field(0.0, description="Added after the multiplier.")


class InputSpec(_Strict):
    shape: list[int] = Field(description="Static input shape, NHWC, batch first (e.g. [1, 28, 28, 1]).")
    dtype: DType = Field(description="Element type the interpreter expects.")
    quantization: Quantization | None = Field(None, description="Set when dtype is int8/uint8.")
    colour: Literal["grey", "rgb"] = Field(description="Channel layout the model was trained on.")
    normalization: Normalization = Field(default_factory=Normalization)
    resize: Literal["stretch", "centre_crop", "letterbox"] = Field(
        "stretch", description="How a frame of another aspect ratio is fitted to the input."
    )
    polarity: Literal["any", "light_on_dark", "dark_on_light"] = Field(
        "any",
        description="Ink polarity of the training images (MNIST is light strokes on a dark ground).",
    )
    preprocess: Literal["plain", "digit"] = Field(
        "plain",
        description="'digit' finds the ink, crops it and centres it by mass as MNIST's makers did.",
    )


class OutputSpec(_Strict):
    shape: list[int]
    dtype: DType
    quantization: Quantization | None = None
    activation: Literal["softmax", "logits"] = Field(
        "softmax", description="Whether the output is already a probability distribution."
    )


class SplitAccuracy(_Strict):
    validation: float | None = Field(None, ge=0, le=1)
    test: float | None = Field(None, ge=0, le=1)


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(description="Model name, e.g. 'lenet5-mnist'.")
    version: str = Field(description="Model version; devices report it with every result.")
    created: str = Field(description="ISO 8601 UTC time the bundle was written.")
    target: str = Field(description="Export target: rpi, coral, jetson or cpu.")
    model_file: str = Field(MODEL_FILE, description="The .tflite file, relative to the bundle.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of model_file.")
    size_bytes: int = Field(ge=0)
    gzip_bytes: int | None = Field(None, ge=0)
    input: InputSpec
    output: OutputSpec
    labels: list[str] = Field(min_length=1)
    accuracy_float: SplitAccuracy = Field(default_factory=SplitAccuracy)
    accuracy_exported: SplitAccuracy = Field(default_factory=SplitAccuracy)
    sparsity: float | None = Field(None, ge=0, le=1, description="Share of zero weights.")
    delegate: Literal["none", "xnnpack", "edgetpu", "gpu"] = "none"
    num_threads: int | None = Field(None, ge=1)
    source_run: str | None = Field(None, description="Training run the bundle came from.")
    extra_files: dict[str, str] = Field(
        default_factory=dict, description="Other artefacts in the bundle, by role (e.g. 'onnx', 'edgetpu')."
    )


class BundleError(ValueError):
    """A bundle that is missing, malformed or does not match its manifest."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate ``manifest.json`` of a bundle directory."""
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a model bundle (no {MANIFEST_FILE})")
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as e:
        raise BundleError(f"{path}: invalid manifest:\n{e}") from e


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Load the manifest and check the model file exists and matches its sha256."""
    manifest = load_manifest(bundle_dir)
    model = Path(bundle_dir) / manifest.model_file
    if not model.is_file():
        raise BundleError(f"{model}: model file named in the manifest is missing")
    digest = sha256_file(model)
    if digest != manifest.sha256:
        raise BundleError(f"{model}: sha256 {digest} does not match the manifest's {manifest.sha256}")
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(bundle_dir) / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def manifest_json_schema() -> dict:
    return Manifest.model_json_schema()
