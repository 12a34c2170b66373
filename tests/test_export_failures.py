"""Export fails (exit 14, ExitCode.ARTEFACT; no manifest) when the target cannot produce an artefact it promises.

Jetson promises an ONNX model checked against Keras; Coral, when ``edgetpu_compiler`` is on PATH,
promises the compiled ``model_edgetpu.tflite``. Each case runs the real export (``python -m train.export``)
on the session's real LeNet-5 run; the failures are real too (a real tf2onnx write error, real
subprocesses), except that the Edge TPU compiler is a stand-in shell script put first on PATH: the
real one is a Debian package for x86-64 Linux from Google's apt repository, which cannot be
installed here.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdk.bundle import MANIFEST_FILE, BundleError, verify_bundle
from sdk.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _main(args, capsys):
    from train.export.__main__ import main

    code = main(args)
    return code, capsys.readouterr().err


def _stand_in_compiler(tmp_path: Path, monkeypatch, script: str) -> Path:
    """A fake ``edgetpu_compiler`` (``script`` is its sh body) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "edgetpu_compiler"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return exe


def _assert_no_bundle(out: Path):
    assert not (out / MANIFEST_FILE).exists()
    assert not (out / "export_report.json").exists()
    with pytest.raises(BundleError):
        verify_bundle(out)


def test_exit_codes_are_the_projects_and_documented():
    """Each export error carries its code from the one table; --help lists the codes export uses."""
    from sdk.errors import exit_codes_help
    from train import errors, export
    from train.export.__main__ import EXIT_CODES, build_parser

    assert export.TargetArtefactError.exit_code == ExitCode.ARTEFACT == 14
    assert issubclass(export.TargetArtefactError, errors.ArtefactError)
    assert export.CalibrationError.exit_code == export.DataProblem.exit_code == ExitCode.INPUT
    assert issubclass(export.CalibrationError, errors.InputError)
    assert export.ModelLoadError.exit_code == ExitCode.MODEL
    assert export.OptionError.exit_code == export.UnknownTargetError.exit_code == ExitCode.USAGE
    for cls in (export.TargetArtefactError, export.CalibrationError, export.ModelLoadError, export.UnknownTargetError):
        assert issubclass(cls, export.ExportError)
    help_text = build_parser().format_help()
    assert exit_codes_help(EXIT_CODES) in help_text
    assert " 14  an export target could not build an artefact" in help_text and " 13  a quality gate failed" in help_text


# --------------------------------------------------------------------------- jetson


def test_jetson_onnx_failure_fails_the_export(small_run, tmp_path, capsys):
    """A real tf2onnx failure, no mock: a directory sits where it must write model.onnx."""
    out = tmp_path / "jetson"
    (out / "model.onnx").mkdir(parents=True)
    (out / MANIFEST_FILE).write_text("{}")  # left by an earlier export: must not survive a failed one
    code, err = _main(["--target", "jetson", "--run", str(small_run), "--out", str(out)], capsys)
    assert code == ExitCode.ARTEFACT, err
    assert "target 'jetson': could not produce model.onnx" in err
    assert "tf2onnx" in err and "IsADirectoryError" in err
    assert "what to do:" in err and f"no bundle written: {out}" in err
    _assert_no_bundle(out)


def test_onnx_numeric_mismatch_is_an_error(small_run, tmp_path):
    """The target promises a *checked* ONNX: scores off by more than ONNX_MAX_ABS_DIFF fail.

    A real conversion and a real onnxruntime run; the reference is the real Keras output moved by
    1e-3, which is what a graph tf2onnx got subtly wrong would look like (no model of ours does).
    """
    from train.export import TargetArtefactError, predict_keras
    from train.export.targets.jetson import ONNX_MAX_ABS_DIFF, export_onnx
    from train.runs import load_run

    run = load_run(small_run)
    sample = run.splits()["val"].x[:64]
    keras_scores = predict_keras(run.model, sample)
    with pytest.raises(TargetArtefactError) as e:
        export_onnx(run.model, tmp_path / "model.onnx", sample, keras_scores + 10 * ONNX_MAX_ABS_DIFF)
    assert e.value.target == "jetson" and e.value.artefact == "model.onnx"
    assert "differ from Keras's by up to 1.0" in str(e.value) and "tolerance 1e-04" in str(e.value)


# --------------------------------------------------------------------------- coral


