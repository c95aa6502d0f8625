"""Kuma's forms for the routes of a MeshHTTPRoute: MeshTimeout/MeshRetry attached to a MeshHTTPRoute
(top-level ``targetRef: {kind: MeshHTTPRoute, name}`` with ``to: [{targetRef: {kind: Mesh}, default}]``), and
MeshHTTPRoute rules without ``backendRefs`` (their requests go to the ``to`` item's service).

The inputs are the examples of Kuma's docs pages (MeshTimeout "Target MeshHTTPRoute", MeshHTTPRoute "Traffic
modifications"), in their Universal form; the expectations are what those pages say they do.
"""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import MeshContext, build_mesh_context
from isthmus.ir.build import build_proxy_ir
from isthmus.ir.model import OutboundListener, ProxyIR
from isthmus.ir.traffic import HttpRoute
from isthmus.policies.catalog import plugin_for
from isthmus.policies.explain import explain
from isthmus.policies.meshhttproute.plugin import subset_cluster_name
from isthmus.policies.plugin import PolicyInputs
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds.translate.routes import route_configuration

REG = default_registry()

MESH = """
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: frontend-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 20001
    servicePort: 8001
    tags: {kuma.io/service: frontend, kuma.io/protocol: http, app: frontend}
  outbound:
  - port: 10001
    tags: {kuma.io/service: backend}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.2
  inbound:
  - port: 20002
    servicePort: 3001
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v1}
---
type: Dataplane
mesh: default
name: backend-2
networking:
  address: 127.0.0.3
  inbound:
  - port: 20002
    servicePort: 3001
    tags: {kuma.io/service: backend, kuma.io/protocol: http, version: v2}
"""

# MeshTimeout docs, "Target MeshHTTPRoute" (Universal): the route sends /v2* to backend's version v2 instances,
# and the MeshTimeout "configures timeouts only for requests that are going through route-to-backend-v2 route".
ROUTE_TO_BACKEND_V2 = """
---
type: MeshHTTPRoute
name: route-to-backend-v2
mesh: default
spec:
  targetRef:
    kind: MeshSubset
    tags:
      app: frontend
  to:
    - targetRef:
        kind: MeshService
        name: backend
      rules:
        - matches:
            - path:
                type: PathPrefix
                value: /v2
          default:
            backendRefs:
              - kind: MeshServiceSubset
                name: backend
                tags:
                  version: v2
"""
TIMEOUT_BACKEND_V2 = """
---
type: MeshTimeout
name: backend-v2
mesh: default
spec:
  targetRef:
    kind: MeshHTTPRoute
    name: route-to-backend-v2
  to:
    - targetRef:
        kind: Mesh
      default:
        http:
          requestTimeout: 5s
          streamIdleTimeout: 1h
"""
# the outbound-level configuration (as a new mesh's default MeshTimeout/MeshRetry give)
MESH_WIDE = """
---
type: MeshTimeout
name: mesh-wide
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default:
        connectionTimeout: 5s
        idleTimeout: 1h
        http: {requestTimeout: 15s, streamIdleTimeout: 30m}
---
type: MeshRetry
name: mesh-wide
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
    - targetRef: {kind: Mesh}
      default:
        http: {numRetries: 5, perTryTimeout: 16s, backOff: {baseInterval: 25ms, maxInterval: 250ms}}
"""
RETRY_BACKEND_V2 = """
---
type: MeshRetry
name: backend-v2-retries
mesh: default
spec:
  targetRef:
    kind: MeshHTTPRoute
    name: route-to-backend-v2
  to:
    - targetRef:
        kind: Mesh
      default:
        http:
          numRetries: 10
          retryOn: ["503"]
"""
# MeshHTTPRoute docs, "Traffic modifications": adds x-custom-header when frontend consumes backend; no backendRefs
HEADER_ONLY = """
---
type: MeshHTTPRoute
name: http-route-1
mesh: default
spec:
  targetRef:
    kind: MeshSubset
    tags:
      app: frontend
  to:
    - targetRef:
        kind: MeshService
        name: backend
      rules:
        - matches:
            - path:
                type: Exact
                value: /
          default:
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier:
                  set:
                    - name: x-custom-header
                      value: xyz
"""


