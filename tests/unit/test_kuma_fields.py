"""Kuma fields Isthmus either acts on as Kuma does or refuses at apply: nothing is accepted and then ignored.

Inputs are Kuma's documented forms (its e2e and validator tests, v2.14.3); the expected behaviour is Kuma's
(membership: ``pkg/core/managers/apis/dataplane/membership_validator.go``; Ignored inbounds:
``GetHealthyInbounds`` and the inbound generator; targetRef ``mesh``/``namespace``:
``pkg/core/resources/apis/mesh/validators.go``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import build_proxy_ir
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.registry import Resource, from_record, load_documents, parse_document
from isthmus.store.base import Record

REG = default_registry()


def refusal(doc: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ResourceValidationError) as caught:
        parse_document(doc, REG)
    ((field, reason),) = [(e.field, e.reason) for e in caught.value.errors]
    return field, reason


def loads_from_store(doc: dict[str, Any]) -> Resource:
    """A record written before the refusal existed still loads (the control plane restarts with it)."""
    now = datetime.now(UTC)
    spec = {k: v for k, v in doc.items() if k not in ("type", "mesh", "name")}
    record = Record(doc["type"], doc.get("mesh", ""), doc["name"], spec, {}, 1, now, now)
    return from_record(record, REG)


# -- Mesh ------------------------------------------------------------------------------------------------------------
# test/e2e_env/universal/externalservices/zoneegress_externalservices.go
KUMA_MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
networking:
  outbound:
    passthrough: false
routing:
  zoneEgress: true
"""


def test_kumas_passthrough_false_and_zone_egress_are_accepted() -> None:
    spec = parse_document(yaml.safe_load(KUMA_MESH), REG).spec
    assert isinstance(spec, MeshSpec) and spec.routing is not None and spec.routing.zone_egress is True
    assert isinstance(loads_from_store(yaml.safe_load(KUMA_MESH)).spec, MeshSpec)


def test_kumas_defaults_for_passthrough_and_routing_are_accepted() -> None:
    doc = {
        "type": "Mesh",
        "name": "default",
        "networking": {"outbound": {"passthrough": True}},
        "routing": {
            "localityAwareLoadBalancing": False,
            "zoneEgress": False,
            "defaultForbidMeshExternalServiceAccess": False,
        },
    }
    assert parse_document(doc, REG).name == "default"


@pytest.mark.parametrize("field", ["localityAwareLoadBalancing", "defaultForbidMeshExternalServiceAccess"])
def test_other_routing_switches_are_refused(field: str) -> None:
    doc = {"type": "Mesh", "name": "default", "routing": {field: True}}
    assert refusal(doc) == (f"routing.{field}", "true is not supported yet")


# pkg/core/resources/apis/mesh/mesh_validator_test.go: legacy backends
LEGACY: dict[str, dict[str, Any]] = {
    "logging": {
        "defaultBackend": "file-1",
        "backends": [{"name": "file-1", "type": "file", "conf": {"path": "/tmp/service.log"}}],
    },
    "tracing": {
        "defaultBackend": "zipkin-us",
        "backends": [
            {"name": "zipkin-us", "type": "zipkin", "conf": {"url": "http://zipkin.local:9411/api/v2/spans"}}
        ],
    },
    "metrics": {
        "enabledBackend": "prometheus-1",
        "backends": [
            {"name": "prometheus-1", "type": "prometheus", "conf": {"port": 1234, "path": "/metrics"}}
        ],
    },
}


@pytest.mark.parametrize("section", sorted(LEGACY))
def test_legacy_backend_sections_are_refused(section: str) -> None:
    doc = {"type": "Mesh", "name": "default", section: LEGACY[section]}
    field, reason = refusal(doc)
    assert field == section
    assert reason == f"{section} is not supported yet (Kuma's legacy backends section)"
    loads_from_store(doc)
    assert parse_document({"type": "Mesh", "name": "default", section: {}}, REG).name == "default"


# -- mesh membership: test/e2e_env/universal/membership/membership.go ---------------------------------------------
MEMBERSHIP = yaml.safe_load("""
type: Mesh
name: membership
constraints:
  dataplaneProxy:
    requirements:
    - tags:
        kuma.io/service: demo-client
    restrictions:
    - tags:
        kuma.io/service: test-server
""")


def dataplane_spec(*inbound_tags: dict[str, str], gateway: dict[str, str] | None = None) -> DataplaneSpec:
    net: dict[str, Any] = {
        "address": "127.0.0.1",
        "inbound": [{"port": 20001 + i, "tags": tags} for i, tags in enumerate(inbound_tags)],
    }
    if gateway is not None:
        net["gateway"] = {"tags": gateway}
    return DataplaneSpec.model_validate({"networking": net})


