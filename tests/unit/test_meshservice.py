"""Names the mesh generates: validation, templates, VIP allocation, MeshService generation, IR."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import build_proxy_ir
from isthmus.names import generate, hostnames, vips
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.hostnames import (
    HostnameGeneratorSpec,
    TemplateError,
    check_template,
    parse_template,
    render,
)
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate

REG = default_registry()


def _parse(text: str) -> list:  # type: ignore[type-arg]
    return [parse_document(d, REG) for d in load_documents(text)]


def _field_of(text: str) -> list[str]:
    with pytest.raises(ResourceValidationError) as exc:
        _parse(text)
    return [e.field for e in exc.value.errors]


def test_template_forms() -> None:
    parts = parse_template('{{ .DisplayName }}.{{- .Namespace -}} .svc.{{ label "k8s/x" }}.{{ .Zone }}')
    values = {"DisplayName": "api", "Namespace": "ns", "Zone": "z1"}
    assert render(parts, values, {"k8s/x": "v"}) == "api.ns.svc.v.z1"
    with pytest.raises(TemplateError, match="label k8s/x not found"):
        render(parts, values, {})
    for bad in ('{{ printf "%s" .Name }}', "{{ .Foo }}", "{{ .Name }", "{{ call .Name }}", "{{ index . 1 }}"):
        with pytest.raises(TemplateError):
            parse_template(bad)
    with pytest.raises(TemplateError, match="not a valid DNS name"):
        check_template("{{ .Name }}_x")


def test_validation_names_the_field() -> None:
    assert _field_of(
        "type: HostnameGenerator\nname: g\nspec:\n  template: '{{ .Nope }}'\n  selector: {meshService: {}}"
    ) == ["spec.template"]
    assert _field_of("type: HostnameGenerator\nname: g\nspec:\n  template: 'a.b'\n  selector: {}") == [
        "spec.selector"
    ]
    ms = "type: MeshService\nmesh: default\nname: a\nspec:\n  ports:\n  - port: 80\n    appProtocol: {p}"
    assert _field_of(ms.format(p="kafka")) == ["spec.ports[0].appProtocol"]
    assert _field_of(ms.format(p="http") + "\n  - port: 80") == ["spec.ports"]  # "[1].port: ... ports[0]"
    mes = "type: MeshExternalService\nmesh: default\nname: e\nspec:\n  match: {{port: 443, protocol: tcp}}\n{rest}"
    assert _field_of(mes.format(rest="  endpoints: [{address: 'no way', port: 1}]")) == [
        "spec.endpoints[0].address"
    ]
    assert _field_of(mes.format(rest="")) == ["spec.endpoints"]
    mzs = "type: MeshMultiZoneService\nmesh: default\nname: m\nspec:\n  selector: {meshService: {matchLabels: {}}}\n  ports: []"
    assert set(_field_of(mzs)) == {"spec.selector.meshService.matchLabels", "spec.ports"}
    dp = (
        "type: Dataplane\nmesh: default\nname: d\nnetworking:\n  address: 1.1.1.1\n  inbound:\n"
        "  - {port: 1, tags: {kuma.io/service: s}}\n  outbound:\n  - {port: 2, backendRef: {kind: Other, name: x}}"
    )
    assert _field_of(dp) == ["networking.outbound[0].backendRef.kind"]


def test_vips_stable_and_collision_free() -> None:
    current: dict[vips.Key, str | None] = {("m", "b"): None, ("m", "a"): "241.0.0.7", ("n", "a"): "241.0.0.7"}
    out = vips.allocate("MeshService", current)
    assert out[("m", "a")] == "241.0.0.7"  # kept
    assert len(set(out.values())) == 3
    assert all(ip.startswith("241.") for ip in out.values())
    again = vips.allocate("MeshService", {k: out[k] for k in current})
    assert again == out  # stable when read back from the store
    foreign = vips.allocate("MeshExternalService", {("m", "x"): "241.0.0.1"})
    assert foreign[("m", "x")].startswith("242.")
    remembered = vips.allocate("MeshService", {("m", "a"): None}, {("m", "a"): "241.0.0.9"})
    assert remembered == {("m", "a"): "241.0.0.9"}
    taken: set[str] = set()
    assert vips.legacy_vip("m", "svc", taken) == vips.legacy_vip("m", "svc", set())
    assert vips.legacy_vip("m", "svc", taken) != vips.legacy_vip("m", "svc", taken) or len(taken) == 2


BASE = """
type: Mesh
name: default
meshServices: {mode: Exclusive}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.1
  inbound:
  - {port: 8080, name: web, tags: {kuma.io/service: backend, kuma.io/protocol: http}}
  - {port: 9000, tags: {kuma.io/service: Bad_Name}}