def context(extra: str) -> MeshContext:
    rs = [parse_document(d, REG) for d in load_documents(MESH + extra)]
    dps = [r for r in rs if r.type.kind == "Dataplane"]
    return build_mesh_context(rs[0], dps, [r for r in rs if r.type.is_policy])


def frontend(extra: str) -> ProxyIR:
    return build_proxy_ir(context(extra), "frontend-1", None)


def backend_outbound(ir: ProxyIR) -> OutboundListener:
    return next(o for o in ir.outbounds if o.service == "backend")


def route_of(outbound: OutboundListener, policy: str) -> HttpRoute:
    return next(r for r in outbound.routes if r.name.split("/")[0] == policy)


def envoy_route(outbound: OutboundListener, policy: str) -> Any:
    config: route_pb2.RouteConfiguration = route_configuration(outbound)
    return next(r for r in config.virtual_hosts[0].routes if r.name.split("/")[0] == policy)


def errors_of(doc: str) -> list[str]:
    with pytest.raises(ResourceValidationError) as info:
        for d in load_documents(doc):
            parse_document(d, REG)
    return [str(e) for e in info.value.errors]


# -- MeshTimeout / MeshRetry attached to a MeshHTTPRoute ----------------------------------------------------------
def test_docs_timeout_applies_to_the_routes_requests_only() -> None:
    outbound = backend_outbound(frontend(ROUTE_TO_BACKEND_V2 + TIMEOUT_BACKEND_V2))
    v2 = route_of(outbound, "route-to-backend-v2")
    assert v2.backends[0].cluster == subset_cluster_name("backend", {"version": "v2"})
    assert v2.timeouts is not None
    assert (v2.timeouts.request_ms, v2.timeouts.stream_idle_ms) == (5_000, 3_600_000)
    assert route_of(outbound, "default").timeouts is None  # the rest of backend's requests: the outbound's
    envoy = envoy_route(outbound, "route-to-backend-v2").route
    assert (envoy.timeout.seconds, envoy.idle_timeout.seconds) == (5, 3600)
    assert not envoy_route(outbound, "default").route.HasField("timeout")


def test_route_timeout_is_the_outbounds_with_the_routes_on_top() -> None:
    outbound = backend_outbound(frontend(MESH_WIDE + ROUTE_TO_BACKEND_V2 + TIMEOUT_BACKEND_V2))
    assert outbound.timeouts is not None and outbound.timeouts.request_ms == 15_000
    v2 = route_of(outbound, "route-to-backend-v2").timeouts
    assert v2 is not None
    assert (v2.request_ms, v2.stream_idle_ms, v2.connect_ms, v2.idle_ms) == (
        5_000,
        3_600_000,
        5_000,
        3_600_000,
    )
    default = envoy_route(outbound, "default").route
    assert (default.timeout.seconds, default.idle_timeout.seconds) == (15, 1800)


def test_route_retry_merges_field_by_field_over_the_outbounds() -> None:
    outbound = backend_outbound(frontend(MESH_WIDE + ROUTE_TO_BACKEND_V2 + RETRY_BACKEND_V2))
    v2 = route_of(outbound, "route-to-backend-v2").retry
    assert v2 is not None and v2.http is not None
    assert v2.http.num_retries == 10 and v2.http.retriable_status_codes == (503,)
    assert v2.http.per_try_timeout_ms == 16_000 and v2.http.base_interval_ms == 25  # from the outbound's
    policy = envoy_route(outbound, "route-to-backend-v2").route.retry_policy
    assert policy.num_retries.value == 10 and list(policy.retriable_status_codes) == [503]
    default = envoy_route(outbound, "default").route.retry_policy
    assert default.num_retries.value == 5 and not default.retriable_status_codes


def test_two_attached_policies_merge_the_smaller_name_winning() -> None:
    other = TIMEOUT_BACKEND_V2.replace("name: backend-v2", "name: a-shorter").replace("5s", "7s")
    outbound = backend_outbound(frontend(ROUTE_TO_BACKEND_V2 + TIMEOUT_BACKEND_V2 + other))
    v2 = route_of(outbound, "route-to-backend-v2").timeouts
    assert v2 is not None and (v2.request_ms, v2.stream_idle_ms) == (7_000, 3_600_000)


