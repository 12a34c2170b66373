"""The layering in docs/architecture.md, checked on the source: what never imports what.

Reads every module's imports with ``ast`` (top-level and inside functions alike), so a lazy
import inside a function cannot slip past the rule.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# part -> the parts of train/ it may import (besides itself, sdk and the foundation).
FOUNDATION = {"train", "train._tf", "train.errors", "train.config"}
MAY_IMPORT = {
    "train.models": set(),
    "train.data": set(),
    "train.runs": {"train.data"},
    "train.report": {"train.data", "train.runs"},
    "train.export": {"train.data", "train.runs", "train.models"},
    "train.fit": {"train.data", "train.runs", "train.models", "train.report", "train.analysis.adversarial"},
    "train.analysis": {"train.data", "train.runs", "train.models", "train.report", "train.fit", "train.export"},
    "train.loop": {"train.data", "train.runs", "train.models", "train.report", "train.fit", "train.export"},
    "train.web": {"train.data", "train.runs", "train.report", "train.loop"},
}
# The default report shows Grad-CAM: report.evaluate composes it from the analysis that computes it.
EXCEPTIONS = {("train.report.evaluate", "train.analysis.explain")}
TENSORFLOW = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx")


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, imported names) for every import in the file, relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [a.name for a in node.names]
            if node.module is None or mod in _all_modules():  # `from pkg import submodule` imports the submodule
                out += [(f"{mod}.{n}" if f"{mod}.{n}" in _all_modules() else mod, node.lineno, [n]) for n in names]
            else:
                out.append((mod, node.lineno, names))
    return out


_CACHE: dict[str, Path] = {}


def _all_modules() -> dict[str, Path]:
    if not _CACHE:
        _CACHE.update(_modules("sdk"))
        _CACHE.update(_modules("train"))
    return _CACHE


def _part(module: str) -> str | None:
    """The part a train module belongs to (longest key of MAY_IMPORT that prefixes it), or None."""
    best = None
    for part in MAY_IMPORT:
        if module == part or module.startswith(part + "."):
            if best is None or len(part) > len(best):
                best = part
    return best


def _commands() -> set[str]:
    """The command modules: train/<name>.py at the top (``python -m train.<name>``)."""
    return {f"train.{p.stem}" for p in (ROOT / "train").glob("*.py")
            if p.stem not in ("__init__", "_tf", "errors", "config", "runs", "fit")}


def test_the_device_package_never_imports_train_or_tensorflow():
    bad = []
    for name, path in _modules("sdk").items():
        for mod, line, _ in _imports(name, path):
            if mod == "train" or mod.startswith("train.") or mod.split(".")[0] in TENSORFLOW:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_each_part_of_train_imports_only_the_parts_below_it():
    commands = _commands()
    bad = []
    for name, path in _modules("train").items():
        if name in commands or name in FOUNDATION:
            continue
        part = _part(name)
        assert part is not None, f"{name} belongs to no part: add it to MAY_IMPORT and docs/architecture.md"
        allowed = MAY_IMPORT[part]  # the foundation is matched exactly below (``train`` is not a prefix)
        for mod, line, _ in _imports(name, path):
            if not (mod == "train" or mod.startswith("train.")) or mod in FOUNDATION:
                continue
            target = _part(mod)
            if mod in commands:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the command module {mod}")
            elif target == part:
                continue
            elif (name, mod) in EXCEPTIONS:
                continue
            elif not any(mod == a or mod.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {part} imports {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["sdk", "train"])
def test_no_private_name_is_imported_across_modules(package):
    """What two modules share is public where it belongs. A package's private module (train.models._registry)
    is used inside its package only; sdk._interp, the runtime-import fallback, is private by design (STYLE.md 2)."""
    bad = []
    for name, path in _modules(package).items():
        for mod, line, names in _imports(name, path):
            if mod == "sdk._interp" or mod == "__future__":
                continue
            leaf = mod.rsplit(".", 1)[-1]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            parent = mod.rsplit(".", 1)[0]
            inside = name == parent or name.startswith(parent + ".")  # a package's private module, used inside it
            if leaf.startswith("_") and not leaf.startswith("__") and mod != name and not inside:
                private.append(mod)
            if private and mod != name:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {mod}")
    assert not bad, "\n".join(bad)


def test_the_exit_code_table_in_the_docs_is_the_one_in_the_code():
    import re

    from sdk.errors import EXIT_CODES, ExitCode

    text = (ROOT / "docs" / "architecture.md").read_text()
    documented = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \| ", text, re.M)}
    assert documented == {int(c) for c in ExitCode} == set(EXIT_CODES)


@pytest.mark.parametrize("command", sorted(_commands() | {"train.data.__main__", "train.export.__main__"}))
def test_every_command_lists_its_exit_codes_in_its_help(command):
    import importlib

    module = importlib.import_module(command)
    parser = module.build_parser()
    text = parser.format_help()
    assert "exit codes:" in text and "  0  success" in text, f"{command} --help has no exit-code table"
