"""Every resource example in the docs applies: each YAML block with a ``type`` parses and validates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from isthmus.resources.registry import default_registry, load_documents, parse_document

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)


def _examples() -> list[tuple[str, str]]:
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, block in enumerate(BLOCK.findall(page.read_text())):
            if re.search(r"^type: ", block, re.M):
                out.append((f"{page.relative_to(DOCS)}#{i}", block))
    return out


@pytest.mark.parametrize(("where", "block"), _examples(), ids=[w for w, _ in _examples()])
def test_doc_example_is_a_valid_resource(where: str, block: str) -> None:
    registry = default_registry()
    for doc in load_documents(block):
        parse_document(doc, registry)