def test_coral_compiler_error_fails_the_export(small_run, tmp_path, monkeypatch):
    """Through `python -m train.export` (a subprocess): exit 14 and a message, no traceback."""
    _stand_in_compiler(tmp_path, monkeypatch, (
        'echo "Edge TPU Compiler version 16.0.384591198"\n'
        'echo "ERROR: Didn\'t find op for builtin opcode \'CONV_2D\' version \'9\'" >&2\n'
        'echo "Internal compiler error. Aborting!" >&2\n'
        "exit 1\n"
    ))
    out = tmp_path / "coral"
    proc = subprocess.run([sys.executable, "-m", "train.export", "--target", "coral", "--run", str(small_run), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)  # PATH: the stand-in first
    code, err = proc.returncode, proc.stderr
    assert code == ExitCode.ARTEFACT, err
    assert "Traceback" not in err
    assert "error: target 'coral': could not produce model_edgetpu.tflite" in err
    assert "edgetpu_compiler exited with code 1" in err
    assert "Internal compiler error. Aborting!" in err and "CONV_2D" in err  # the end of its log
    log = out / "edgetpu_compiler.log"
    assert str(log) in err and "Internal compiler error" in log.read_text()  # kept where the message says
    assert "what to do:" in err
    _assert_no_bundle(out)


def test_coral_compiler_without_a_model_is_an_error(tmp_path, monkeypatch):
    """The compiler alone (the export around it fails the same way as in the test above): exit 0
    without writing the compiled model is a failure, and a stale compiled model from an earlier
    export cannot pass for this run's (a stale manifest is cleared by the export: jetson test)."""
    from train.export import TargetArtefactError
    from train.export.targets.coral import run_edgetpu_compiler

    _stand_in_compiler(tmp_path, monkeypatch, 'echo "Model compiled successfully in 3 ms."\nexit 0\n')
    out = tmp_path / "coral"
    out.mkdir()
    (out / "model_edgetpu.tflite").write_bytes(b"stale")
    model = out / "model.tflite"
    model.write_bytes(np.zeros(16, np.uint8).tobytes())
    with pytest.raises(TargetArtefactError) as e:
        run_edgetpu_compiler(model, out)
    assert "edgetpu_compiler exited 0 but wrote no model_edgetpu.tflite" in str(e.value)
    assert "Model compiled successfully" in str(e.value)  # the end of its log
    assert not (out / "model_edgetpu.tflite").exists()


def test_coral_compiler_that_succeeds_is_in_the_bundle(small_run, tmp_path, monkeypatch, capsys):
    """A stand-in that behaves like the real compiler: `-s -o DIR MODEL` writes DIR/<stem>_edgetpu.tflite."""
    args_file = tmp_path / "compiler_args"
    _stand_in_compiler(tmp_path, monkeypatch, (
        f'echo "$@" > "{args_file}"\n'
        'out=$3; model=$4\n'
        'cp "$model" "$out/$(basename "$model" .tflite)_edgetpu.tflite"\n'
        'echo "Model compiled successfully in 12 ms."\n'
        'echo "Number of operations that will run on Edge TPU: 11"\n'
    ))
    out = tmp_path / "coral"
    code, err = _main(["--target", "coral", "--run", str(small_run), "--out", str(out)], capsys)
    assert code == ExitCode.OK, err
    assert args_file.read_text().split() == ["-s", "-o", str(out), str(out / "model.tflite")]
    manifest = verify_bundle(out)
    assert manifest.delegate == "edgetpu"
    assert manifest.extra_files["edgetpu"] == "model_edgetpu.tflite"
    assert manifest.extra_files["edgetpu_compiler_log"] == "edgetpu_compiler.log"
    compiler = json.loads((out / "export_report.json").read_text())["edgetpu_compiler"]
    assert compiler["ran"] and compiler["returncode"] == 0 and compiler["ops_on_edgetpu"] == 11


@pytest.mark.parametrize("case", ["cannot_start", "hangs"])
def test_coral_compiler_that_cannot_start_or_hangs(case, tmp_path, monkeypatch):
    """The compiler alone, no export: a broken interpreter line, and a run past the timeout."""
    from train.export import TargetArtefactError
    from train.export.targets.coral import run_edgetpu_compiler

    script = "exec sleep 30\n" if case == "hangs" else ""  # exec: no orphan holding the pipes open
    exe = _stand_in_compiler(tmp_path, monkeypatch, script)
    if case == "cannot_start":
        exe.write_text("#!/nonexistent/interpreter\n")
    model = tmp_path / "model.tflite"
    model.write_bytes(np.zeros(16, np.uint8).tobytes())
    with pytest.raises(TargetArtefactError) as e:
        run_edgetpu_compiler(model, tmp_path, timeout=0.5)
    msg = str(e.value)
    assert e.value.target == "coral" and e.value.artefact == "model_edgetpu.tflite"
    assert ("cannot be run" in msg) if case == "cannot_start" else ("did not finish in 0.5 s" in msg)
