"""The checked-in JSON schemas that are generated from pydantic models, and the command that writes them.

``python -m sdk.schemagen`` rewrites ``sdk/schemas/<kind>.schema.json`` for each kind in
:data:`GENERATED`; ``--check`` writes nothing and exits 1 if a file differs from its generated form.
The other schemas (result, sample, metrics, event, model-state) are written by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .bundle import manifest_json_schema
from .update import model_update_schema

SCHEMA_DIR = Path(__file__).with_name("schemas")
GENERATED: dict[str, Callable[[], dict]] = {"manifest": manifest_json_schema, "model-update": model_update_schema}


def schema_path(kind: str) -> Path:
    return SCHEMA_DIR / f"{kind}.schema.json"


def render(kind: str) -> str:
    """The exact text of a generated schema file."""
    if kind not in GENERATED:
        raise ValueError(f"no generator for schema {kind!r}; generated: {', '.join(GENERATED)}")
    return json.dumps(GENERATED[kind](), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdk.schemagen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a schema file is stale")
    args = parser.parse_args(argv)
    stale = []
    for kind in GENERATED:
        path, text = schema_path(kind), render(kind)
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print("stale (run python -m sdk.schemagen): " + ", ".join(str(p) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
