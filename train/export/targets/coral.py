"""Google Coral (Edge TPU): a full-integer model, batch 1, ready for ``edgetpu_compiler``.

Besides the spec, its one builder: our own pre-flight report (:mod:`train.export.preflight`), and
the compiler run when it is on PATH (its log and ``*_edgetpu.tflite`` are kept).
"""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from train.export.errors import TargetArtefactError
from train.export.preflight import preflight
from train.export.targets import (
    COMMON_OPTIONS,
    INT8_OPTIONS,
    Artefact,
    ArtefactBuilder,
    BuildContext,
    Built,
    TargetSpec,
    register_target,
)

logger = logging.getLogger(__name__)

COMPILER = "edgetpu_compiler"
COMPILER_LOG = "edgetpu_compiler.log"
PREFLIGHT_FILE = "edgetpu_preflight.md"
LOG_TAIL_LINES = 10


def build_edgetpu(ctx: BuildContext) -> Built:
    """The pre-flight report of the bundle's model, then the compiler on it when it is on PATH."""
    pf = preflight(ctx.primary)
    compiler = run_edgetpu_compiler(ctx.bundle / ctx.spec.primary.filename, ctx.bundle, ctx.spec.compiler or COMPILER)
    pf.compiler = "ran" if compiler["ran"] else compiler["reason"]
    (ctx.bundle / PREFLIGHT_FILE).write_text(pf.to_markdown())
    extra_files = {"edgetpu_preflight": PREFLIGHT_FILE}
    if compiler.get("model"):
        extra_files["edgetpu"] = compiler["model"]
    if compiler.get("log"):
        extra_files["edgetpu_compiler_log"] = compiler["log"]
    return Built(report={"edgetpu_preflight": pf.to_dict(), "edgetpu_compiler": compiler}, extra_files=extra_files)


def preflight_markdown(report: dict) -> list[str]:
    pf = report["edgetpu_preflight"]
    return ["", f"Edge TPU pre-flight: {pf['ops_mapped']}/{pf['ops_total']} ops will map ({pf['mapped_share']:.0%}); "
            f"compiler: {pf['compiler']}. Details: {PREFLIGHT_FILE}."]


def preflight_summary(report: dict) -> list[str]:
    pf = report["edgetpu_preflight"]
    return [f"  Edge TPU pre-flight: {pf['ops_mapped']}/{pf['ops_total']} ops map; compiler: {pf['compiler']}"]


def run_edgetpu_compiler(model_path: Path, out_dir: Path, compiler: str = COMPILER, timeout: float = 600) -> dict:
    """Compile ``model_path`` into ``out_dir`` when ``compiler`` is on PATH; say so when it is not.

    Not on PATH is no failure: the bundle then promises the compiler-ready model and the pre-flight
    report. On PATH, it promises ``<stem>_edgetpu.tflite``: a compiler that cannot start, exits
    non-zero, runs past ``timeout`` seconds or writes no model raises ``TargetArtefactError`` with
    its exit code, the last lines of its output and the path of its log.
    """
    exe = shutil.which(compiler)
    if exe is None:
        logger.warning(
            "%s is not on PATH: the bundle holds the compiler-ready model; compile it where the Edge TPU compiler is installed",
            compiler,
        )
        return {"ran": False, "reason": f"{compiler} not on PATH", "command": f"{compiler} -s -o . {model_path.name}"}
    cmd = [exe, "-s", "-o", str(out_dir), str(model_path)]
    log = out_dir / COMPILER_LOG
    compiled = out_dir / f"{model_path.stem}_edgetpu.tflite"
    compiled.unlink(missing_ok=True)  # one left by an earlier export must not pass for this run's
    remedy = (f"fix what {log.name} says ({PREFLIGHT_FILE} lists the ops the Edge TPU cannot map) and export again; "
              f"to ship the compiler-ready model uncompiled, export with {compiler} off PATH")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        log.write_text(f"$ {' '.join(cmd)}\n{_text(e.stdout)}\n{_text(e.stderr)}")
        raise TargetArtefactError("coral", compiled.name, f"{compiler} did not finish in {timeout:g} s; its log: {log}", remedy) from e
    except OSError as e:
        raise TargetArtefactError("coral", compiled.name, f"{exe} cannot be run: {type(e).__name__}: {e}",
                                  f"fix or reinstall {compiler}, or take it off PATH to ship the compiler-ready model") from e
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0 or not compiled.is_file():
        what = f"exited with code {proc.returncode}" if proc.returncode != 0 else f"exited 0 but wrote no {compiled.name}"
        tail = [ln for ln in f"{proc.stdout}\n{proc.stderr}".splitlines() if ln.strip()][-LOG_TAIL_LINES:] or ["(no output)"]
        raise TargetArtefactError(
            "coral", compiled.name, f"{compiler} {what}; the end of its log ({log}):\n    " + "\n    ".join(tail), remedy
        )
    result = {"ran": True, "returncode": proc.returncode, "log": log.name, "command": " ".join(cmd), "model": compiled.name}
    m = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", proc.stdout)
    if m:
        result["ops_on_edgetpu"] = int(m.group(1))
    return result


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


# The spec last: registering calls it, and it names the builders above.
@register_target
def coral() -> TargetSpec:
    return TargetSpec(
        name="coral",
        description="Google Coral Edge TPU: full INT8 (uint8/int8 I/O), static batch 1, Edge TPU pre-flight report",
        artefacts=(Artefact("model", "model.tflite", "full_int8", "compiler-ready full-integer model"),),
        delegate="edgetpu",
        delegate_file="edgetpu",  # an uncompiled Edge TPU model runs on the CPU
        io_dtypes=("uint8", "int8"),
        static_batch=True,
        compiler=COMPILER,
        builders=(ArtefactBuilder("edgetpu", build_edgetpu, emits=f"model_edgetpu.tflite (when {COMPILER} is on PATH)",
                                  markdown=preflight_markdown, summary=preflight_summary),),
        notes="On the device: the bundle's model_edgetpu.tflite with libedgetpu installed.",
        accepts=COMMON_OPTIONS + INT8_OPTIONS,
    )
