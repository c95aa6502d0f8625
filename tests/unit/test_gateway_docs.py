"""Every Kong declarative file on the docs pages (``_format_version`` blocks in docs/gateway.md, docs/gateway/ and
the guides) applies unchanged: it syncs into a real store, its dump applies back with no change, and the gateway
translates it with an Envoy route for each of its Kong routes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from isthmus.gateway import declarative as d
from isthmus.gateway.store import GatewayStore
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.store.sql import SqlStore
from isthmus.xds import types

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.S)


def kong_files() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for page in sorted(DOCS.rglob("*.md")):
        for i, match in enumerate(BLOCK.finditer(page.read_text())):
            if re.search(r'^_format_version: "3.0"', match.group(1), re.M):
                out.append((f"{page.relative_to(DOCS)}#{i}", match.group(1)))
    return out


FILES = kong_files()


def test_the_docs_have_kong_files() -> None:
    assert any(name.startswith("gateway.md") for name, _ in FILES)


@pytest.fixture()
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayStore]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.start()
    try:
        yield GatewayStore(store)
    finally:
        await store.close()


def _envoy_route_names(out: dict[str, list[Any]]) -> set[str]:
    from google.protobuf import json_format, symbol_database

    names: set[str] = set()
    for resource in out.get(types.ROUTE, []):
        packed = resource.packed
        message = symbol_database.Default().GetSymbol(packed.type_url.rsplit("/", 1)[-1])()
        packed.Unpack(message)
        config = json_format.MessageToDict(message, preserving_proto_field_name=True)
        for vhost in config.get("virtual_hosts", []):
            names.update(str(r.get("name", "")) for r in vhost.get("routes", []))
    return names


@pytest.mark.parametrize(("name", "text"), FILES, ids=[name for name, _ in FILES])
async def test_kong_file_applies_unchanged(gateway: GatewayStore, name: str, text: str) -> None:
    first = await d.sync(gateway, "default", d.load(text))
    assert first.diff.report(), name
    ws = await gateway.workspace("default")
    dumped = d.dump_yaml(d.export(ws))
    again = await d.sync(gateway, "default", d.load(dumped), dry_run=True)
    assert not again.diff.changes(), f"{name}: its dump does not apply back unchanged"
    out = translate("default", ws.entities, [ListenAddress("127.0.0.1", 8000)])
    served = _envoy_route_names(out)
    assert served, name
    for route in ws.entities.get("routes", {}).values():
        label = str(route.get("name") or route["id"])
        assert any(n == label or n.startswith(label + " ") for n in served), (
            f"{name}: no Envoy route for {label}"
        )