def constraints(mesh_doc: dict[str, Any]) -> Any:
    spec = parse_document(mesh_doc, REG).spec
    assert isinstance(spec, MeshSpec)
    return spec.dataplane_constraints


def test_membership_lets_in_a_dataplane_that_fulfills_a_requirement() -> None:
    dp = dataplane_spec({"kuma.io/service": "demo-client"})
    assert dp.membership_problem("membership", constraints(MEMBERSHIP)) is None


def test_membership_keeps_out_a_dataplane_that_fulfills_no_requirement() -> None:
    dp = dataplane_spec({"kuma.io/service": "test-server", "version": "v1"})
    assert dp.membership_problem("membership", constraints(MEMBERSHIP)) == (
        "networking.inbound[0].tags",
        'dataplane cannot be a member of mesh "membership" because its tags '
        '"kuma.io/service=test-server version=v1" does not fulfill any requirements defined on the Mesh',
    )


def test_every_inbound_must_qualify() -> None:
    # membership_validator_test.go "when dp fails to fulfill requirements"
    mesh = {
        "type": "Mesh",
        "name": "default",
        "constraints": {"dataplaneProxy": {"requirements": [{"tags": {"kuma.io/service": "backend"}}]}},
    }
    dp = dataplane_spec({"kuma.io/service": "backend"}, {"kuma.io/service": "backend-api"})
    assert dp.membership_problem("default", constraints(mesh)) == (
        "networking.inbound[1].tags",
        'dataplane cannot be a member of mesh "default" because its tags "kuma.io/service=backend-api" '
        "does not fulfill any requirements defined on the Mesh",
    )


def test_a_restricted_tag_keeps_a_dataplane_out() -> None:
    # membership_validator_test.go "when dp uses tag value that is denied"
    mesh = {
        "type": "Mesh",
        "name": "default",
        "constraints": {
            "dataplaneProxy": {
                "requirements": [{"tags": {"kuma.io/service": "backend"}}],
                "restrictions": [{"tags": {"kuma.io/zone": "east"}}],
            }
        },
    }
    dp = dataplane_spec({"kuma.io/service": "backend", "kuma.io/zone": "east"})
    assert dp.membership_problem("default", constraints(mesh)) == (
        "networking.inbound[0].tags",
        'dataplane cannot be a member of mesh "default" because its tags '
        '"kuma.io/service=backend kuma.io/zone=east" matches restricted tags "kuma.io/zone=east" '
        "defined on the Mesh",
    )


def test_a_wildcard_requires_the_tag_with_any_value_and_gateways_are_checked() -> None:
    # membership_validator_test.go "when dp do not provide required tag"
    mesh = {
        "type": "Mesh",
        "name": "default",
        "constraints": {
            "dataplaneProxy": {"requirements": [{"tags": {"kuma.io/service": "backend", "team": "*"}}]}
        },
    }
    wanted = constraints(mesh)
    assert (
        dataplane_spec({"kuma.io/service": "backend", "team": "a"}).membership_problem("default", wanted)
        is None
    )
    field, _ = dataplane_spec({"kuma.io/service": "backend"}).membership_problem("default", wanted) or (
        "",
        "",
    )
    assert field == "networking.inbound[0].tags"
    gateway = DataplaneSpec.model_validate(
        {"networking": {"address": "127.0.0.1", "gateway": {"tags": {"kuma.io/service": "edge"}}}}
    )
    assert (gateway.membership_problem("default", wanted) or ("",))[0] == "networking.gateway.tags"


def test_constraint_selectors_need_a_tag() -> None:
    doc = {"type": "Mesh", "name": "m", "constraints": {"dataplaneProxy": {"requirements": [{"tags": {}}]}}}
    assert refusal(doc) == ("constraints.dataplaneProxy.requirements[0].tags", "must have at least one tag")


# -- Dataplane -------------------------------------------------------------------------------------------------------
def dataplane(**extra: Any) -> dict[str, Any]:
    inbound: dict[str, Any] = {"port": 20001, "servicePort": 8001, "tags": {"kuma.io/service": "web"}}
    inbound.update(extra.pop("inbound", {}))
    networking = {"address": "127.0.0.1", "inbound": [inbound], **extra.pop("networking", {})}
    return {"type": "Dataplane", "mesh": "default", "name": "web-1", "networking": networking, **extra}


REFUSED_DATAPLANE_FIELDS = [
    # transparentProxying is acted on (isthmus dp run --transparent-proxy): tests/unit/test_transparent_proxy.py
    (
        {
            "probes": {
                "port": 9000,
                "endpoints": [{"inboundPort": 8080, "inboundPath": "/healthz", "path": "/8080"}],
            }
        },
        "probes",
        "probes is not supported yet (Kuma's virtual probes, for Kubernetes)",
    ),
    (
        {"metrics": {"type": "prometheus", "conf": {"port": 1234, "path": "/metrics"}}},
        "metrics",
        "metrics is not supported yet (Kuma's legacy metrics backend of the proxy)",
    ),
    # serviceProbe is acted on (Kuma's HDS): tests/unit/test_hds.py
    (
        {"inbound": {"tags": {"kuma.io/service": "kafka", "kuma.io/protocol": "kafka"}}},
        "networking.inbound[0].tags",
        "tag 'kuma.io/protocol': kafka is not supported yet (Kuma adds Envoy's Kafka broker filter, which "
        "Isthmus's Envoy lacks; use tcp)",
    ),
]


