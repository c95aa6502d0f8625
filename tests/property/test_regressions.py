"""Inputs the property tests found, kept as fixed cases: each one was accepted and then broke generation (an
exception) or was refused by Envoy (a NACK, forever). Each must now be refused at the door with the field
named, or be generated into a configuration Envoy accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.xds.translate.patches import PatchError
from tests.property.envoy import validate_all
from tests.property.pipeline import generate, parse_all
from tests.property.test_generation import BASE_DOCS, _with


def _policy(kind: str, spec: str, name: str = "p1") -> list[dict[str, Any]]:
    return [{"type": kind, "mesh": "default", "name": name, "spec": yaml.safe_load(spec)}]


TO_MESH = "targetRef: {kind: Mesh}\nto:\n- targetRef: {kind: Mesh}\n  default: "
FROM_MESH = "targetRef: {kind: Mesh}\nfrom:\n- targetRef: {kind: Mesh}\n  default: "
RULES = "targetRef: {kind: Mesh}\nrules:\n- default: "
ROUTE = """targetRef: {kind: Mesh}
to:
- targetRef: {kind: MeshService, name: backend}
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    default: """

_FILTER = "{backendRefs: [{name: backend}], filters: [{type: RequestHeaderModifier, "


def _dataplane(**networking: Any) -> dict[str, Any]:
    """The base mesh's web-1 with more ``networking`` fields."""
    [web] = [d for d in BASE_DOCS if d["name"] == "web-1"]
    return {**web, "networking": {**web["networking"], **networking}}


