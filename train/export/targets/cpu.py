"""Generic CPU baseline: float32 and dynamic-range (INT8 weights, float activations)."""
from train.export.targets import COMMON_OPTIONS, Artefact, TargetSpec, register_target


@register_target
def cpu() -> TargetSpec:
    return TargetSpec(
        name="cpu",
        description="Any CPU, the baseline: float32 model.tflite + dynamic-range variant",
        artefacts=(
            Artefact("model", "model.tflite", "float32", "float32 baseline"),
            Artefact("dynamic_range", "model_dynamic_range.tflite", "dynamic_range", "INT8 weights, float activations"),
        ),
        delegate="xnnpack",
        io_dtypes=("float32",),
        records_threads=True,
        accepts=COMMON_OPTIONS,
    )
