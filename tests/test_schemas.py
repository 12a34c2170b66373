"""The checked-in JSON schemas: generated ones equal their generated form, and every schema id has one spelling."""
from __future__ import annotations

import json

import jsonschema
import pytest

from sdk import messages, schemagen
from sdk.update import UpdateRefused, parse_command

SCHEMA_FILES = sorted(schemagen.SCHEMA_DIR.glob("*.schema.json"))
H = "a" * 64
BEGIN = {"schema": messages.schema_id("model-update"), "kind": "begin", "update_id": "0123abcd", "name": "n",
         "version": "1", "target": "cpu", "to": "dev-1", "manifest_sha256": H, "created": "2024-01-01T00:00:00+00:00",
         "archive": {"format": "tar.gz", "size": 10, "sha256": H, "chunks": 1, "chunk_size": 10},
         "signature": {"alg": "ed25519", "key_id": "0" * 16, "value": "A" * 86 + "=="}}


@pytest.mark.parametrize("kind", list(schemagen.GENERATED))
def test_generated_schema_is_checked_in(kind):
    assert schemagen.schema_path(kind).read_text() == schemagen.render(kind), \
        f"{schemagen.schema_path(kind).name} is stale: run python -m sdk.schemagen"


def test_every_schema_file_is_known_and_names_its_id():
    kinds = {p.name.removesuffix(".schema.json") for p in SCHEMA_FILES}
    assert kinds == set(messages.SCHEMAS) | {"manifest"}
    for kind in messages.SCHEMAS:
        schema = messages.load_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"] == messages.schema_id(kind), kind
        objects = [schema["$defs"][ref["$ref"].rsplit("/", 1)[-1]] for ref in schema["oneOf"]] if "oneOf" in schema \
            else [schema]
        for obj in objects:
            assert obj["properties"]["schema"]["const"] == messages.schema_id(kind), kind
            assert "schema" in obj["required"], kind
    with pytest.raises(ValueError, match="valid: result"):
        messages.schema_id("results")


@pytest.mark.parametrize("change", [
    {"kind": "start"}, {"schema": "edgeclf/model-update/v2"}, {"surplus": 1}, {"update_id": "0123"},
    {"update_id": "0123ABCD"}, {"to": "a/b"}, {"name": ""}, {"name": "a\tb"}, {"manifest_sha256": H + "\n"},
    {"signature": {"alg": "rsa", "key_id": "0" * 16, "value": "A" * 86 + "=="}},
    {"signature": {"alg": "ed25519", "key_id": "0" * 16, "value": "A" * 88}},
    {"archive": {"format": "zip", "size": 10, "sha256": H, "chunks": 1, "chunk_size": 10}},
    {"archive": {"size": 0, "sha256": H, "chunks": 1, "chunk_size": 10}},
], ids=repr)
def test_model_update_schema_refuses_what_parse_command_refuses(change):
    validator = jsonschema.Draft202012Validator(messages.load_schema("model-update"))
    for msg in (BEGIN, {k: v for k, v in BEGIN.items() if k != "signature"}, {**BEGIN, "signature": None}):
        validator.validate(msg)
        parse_command(json.dumps(msg).encode())
    bad = {**BEGIN, **change}
    with pytest.raises(UpdateRefused):
        parse_command(json.dumps(bad).encode())
    assert not validator.is_valid(bad)


def test_parse_command_refuses_what_python_jsonschema_lets_through():
    """parse_command is the parser of record. Python's re (so the jsonschema package) lets ``$`` match before a
    trailing newline, pydantic's regex (like the schema's own ECMA 262 dialect) does not; chunk arithmetic is
    beyond a JSON schema."""
    for bad in ({**BEGIN, "to": "dev-1\n"}, {**BEGIN, "update_id": "0123abcd\n"}, {**BEGIN, "name": "n\n"},
                {**BEGIN, "archive": {**BEGIN["archive"], "chunks": 2}}):
        with pytest.raises(UpdateRefused):
            parse_command(json.dumps(bad).encode())