# (id, documents added to the base mesh, the field a refusal must name, or None if it must be accepted)
CASES: list[tuple[str, list[dict[str, Any]], str | None]] = [
    (
        "route-weight-overflow",
        _policy(
            "MeshHTTPRoute",
            ROUTE + "{backendRefs: [{name: backend, weight: 18446744073709551616}, {name: db, weight: 1}]}",
            "route-2",
        ),
        None,
    ),
    (
        "tcp-route-weight-sum",
        _policy(
            "MeshTCPRoute",
            "targetRef: {kind: Mesh}\nto:\n- targetRef: {kind: MeshService, name: db}\n  rules:\n"
            "  - default: {backendRefs: [{name: db, weight: 4294967295}, {name: web, weight: 4294967295}]}",
        ),
        None,
    ),
    (
        "circuit-breaker-uint32",
        _policy("MeshCircuitBreaker", TO_MESH + "{connectionLimits: {maxConnections: 18446744073709551616}}"),
        "spec.to[0].default.connectionLimits.maxConnections",
    ),
    (
        "circuit-breaker-nan-factor",
        _policy(
            "MeshCircuitBreaker",
            TO_MESH + "{outlierDetection: {detectors: {successRate: {standardDeviationFactor: 'nan'}}}}",
        ),
        "spec.to[0].default.outlierDetection.detectors.successRate.standardDeviationFactor",
    ),
    (
        "circuit-breaker-zero-interval",
        _policy("MeshCircuitBreaker", TO_MESH + "{outlierDetection: {interval: 0s}}"),
        "spec.to[0].default.outlierDetection.interval",
    ),
    (
        "fault-bandwidth-overflow",
        _policy(
            "MeshFaultInjection",
            FROM_MESH + "{http: [{responseBandwidth: {limit: 99999999999999gbps, percentage: 1}}]}",
        ),
        "spec.from[0].default.http[0].responseBandwidth.limit",
    ),
    (
        "fault-abort-100",
        _policy("MeshFaultInjection", FROM_MESH + "{http: [{abort: {httpStatus: 100, percentage: 1}}]}"),
        "spec.from[0].default.http[0].abort.httpStatus",
    ),
    (
        "fault-zero-delay",
        _policy("MeshFaultInjection", FROM_MESH + "{http: [{delay: {value: 0s, percentage: 1}}]}"),
        "spec.from[0].default.http[0].delay.value",
    ),
    (
        "rate-limit-zero",
        _policy("MeshRateLimit", RULES + "{local: {http: {requestRate: {num: 0, interval: 1s}}}}"),
        "spec.rules[0].default.local.http.requestRate.num",
    ),
    (
        "rate-limit-pseudo-header",
        _policy(
            "MeshRateLimit",
            RULES + "{local: {http: {requestRate: {num: 1, interval: 1s}, "
            "onRateLimit: {headers: {set: [{name: ':status', value: x}]}}}}}",
        ),
        "spec.rules[0].default.local.http.onRateLimit.headers.set[0].name",
    ),
    (
        "rate-limit-header-newline",
        _policy(
            "MeshRateLimit",
            RULES + "{local: {http: {requestRate: {num: 1, interval: 1s}, "
            'onRateLimit: {headers: {add: [{name: x-a, value: "a\\nb"}]}}}}}',
        ),
        "spec.rules[0].default.local.http.onRateLimit.headers.add[0].value",
    ),
    (
        "health-check-zero-interval",
        _policy("MeshHealthCheck", TO_MESH + "{interval: 0s}"),
        "spec.to[0].default.interval",
    ),
    (
        "health-check-host-header",
        _policy(
            "MeshHealthCheck", TO_MESH + "{http: {requestHeadersToAdd: {set: [{name: Host, value: x}]}}}"
        ),
        "spec.to[0].default.http.requestHeadersToAdd.set[0].name",
    ),
    (
        "health-check-path-newline",
        _policy("MeshHealthCheck", TO_MESH + '{http: {path: "/a\\nb"}}'),
        "spec.to[0].default.http.path",
    ),
    (
        "health-check-panic-threshold",
        _policy("MeshHealthCheck", TO_MESH + "{healthyPanicThreshold: 'abc'}"),
        "spec.to[0].default.healthyPanicThreshold",
    ),
    (
        "health-check-empty-payload",
        _policy("MeshHealthCheck", TO_MESH + "{tcp: {send: '', receive: ['']}}"),
        None,
    ),
    (
        "retry-backoff-order",
        _policy("MeshRetry", TO_MESH + "{http: {backOff: {baseInterval: 2s, maxInterval: 1s}}}"),
        "spec.to[0].default.http.backOff.maxInterval",
    ),
    (
        "retry-backoff-crossed-by-merge",
        _policy("MeshRetry", TO_MESH + "{http: {backOff: {baseInterval: 2s}}}", "a")
        + _policy(
            "MeshRetry",
            "targetRef: {kind: Mesh}\nto:\n- targetRef: {kind: MeshService, name: backend}\n"
            "  default: {http: {backOff: {maxInterval: 1s}}}",
            "b",
        ),
        None,
    ),
    (
        "timeout-zero-tcp-duration",
        _policy("MeshTimeout", TO_MESH + "{http: {maxConnectionDuration: 0s}}"),
        None,
    ),
    (
        "ring-sizes",
        _policy(
            "MeshLoadBalancingStrategy",
            TO_MESH + "{loadBalancer: {type: RingHash, ringHash: {minRingSize: 2000, maxRingSize: 1500}}}",
        ),
        "spec.to[0].default.loadBalancer.ringHash.minRingSize",
    ),
    (
        "ring-max-below-envoy-min",
        _policy(
            "MeshLoadBalancingStrategy",
            TO_MESH + "{loadBalancer: {type: RingHash, ringHash: {maxRingSize: 100}}}",
        ),
        None,
    ),
    (
        "route-header-empty-prefix",
        _policy(
            "MeshHTTPRoute",
            "targetRef: {kind: Mesh}\nto:\n- targetRef: {kind: MeshService, name: backend}\n  rules:\n"
            "  - matches: [{headers: [{type: Prefix, name: x-a, value: ''}]}]\n"
            "    default: {backendRefs: [{name: backend}]}",
            "route-2",
        ),
        None,
    ),
    (
        "tls-versions-crossed-by-merge",
        _policy("MeshTLS", RULES + "{tlsVersion: {min: TLS13}}", "a")
        + _policy(
            "MeshTLS",
            "targetRef: {kind: MeshService, name: backend}\nrules:\n- default: {tlsVersion: {max: TLS12}}",
            "b",
        ),
        None,
    ),
    (
        "tls-versions-order",
        _policy("MeshTLS", RULES + "{tlsVersion: {min: TLS13, max: TLS12}}"),
        "spec.rules[0].default.tlsVersion.min",
    ),
    (
        "dataplane-inbound-outbound-same-port",
        [_dataplane(outbound=[{"port": 20001, "tags": {"kuma.io/service": "backend"}}])],
        "networking.outbound[0].port",
    ),
    (
        "dataplane-outbound-admin-same-port",
        [_dataplane(admin={"port": 10001})],
        "networking.admin.port",
    ),
    (
        "route-set-pseudo-header",
        _policy(
            "MeshHTTPRoute", ROUTE + _FILTER + "requestHeaderModifier: {set: [{name: ':path', value: /x}]}}]}"
        ),
        "spec.to[0].rules[0].default.filters[0].requestHeaderModifier.set[0].name",
    ),
    (
        "route-set-host-header",
        _policy(
            "MeshHTTPRoute", ROUTE + _FILTER + "requestHeaderModifier: {set: [{name: host, value: x}]}}]}"
        ),
        "spec.to[0].rules[0].default.filters[0].requestHeaderModifier.set[0].name",
    ),
    (
        "route-remove-authority",
        _policy("MeshHTTPRoute", ROUTE + _FILTER + "requestHeaderModifier: {remove: [':authority']}}]}"),
        "spec.to[0].rules[0].default.filters[0].requestHeaderModifier.remove[0]",
    ),
    (
        "route-response-header-newline",
        _policy(
            "MeshHTTPRoute",
            ROUTE + "{backendRefs: [{name: backend}], filters: [{type: ResponseHeaderModifier, "
            'responseHeaderModifier: {add: [{name: x-a, value: "a\\nb"}]}}]}',
        ),
        "spec.to[0].rules[0].default.filters[0].responseHeaderModifier.add[0].value",
    ),
    (
        "route-rewrite-path-newline",
        _policy(
            "MeshHTTPRoute",
            ROUTE + "{backendRefs: [{name: backend}], filters: [{type: URLRewrite, "
            'urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: "/b\\n"}}}]}',
        ),
        "spec.to[0].rules[0].default.filters[0].urlRewrite.path.replacePrefixMatch",
    ),
    (
        "route-redirect-path-nul",
        _policy(
            "MeshHTTPRoute",
            ROUTE + "{filters: [{type: RequestRedirect, "
            'requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: "/b\\0"}}}]}',
        ),
        "spec.to[0].rules[0].default.filters[0].requestRedirect.path.replaceFullPath",
    ),
    (
        "route-header-modifiers-valid",
        _policy(
            "MeshHTTPRoute",
            ROUTE + _FILTER + "requestHeaderModifier: {set: [{name: X-Set, value: 'a b'}], "
            "add: [{name: x-add, value: ''}], remove: [x-remove]}}]}",
        ),
        None,
    ),
    (
        "proxy-patch-through-a-number",
        _policy(
            "MeshProxyPatch",
            "targetRef: {kind: Mesh}\ndefault:\n  appendModifications:\n  - cluster:\n      operation: Patch\n"
            "      jsonPatches: [{op: add, path: /api, value: 179}, {op: add, path: /api/v1, value: 179}]",
        ),
        "spec.default.appendModifications[0].cluster.jsonPatches[1].path",
    ),
]