def test_a_policy_attached_to_another_route_changes_nothing() -> None:
    elsewhere = TIMEOUT_BACKEND_V2.replace("name: route-to-backend-v2", "name: some-other-route")
    outbound = backend_outbound(frontend(ROUTE_TO_BACKEND_V2 + elsewhere))
    assert all(r.timeouts is None for r in outbound.routes) and outbound.timeouts is None


def test_inspect_policies_lists_the_route_level_configuration() -> None:
    ctx = context(MESH_WIDE + ROUTE_TO_BACKEND_V2 + TIMEOUT_BACKEND_V2)
    plugin = plugin_for("MeshTimeout")
    assert plugin is not None
    described = plugin.describe(
        PolicyInputs(ctx, ctx.dataplanes["frontend-1"], ctx.policies_of("MeshTimeout"))
    )
    [outbound] = described["outbounds"]
    assert outbound["conf"]["http"]["requestTimeout"] == "15s"  # the outbound's own, without the route's
    [route] = outbound["routes"]
    assert route["route"].startswith("route-to-backend-v2/")
    assert route["conf"]["http"] == {"requestTimeout": "5s", "streamIdleTimeout": "1h"}
    assert [o["policy"] for o in route["origins"]] == ["backend-v2"]
    assert {o["policy"] for o in outbound["origins"]} == {"mesh-wide", "backend-v2"}


def test_explain_shows_the_routes_timeouts() -> None:
    ctx = context(MESH_WIDE + ROUTE_TO_BACKEND_V2 + TIMEOUT_BACKEND_V2)
    seen = explain(ctx, "frontend-1", "backend", path="/v2/items")
    assert seen["route"]["name"].startswith("route-to-backend-v2/")
    assert seen["timeouts"]["request_ms"] == 5_000
    assert explain(ctx, "frontend-1", "backend", path="/v1")["timeouts"]["request_ms"] == 15_000


ROUTE_POLICY = """
type: {kind}
name: p
mesh: default
spec:
  targetRef: {{kind: MeshHTTPRoute, name: r}}
{body}
"""


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        # Kuma's validator (v2.14 meshtimeout validator.go): connection-level fields are refused on a route
        (
            "MeshTimeout",
            "  to: [{targetRef: {kind: Mesh}, default: {connectionTimeout: 1s}}]",
            "spec.to[0].default.connectionTimeout: cannot be set when the top-level targetRef is a MeshHTTPRoute",
        ),
        (
            "MeshTimeout",
            "  to: [{targetRef: {kind: Mesh}, default: {idleTimeout: 1s}}]",
            "spec.to[0].default.idleTimeout: cannot be set",
        ),
        (
            "MeshTimeout",
            "  to: [{targetRef: {kind: Mesh}, default: {http: {maxStreamDuration: 1s}}}]",
            "spec.to[0].default.http.maxStreamDuration: cannot be set",
        ),
        (
            "MeshTimeout",
            "  to: [{targetRef: {kind: Mesh}, default: {http: {maxConnectionDuration: 1s}}}]",
            "spec.to[0].default.http.maxConnectionDuration: cannot be set",
        ),
        # Kuma accepts it there but only reads it per listener: refused rather than ignored
        (
            "MeshTimeout",
            "  to: [{targetRef: {kind: Mesh}, default: {http: {requestHeadersTimeout: 1s}}}]",
            "spec.to[0].default.http.requestHeadersTimeout: cannot be set",
        ),
        (
            "MeshRetry",
            "  to: [{targetRef: {kind: Mesh}, default: {tcp: {maxConnectAttempt: 2}}}]",
            "spec.to[0].default.tcp",
        ),
        # `to` kinds: Mesh (and MeshExternalService, which Isthmus does not have yet); no from or rules
        (
            "MeshTimeout",
            "  to: [{targetRef: {kind: MeshService, name: backend}, default: {http: {requestTimeout: 1s}}}]",
            "spec.to[0].targetRef.kind: value 'MeshService' is not supported here; allowed: Mesh",
        ),
        (
            "MeshRetry",
            "  to: [{targetRef: {kind: MeshExternalService, name: ext}, default: {http: {numRetries: 1}}}]",
            "spec.to[0].targetRef.kind: MeshExternalService is not supported yet",
        ),
        (
            "MeshTimeout",
            "  to: [{targetRef: {kind: MeshExternalService, name: ext}, default: {http: {requestTimeout: 1s}}}]",
            "spec.to[0].targetRef.kind: MeshExternalService is not supported yet",
        ),
        (
            "MeshTimeout",
            "  from: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 1s}}}]",
            "spec.from: must not be set with targetRef kind MeshHTTPRoute",
        ),
        (
            "MeshTimeout",
            "  rules: [{default: {http: {requestTimeout: 1s}}}]",
            "spec.rules: must not be set with targetRef kind MeshHTTPRoute",
        ),
        ("MeshTimeout", "", "spec.to: must have at least one item"),
        # Isthmus's former top-level default is not Kuma's form: refused with a pointer to Kuma's
        (
            "MeshTimeout",
            "  default: {http: {requestTimeout: 1s}}",
            "spec.default: not a field of this policy; to configure the requests of a MeshHTTPRoute use Kuma's form",
        ),
        (
            "MeshRetry",
            "  default: {http: {numRetries: 1}}",
            "spec.default: not a field of this policy",
        ),
    ],
)
def test_route_attachment_follows_kumas_validator(kind: str, body: str, expected: str) -> None:
    errors = errors_of(ROUTE_POLICY.format(kind=kind, body=body))
    assert any(e.startswith(expected) for e in errors), errors


