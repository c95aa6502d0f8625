"""The bad-input corpus (``tests/corpus``): every document is refused by ``load_documents`` + ``parse_document``
with an error that names the field listed in ``tests/corpus/index.yaml``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.catalog import default_registry
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import load_documents, parse_document

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
INDEX: dict[str, dict[str, str]] = yaml.safe_load((CORPUS / "index.yaml").read_text())
KINDS = {t.kind for t in default_registry().public()}


def corpus_documents() -> list[tuple[str, str]]:
    return [(name, entry["field"]) for name, entry in sorted(INDEX.items())]


def test_the_corpus_is_large_and_covers_every_kind_in_yaml_and_json() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name != "index.yaml"}
    assert files == set(INDEX), "every corpus file is listed in index.yaml, and only those"
    assert len(files) >= 50
    assert any(f.endswith(".json") for f in files) and any(f.endswith(".yaml") for f in files)
    kinds: set[Any] = set()
    for name in files:
        text = (CORPUS / name).read_text()
        doc = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        kinds.add(doc.get("type"))
    assert KINDS <= kinds, f"kinds without a bad document: {sorted(KINDS - kinds)}"


@pytest.mark.parametrize(("name", "field"), corpus_documents())
def test_refused_naming_the_field(name: str, field: str) -> None:
    registry = default_registry()
    with pytest.raises(ResourceValidationError) as caught:
        (doc,) = load_documents((CORPUS / name).read_text())
        parse_document(doc, registry)
    fields = [e.field for e in caught.value.errors]
    assert field in fields, f"{name}: expected an error on {field!r}, got {caught.value.errors}"
    for error in caught.value.errors:
        assert error.reason and "Traceback" not in error.reason
