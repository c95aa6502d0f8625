"""Resource models: Kuma Universal documents are accepted unchanged; bad input names the field."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from isthmus.catalog import default_registry
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import load_documents, parse_document

REG = default_registry()

KUMA_DATAPLANE = """
name: sample
mesh: default
type: Dataplane
networking:
  address: 2.2.2.2
  inbound:
  - address: 1.1.1.1
    port: 80
    servicePort: 8080
    tags:
      kuma.io/service: "web"
      service: web
      version: "1.0"
      env: production
  outbound:
  - port: 3000
    tags:
      kuma.io/service: postgres
"""

KUMA_MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert:
      rotation:
        expiration: 1d
    conf:
      caCert:
        RSAbits: 2048
        expiration: 10y
"""  # Kuma's networking.outbound.passthrough: false and routing.zoneEgress: true: see test_kuma_fields.py

KUMA_MTP = """
type: MeshTrafficPermission
name: allow-all
mesh: default
spec:
  targetRef:
    kind: Mesh
  from:
    - targetRef:
        kind: Mesh
      default:
        action: Allow
"""


@pytest.mark.parametrize("text", [KUMA_DATAPLANE, KUMA_MESH, KUMA_MTP])
def test_kuma_documents_round_trip(text: str) -> None:
    doc = yaml.safe_load(text)
    res = parse_document(doc, REG)
    again = parse_document({**{k: doc[k] for k in ("type", "name") if k in doc}, **_rebuild(res)}, REG)
    assert again.spec == res.spec


def _rebuild(res: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"labels": dict(res.labels)}
    if res.mesh:
        out["mesh"] = res.mesh
    if res.type.spec_at_top_level:
        out.update(res.spec_dict())
    else:
        out["spec"] = res.spec_dict()
    return out


def test_mesh_lifetime_and_mode() -> None:
    mesh = parse_document(yaml.safe_load(KUMA_MESH), REG)
    backend = mesh.spec.enabled_backend  # type: ignore[attr-defined]
    assert backend.name == "ca-1"
    assert backend.cert_lifetime.total_seconds() == 86400
    assert backend.mode.value == "STRICT"


def errors_of(doc: Any) -> list[tuple[str, str]]:
    with pytest.raises(ResourceValidationError) as info:
        parse_document(doc, REG)
    return [(e.field, e.reason) for e in info.value.errors]


def dataplane(**networking: Any) -> dict[str, Any]:
    net = {"address": "127.0.0.1", "inbound": [{"port": 10001, "tags": {"kuma.io/service": "web"}}]}
    net.update(networking)
    return {"type": "Dataplane", "mesh": "default", "name": "web", "networking": net}


def test_unknown_kind() -> None:
    [(field, reason)] = errors_of({"type": "Foo", "name": "x"})
    assert field == "type" and "unknown kind 'Foo'" in reason


def test_missing_mesh() -> None:
    doc = dataplane()
    del doc["mesh"]
    assert ("mesh", "is required") in errors_of(doc)


def test_out_of_range_port() -> None:
    fields = errors_of(dataplane(inbound=[{"port": 70000, "tags": {"kuma.io/service": "web"}}]))
    assert fields[0][0] == "networking.inbound[0].port"
    assert "65535" in fields[0][1]


def test_duplicate_inbound_port() -> None:
    inbound = {"port": 10001, "tags": {"kuma.io/service": "web"}}
    [(field, reason)] = errors_of(dataplane(inbound=[inbound, inbound]))
    assert field == "networking.inbound[1].port"
    assert "already used by inbound[0]" in reason


OUT = {"port": 10001, "tags": {"kuma.io/service": "backend"}}