def test_target_ref_of_kind_mesh_http_route_needs_a_name() -> None:
    doc = ROUTE_POLICY.format(
        kind="MeshRetry", body="  to: [{targetRef: {kind: Mesh}, default: {http: {numRetries: 1}}}]"
    )
    assert any(
        e.startswith("spec.targetRef.name: must be set") for e in errors_of(doc.replace(", name: r", ""))
    )
    labelled = doc.replace("name: r}", "labels: {app: x}}")
    assert any("not supported yet" in e for e in errors_of(labelled)), errors_of(labelled)


# -- MeshHTTPRoute rules without backendRefs ------------------------------------------------------------------------
def test_docs_header_only_rule_goes_to_the_original_destination() -> None:
    outbound = backend_outbound(frontend(HEADER_ONLY))
    route = route_of(outbound, "http-route-1")
    assert [(b.cluster, b.weight) for b in route.backends] == [(outbound.cluster, 1)]
    assert route.request_headers is not None and route.request_headers.set == (("x-custom-header", "xyz"),)
    envoy = envoy_route(outbound, "http-route-1")
    assert envoy.route.cluster == outbound.cluster and envoy.match.path == "/"
    assert [(h.header.key, h.header.value) for h in envoy.request_headers_to_add] == [
        ("x-custom-header", "xyz")
    ]


def test_empty_default_goes_to_the_original_destination() -> None:
    empty = HEADER_ONLY.replace(
        """          default:
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier:
                  set:
                    - name: x-custom-header
                      value: xyz
""",
        "          default: {}\n",
    )
    outbound = backend_outbound(frontend(empty))
    route = route_of(outbound, "http-route-1")
    assert [b.cluster for b in route.backends] == [outbound.cluster] and route.request_headers is None


def test_rule_without_backend_refs_keeps_a_lower_priority_rules_backends() -> None:
    # rules with the same matches merge (JSON merge patch): leaving backendRefs out keeps the other's
    split = ROUTE_TO_BACKEND_V2.replace("route-to-backend-v2", "b-split").replace("/v2", "/")
    headers = HEADER_ONLY.replace("http-route-1", "a-headers").replace("type: Exact", "type: PathPrefix")
    route = route_of(backend_outbound(frontend(split + headers)), "a-headers")
    assert [b.cluster for b in route.backends] == [subset_cluster_name("backend", {"version": "v2"})]
    assert route.request_headers is not None


def test_explain_shows_the_original_destination() -> None:
    seen = explain(context(HEADER_ONLY), "frontend-1", "backend", path="/")
    assert seen["route"]["name"].startswith("http-route-1/")
    [backend] = seen["backends"]
    assert backend["service"] == "backend" and backend["subset"] == {}
    assert (
        backend["cluster"] == backend_outbound(frontend(HEADER_ONLY)).cluster and backend["percent"] == 100.0
    )
    assert {d["dataplane"] for d in seen["destinations"]} == {"backend-1", "backend-2"}