@pytest.mark.parametrize(("docs", "field"), [(d, f) for _, d, f in CASES], ids=[c[0] for c in CASES])
def test_found_input(docs: list[dict[str, Any]], field: str | None, tmp_path: Path) -> None:
    all_docs = BASE_DOCS
    for doc in docs:
        all_docs = _with(all_docs, doc)
    parsed = parse_all(all_docs)
    refused = [e.field for _, exc in parsed.refused for e in exc.errors]
    if field is not None:
        assert refused == [field]
        return
    assert refused == []
    assert parsed.mesh is not None
    outcomes = generate(parsed.mesh, parsed.dataplanes, parsed.policies)
    configs = {o.name: o.resources for o in outcomes if o.resources is not None}
    assert len(configs) == len(parsed.dataplanes)
    assert validate_all(configs, tmp_path) == {}


def test_patch_through_a_resource_value_is_a_contained_patch_error() -> None:
    """A jsonPatches path through a plain value of the resource (``/name`` is a string) is only known at
    generation: a PatchError naming the path (contained by the reconciler), not a TypeError."""
    docs = _with(
        BASE_DOCS,
        _policy(
            "MeshProxyPatch",
            "targetRef: {kind: Mesh}\ndefault:\n  appendModifications:\n  - cluster:\n      operation: Patch\n"
            "      jsonPatches: [{op: add, path: /name/x, value: 1}]",
        )[0],
    )
    parsed = parse_all(docs)
    assert parsed.refused == [] and parsed.mesh is not None
    outcomes = generate(parsed.mesh, parsed.dataplanes, parsed.policies)
    assert outcomes and all(isinstance(o.error, PatchError) for o in outcomes)
    assert all("jsonPatches add: /name/x: /name is" in str(o.error) for o in outcomes)
