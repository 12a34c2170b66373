"""Our own Edge TPU compatibility report for a .tflite, for machines without ``edgetpu_compiler``.

For every operator of the model: is the op on the Edge TPU's list, are all its tensors 8-bit
quantized, are all its shapes static (and at most 3 dimensions larger than 1)? The Edge TPU
compiler maps ops from the start of the graph up to the first op it cannot run; that op and
everything after it stay on the CPU. So the report gives both the share of ops that are supported
and the share that will actually be mapped. It is an estimate from the documented rules
(coral.ai "TensorFlow models on the Edge TPU", supported operations); the compiler's own log is
authoritative when it is available.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: TFLite builtin ops the Edge TPU can run (coral.ai supported-operations table), with the
#: documented limitations worth showing next to them.
EDGETPU_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation",
    "CONCATENATION": "no fused activation; a constant input must be all zeros",
    "CONV_2D": "same dilation in x and y",
    "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weight format only; 1-D output",
    "HARD_SWISH": "",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional only",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation",
    "MEAN": "no reduction over the batch dimension",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "not along the batch dimension",
    "PAD": "not along the batch dimension",
    "PRELU": "alpha 1-D",
    "QUANTIZE": "",
    "REDUCE_MAX": "not along the batch dimension",
    "REDUCE_MIN": "not along the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "large reshapes may stay on the CPU",
    "RESIZE_BILINEAR": "3-D input/output; may stay on the CPU for precision",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-D input, at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "not along the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "",
    "SUB": "",
    "SUM": "",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

_ACTIVATION_TYPES = {"INT8", "UINT8"}
_CONSTANT_TYPES = {"INT8", "UINT8", "INT32", "INT64"}  # weights, biases, shapes


@dataclass
class OpCheck:
    index: int
    op: str
    supported: bool
    quantized: bool
    static_shape: bool
    maps: bool = False  # will be mapped to the Edge TPU (all checks pass and before the first failure)
    reasons: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.supported and self.quantized and self.static_shape


@dataclass
class PreflightReport:
    ops: list[OpCheck]
    subgraphs: int
    compiler: str = "not run (edgetpu_compiler not on PATH)"

    @property
    def total(self) -> int:
        return len(self.ops)

    @property
    def supported(self) -> int:
        return sum(o.ok for o in self.ops)

    @property
    def mapped(self) -> int:
        return sum(o.maps for o in self.ops)

    @property
    def mapped_share(self) -> float:
        return self.mapped / self.total if self.total else 0.0

    @property
    def first_unmapped(self) -> OpCheck | None:
        return next((o for o in self.ops if not o.maps), None)

    @property
    def fully_mapped(self) -> bool:
        return self.total > 0 and self.mapped == self.total and self.subgraphs == 1

    def flagged(self) -> list[OpCheck]:
        """Ops that fail a check themselves (not merely placed after a failing op)."""
        return [o for o in self.ops if not o.ok]

    def to_dict(self) -> dict:
        first = self.first_unmapped
        return {
            "ops_total": self.total,
            "ops_supported": self.supported,
            "ops_mapped": self.mapped,
            "mapped_share": round(self.mapped_share, 4),
            "fully_mapped": self.fully_mapped,
            "subgraphs": self.subgraphs,
            "first_unmapped": asdict(first) if first else None,
            "compiler": self.compiler,
            "ops": [asdict(o) for o in self.ops],
        }

    def summary(self) -> str:
        first = self.first_unmapped
        line = (
            f"Edge TPU pre-flight: {self.mapped}/{self.total} ops will map ({self.mapped_share:.0%}), "
            f"{self.supported}/{self.total} pass every check"
        )
        if first is not None:
            line += f"; first op left on the CPU: #{first.index} {first.op} ({'; '.join(first.reasons) or 'after an unmapped op'})"
        return line

    def to_markdown(self) -> str:
        rows = ["| # | op | supported | quantized | static shape | maps to Edge TPU | why not |", "|---|---|---|---|---|---|---|"]
        yn = {True: "yes", False: "**no**"}
        for o in self.ops:
            rows.append(
                f"| {o.index} | {o.op} | {yn[o.supported]} | {yn[o.quantized]} | {yn[o.static_shape]} | "
                f"{yn[o.maps]} | {'; '.join(o.reasons)} |"
            )
        return self.summary() + "\n\n" + "\n".join(rows) + "\n"


def _type_name(schema, code: int) -> str:
    for k, v in vars(schema.TensorType).items():
        if not k.startswith("_") and v == code:
            return k
    return str(code)


def preflight(model: bytes | str | Path) -> PreflightReport:
    """Check every operator of a .tflite (bytes or path) against the Edge TPU's rules."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fu

    data = Path(model).read_bytes() if isinstance(model, (str, Path)) else model
    try:
        obj = fu.convert_bytearray_to_object(bytearray(data))
    except Exception as e:  # flatbuffers raises assorted errors on garbage
        raise ValueError(f"not a TFLite flatbuffer: {e}") from e
    if not obj.subgraphs:
        raise ValueError("TFLite model has no subgraph")
    sub = obj.subgraphs[0]
    checks: list[OpCheck] = []
    for i, op in enumerate(sub.operators or []):
        name = fu.opcode_to_name(obj, op.opcodeIndex)
        reasons: list[str] = []
        supported = name in EDGETPU_OPS
        if not supported:
            reasons.append(f"{name} is not an Edge TPU op")
        quantized, static = True, True
        ends = list(op.inputs if op.inputs is not None else []) + list(op.outputs if op.outputs is not None else [])
        tensor_ids = [t for t in ends if t >= 0]
        for t in tensor_ids:
            tensor = sub.tensors[t]
            tname = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            ttype = _type_name(schema, tensor.type)
            buf = obj.buffers[tensor.buffer] if tensor.buffer < len(obj.buffers) else None
            constant = buf is not None and buf.data is not None and len(buf.data) > 0
            allowed = _CONSTANT_TYPES if constant else _ACTIVATION_TYPES
            if ttype not in allowed:
                if quantized:
                    reasons.append(f"tensor {tname!r} is {ttype}, not 8-bit quantized")
                quantized = False
            sig = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
            sig = [int(d) for d in (sig if sig is not None else [])]
            if any(d < 0 for d in sig):
                if static:
                    reasons.append(f"tensor {tname!r} has a dynamic shape {sig}")
                static = False
            elif not constant and len(sig) > 3 and any(d > 1 for d in sig[:-3]):
                if static:
                    reasons.append(f"tensor {tname!r} {sig}: only the 3 innermost dimensions may exceed 1")
                static = False
        checks.append(OpCheck(i, name, supported, quantized, static, reasons=reasons, note=EDGETPU_OPS.get(name, "")))
    blocked = False
    for c in checks:
        c.maps = c.ok and not blocked
        if not c.ok:
            blocked = True
    report = PreflightReport(ops=checks, subgraphs=len(obj.subgraphs))
    logger.info("%s", report.summary())
    return report