@pytest.mark.parametrize(("extra", "field", "reason"), REFUSED_DATAPLANE_FIELDS, ids=lambda v: str(v)[:30])
def test_dataplane_fields_not_acted_on_are_refused_naming_the_field(
    extra: dict[str, Any], field: str, reason: str
) -> None:
    doc = dataplane(**extra)
    assert refusal(doc) == (field, reason)
    assert isinstance(loads_from_store(doc).spec, DataplaneSpec)


def test_kafka_outbounds_are_refused_too() -> None:
    doc = dataplane(
        networking={
            "outbound": [{"port": 10001, "tags": {"kuma.io/service": "k", "kuma.io/protocol": "kafka"}}]
        }
    )
    field, reason = refusal(doc)
    assert field == "networking.outbound[0].tags" and "kafka is not supported yet" in reason


# -- Ignored inbounds ------------------------------------------------------------------------------------------------
# pkg/plugins/policies/core/matchers/testdata/matchedpolicies/dataplanepolicies/07.dataplane.yaml
IGNORED = """
type: Mesh
name: mesh-1
---
type: Dataplane
mesh: mesh-1
name: dp-1
networking:
  address: 1.1.1.1
  inbound:
    - port: 8080
      tags:
        kuma.io/service: web
        kuma.io/protocol: http
        version: v1
      state: Ignored
---
type: Dataplane
mesh: mesh-1
name: dp-2
networking:
  address: 1.1.1.2
  inbound:
    - port: 8080
      tags:
        kuma.io/service: web
        version: v2
---
type: Dataplane
mesh: mesh-1
name: client
networking:
  address: 1.1.1.3
  inbound:
    - port: 8080
      tags:
        kuma.io/service: client
  outbound:
    - port: 10001
      tags:
        kuma.io/service: web
"""


def test_an_ignored_inbound_keeps_its_listener_but_is_nobodys_endpoint() -> None:
    mesh, *dps = (parse_document(d, REG) for d in load_documents(IGNORED))
    ctx = build_mesh_context(mesh, dps, [])
    # Kuma 2.x: the listener exists (warm, with its identity and policies) ...
    own = build_proxy_ir(ctx, "dp-1", None)
    assert [i.name for i in own.inbounds] == ["inbound:1.1.1.1:8080"]
    # ... but other proxies neither balance over it nor infer the service's protocol from it
    assert [e.dataplane for e in ctx.endpoints["web"]] == ["dp-2"]
    client = build_proxy_ir(ctx, "client", None)
    (web,) = [s for s in client.endpoints if s.cluster == "web"]
    assert [(e.address, e.port) for e in web.endpoints] == [("1.1.1.2", 8080)]
    (outbound,) = client.outbounds
    assert outbound.protocol.value == "tcp"


# -- targetRef ------------------------------------------------------------------------------------------------------
def timeout(target_ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "MeshTimeout",
        "mesh": "default",
        "name": "t",
        "spec": {
            "targetRef": target_ref,
            "to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": "20s"}}],
        },
    }


@pytest.mark.parametrize("kind", [{"kind": "Mesh"}, {"kind": "MeshService", "name": "web"}])
def test_target_ref_mesh_is_refused_with_every_kind_as_kuma_does(kind: dict[str, str]) -> None:
    field, reason = refusal(timeout({**kind, "mesh": "other"}))
    assert (field, reason) == ("spec.targetRef.mesh", f"must not be set with kind {kind['kind']}")


def test_target_ref_namespace() -> None:
    # Kuma refuses namespace with kind Mesh/MeshSubset/MeshServiceSubset; elsewhere it names a Kubernetes namespace
    assert refusal(timeout({"kind": "Mesh", "namespace": "kuma-demo"})) == (
        "spec.targetRef.namespace",
        "must not be set with kind Mesh",
    )
    assert refusal(timeout({"kind": "MeshService", "name": "web", "namespace": "kuma-demo"})) == (
        "spec.targetRef.namespace",
        "namespace is not supported yet (Isthmus resources have no namespaces)",
    )
    stored = timeout({"kind": "MeshService", "name": "web", "namespace": "kuma-demo"})
    now = datetime.now(UTC)
    record = Record("MeshTimeout", "default", "t", stored["spec"], {}, 1, now, now)
    assert from_record(record, REG).name == "t"
