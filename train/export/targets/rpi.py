"""Raspberry Pi: a full-integer model for the CPU (XNNPACK), thread count recorded."""
from train.export.targets import COMMON_OPTIONS, INT8_OPTIONS, Artefact, TargetSpec, register_target


@register_target
def rpi() -> TargetSpec:
    return TargetSpec(
        name="rpi",
        description="Raspberry Pi CPU: full INT8 for XNNPACK, thread count recorded",
        artefacts=(Artefact("model", "model.tflite", "full_int8", "full-integer model for XNNPACK"),),
        delegate="xnnpack",
        io_dtypes=("uint8", "int8"),
        static_batch=True,
        records_threads=True,
        notes="LiteRT applies XNNPACK by default; run with num_threads from the manifest (4 on a Pi 4/5).",
        accepts=COMMON_OPTIONS + INT8_OPTIONS,
    )