---
type: Dataplane
mesh: default
name: client
labels: {isthmus.io/dns-port: "15053"}
networking:
  address: 10.0.0.2
  inbound:
  - {port: 8080, tags: {kuma.io/service: client}}
"""


def test_generation_from_dataplanes() -> None:
    docs = _parse(BASE)
    dps = [d for d in docs if d.type.kind == "Dataplane"]
    want = generate.desired("default", dps, {}, "zone-1")
    assert set(want) == {"backend", "client"}  # Bad_Name is not a DNS-1035 label: skipped, as Kuma
    assert want["backend"].spec == {
        "selector": {"dataplaneTags": {"kuma.io/service": "backend"}},
        "ports": [{"name": "web", "port": 8080, "targetPort": 8080, "appProtocol": "http"}],
    }
    assert want["backend"].labels["kuma.io/managed-by"] == "meshservice-generator"
    assert want["backend"].labels["kuma.io/zone"] == "zone-1"


def test_hostnames_and_collisions() -> None:
    gen = HostnameGeneratorSpec.model_validate(
        {
            "template": "{{ .DisplayName }}.svc.mesh.local",
            "selector": {"meshService": {"matchLabels": {"kuma.io/origin": "zone"}}},
        }
    )
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    g = hostnames.Generator("local-universal-mesh-service", {"kuma.io/origin": "zone"}, t0, gen)
    a = hostnames.Named("default", "a", {}, t0)
    b = hostnames.Named("default", "b", {"kuma.io/display-name": "a"}, t0)  # renders a.svc.mesh.local too
    remote = hostnames.Named("default", "c", {"kuma.io/origin": "global"}, t0)
    out = hostnames.generate("MeshService", [g], [a, b, remote], "default")
    assert [x["hostname"] for x in out[("default", "a")][0]] == ["a.svc.mesh.local"]
    assert out[("default", "b")][0] == []
    assert out[("default", "b")][1][0]["conditions"][0]["reason"] == "Collision"
    assert out[("default", "c")] == ([], [])


def test_ir_vip_listeners_and_dns() -> None:
    extra = """
---
type: MeshService
mesh: default
name: backend
spec:
  selector: {dataplaneTags: {kuma.io/service: backend}}
  ports: [{port: 80, targetPort: web, appProtocol: http}]
status:
  vips: [{ip: 241.0.0.1}]
  addresses: [{hostname: backend.svc.mesh.local}]
"""
    docs = _parse(BASE + extra)
    mesh = docs[0]
    ctx = build_mesh_context(mesh, [d for d in docs if d.type.kind == "Dataplane"], docs[3:])
    ir = build_proxy_ir(ctx, "client", None)
    vip = [o for o in ir.outbounds if o.address == "241.0.0.1"]
    assert [(o.port, o.service) for o in vip] == [(80, "backend")]
    cluster = vip[0].cluster
    assert next(e.endpoints for e in ir.endpoints if e.cluster == cluster)[0].port == 8080
    assert ir.dns is not None and ir.dns.port == 15053
    assert [(r.name, r.addresses) for r in ir.dns.records] == [("backend.svc.mesh.local", ("241.0.0.1",))]
    messages = translate(ir)
    assert Snapshot.build(messages).consistency_errors() == []
    # a proxy without --dns-port (or transparent proxying) gets no VIP listener
    plain = build_proxy_ir(ctx, "backend-1", None)
    assert not [o for o in plain.outbounds if o.address.startswith("24")] and plain.dns is None