@pytest.mark.parametrize(
    ("networking", "field", "reason"),
    [
        ({"outbound": [OUT]}, "networking.outbound[0].port", "port 10001 is already used by inbound[0]"),
        (
            {"outbound": [{**OUT, "port": 10003}, {**OUT, "port": 10002}, {**OUT, "port": 10002}]},
            "networking.outbound[2].port",
            "port 10002 is already used by outbound[1]",
        ),
        (
            {"address": "10.0.0.1", "outbound": [{**OUT, "address": "10.0.0.1"}]},
            "networking.outbound[0].port",
            "port 10001 is already used by inbound[0]",
        ),
        (
            {"address": "10.0.0.1", "outbound": [{**OUT, "address": "0.0.0.0"}]},
            "networking.outbound[0].port",
            "port 10001 is already used by inbound[0]",
        ),
        (
            {"address": "10.0.0.1", "outbound": [{**OUT, "port": 9901}], "admin": {"port": 9901}},
            "networking.admin.port",
            "port 9901 is already used by outbound[0]",
        ),
        ({"admin": {"port": 10001}}, "networking.admin.port", "port 10001 is already used by inbound[0]"),
        (
            {
                "address": "10.0.0.1",
                "inbound": [{"port": 10001, "servicePort": 8080, "tags": {"kuma.io/service": "web"}}],
                "admin": {"port": 8080},
            },
            "networking.admin.port",
            "application's port of inbound[0]",
        ),
    ],
)
def test_listeners_sharing_an_address_and_port(networking: dict[str, Any], field: str, reason: str) -> None:
    [(got_field, got_reason)] = errors_of(dataplane(**networking))
    assert got_field == field
    assert reason in got_reason


def test_same_port_on_other_addresses_is_accepted() -> None:
    doc = dataplane(address="10.0.0.1", outbound=[OUT, {**OUT, "address": "127.0.0.2"}], admin={"port": 9901})
    parse_document(doc, REG)


def test_missing_service_tag() -> None:
    [(field, reason)] = errors_of(dataplane(inbound=[{"port": 1, "tags": {"version": "v1"}}]))
    assert field == "networking.inbound[0].tags"
    assert "kuma.io/service" in reason


def test_bad_address() -> None:
    [(field, _)] = errors_of(dataplane(address="not-an-ip"))
    assert field == "networking.address"


def test_invalid_action() -> None:
    doc = yaml.safe_load(KUMA_MTP)
    doc["spec"]["from"][0]["default"]["action"] = "Permit"
    [(field, reason)] = errors_of(doc)
    assert field == "spec.from[0].default.action"
    assert "Allow" in reason


def test_bad_target_ref_kind() -> None:
    doc = yaml.safe_load(KUMA_MTP)
    doc["spec"]["targetRef"] = {"kind": "MeshService"}
    [(field, reason)] = errors_of(doc)
    assert field == "spec.targetRef.name"
    assert "must be set" in reason


def test_unknown_field_is_named() -> None:
    doc = yaml.safe_load(KUMA_MTP)
    doc["spec"]["form"] = []
    assert ("spec.form", "unknown field") in errors_of(doc)


def test_enabled_backend_must_exist() -> None:
    doc = yaml.safe_load(KUMA_MESH)
    doc["mtls"]["enabledBackend"] = "nope"
    [(field, reason)] = errors_of(doc)
    assert field == "mtls.enabledBackend"
    assert "not defined" in reason


def test_bad_rotation() -> None:
    doc = yaml.safe_load(KUMA_MESH)
    doc["mtls"]["backends"][0]["dpCert"]["rotation"]["expiration"] = "soon"
    [(field, _)] = errors_of(doc)
    assert field == "mtls.backends[0].dpCert.rotation.expiration"


def test_malformed_yaml_names_line() -> None:
    with pytest.raises(ResourceValidationError) as info:
        load_documents("type: Mesh\nname: [unclosed\n")
    assert "line" in str(info.value)


def test_global_resource_refuses_mesh() -> None:
    assert ("mesh", "must not be set: Mesh is a global resource") in errors_of(
        {"type": "Mesh", "name": "m", "mesh": "x"}
    )
