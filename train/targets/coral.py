"""Google Coral (Edge TPU): a full-integer model, batch 1, ready for ``edgetpu_compiler``.

Besides the spec: running the compiler when it is on PATH (its log and ``*_edgetpu.tflite`` are
kept). The pre-flight report lives in ``train.edgetpu_preflight``.
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from train.targets import COMMON_OPTIONS, INT8_OPTIONS, Artefact, TargetSpec, register_target

logger = logging.getLogger(__name__)


@register_target
def coral() -> TargetSpec:
    return TargetSpec(
        name="coral",
        description="Google Coral Edge TPU: full INT8 (uint8/int8 I/O), static batch 1, Edge TPU pre-flight report",
        artefacts=(Artefact("model", "model.tflite", "full_int8", "compiler-ready full-integer model"),),
        delegate="edgetpu",
        io_dtypes=("uint8", "int8"),
        static_batch=True,
        compiler="edgetpu_compiler",
        preflight="edgetpu",
        notes="On the device: the bundle's model_edgetpu.tflite with libedgetpu installed.",
        accepts=COMMON_OPTIONS + INT8_OPTIONS,
    )


def run_edgetpu_compiler(model_path: Path, out_dir: Path, compiler: str = "edgetpu_compiler") -> dict:
    """Compile ``model_path`` into ``out_dir`` when ``compiler`` is on PATH; say so when it is not."""
    exe = shutil.which(compiler)
    if exe is None:
        logger.warning(
            "%s is not on PATH: the bundle holds the compiler-ready model; compile it where the Edge TPU compiler is installed",
            compiler,
        )
        return {"ran": False, "reason": f"{compiler} not on PATH", "command": f"{compiler} -s -o . {model_path.name}"}
    cmd = [exe, "-s", "-o", str(out_dir), str(model_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = out_dir / "edgetpu_compiler.log"
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    compiled = out_dir / f"{model_path.stem}_edgetpu.tflite"
    result = {"ran": True, "returncode": proc.returncode, "log": log.name, "command": " ".join(cmd)}
    if proc.returncode == 0 and compiled.is_file():
        result["model"] = compiled.name
    else:
        logger.warning("%s failed (exit %d); see %s", compiler, proc.returncode, log)
    m = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", proc.stdout)
    if m:
        result["ops_on_edgetpu"] = int(m.group(1))
    return result
