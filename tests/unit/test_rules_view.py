"""Kuma's rule view of a proxy (``_rules``), on the inputs of Kuma's own API tests
(``pkg/api-server/testdata/resources/inspect/dataplanes/_rules``): the same rules, confs and origins."""

from __future__ import annotations

from typing import Any

from isthmus.catalog import default_registry
from isthmus.cli.output import render_rules
from isthmus.cp.api.models import InspectRules
from isthmus.policies.catalog import plugins
from isthmus.policies.rules_view import inspect_rules
from isthmus.resources.registry import load_documents, parse_document

REG = default_registry()

# Kuma: overriding_meshtimeout.input.yaml
OVERRIDING_MESHTIMEOUT = """
type: Mesh
name: default
---
type: Dataplane
name: dp-1
mesh: default
networking:
  address: 127.0.0.1
  inbound:
    - port: 8080
      tags:
        kuma.io/service: foo
---
type: MeshTimeout
name: default
mesh: default
spec:
  targetRef:
    kind: Mesh
  to:
  - targetRef:
      kind: Mesh
    default:
      idleTimeout: 20s
      connectionTimeout: 2s
      http:
        requestTimeout: 10s
  from:
    - targetRef:
        kind: Mesh
      default:
        idleTimeout: 20s
        connectionTimeout: 2s
        http:
          requestTimeout: 5s
---
type: MeshTimeout
name: override
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: foo
  to:
    - targetRef:
        kind: MeshService
        name: foo
      default:
        http:
          requestTimeout: 15s
    - targetRef:
        kind: MeshService
        name: bar
      default:
        http:
          requestTimeout: 20s
  from:
    - targetRef:
        kind: Mesh
      default:
        connectionTimeout: 20s
"""

# Kuma: meshhttproute.input.yaml (a MeshTimeout attached to a MeshHTTPRoute, another to the route's destination)
ROUTE_LEVEL = """
type: Mesh
name: default
---
type: MeshTimeout
name: on-route
mesh: default
spec:
  targetRef:
    kind: MeshHTTPRoute
    name: the-http-route
  to:
    - targetRef:
        kind: Mesh
      default:
        http:
          requestTimeout: 15s
---
type: MeshTimeout
name: on-service
mesh: default
spec:
  targetRef:
    kind: Mesh
  to:
    - targetRef:
        kind: MeshService
        name: backend_kuma-demo_svc_3001
      default:
        http:
          requestTimeout: 20s
---
type: MeshHTTPRoute
name: the-http-route
mesh: default
spec:
  targetRef:
    kind: MeshService
    name: svc-1
  to:
    - targetRef:
        kind: MeshService
        name: backend_kuma-demo_svc_3001
      rules:
        - matches:
            - path:
                type: PathPrefix
                value: /api
          default:
            backendRefs:
              - kind: MeshServiceSubset
                name: backend_kuma-demo_svc_3001
                tags:
                  version: "1.0"
---
type: Dataplane
name: dp-1
mesh: default
networking:
  address: 127.0.0.1
  inbound:
    - port: 1234
      tags:
        kuma.io/service: svc-1
"""


def rules_of(text: str) -> dict[str, Any]:
    docs = [parse_document(d, REG) for d in load_documents(text)]
    dp = next(r for r in docs if r.type.kind == "Dataplane")
    by_kind = {
        p.resource_type.kind: [r for r in docs if r.type.kind == p.resource_type.kind] for p in plugins()
    }
    doc = inspect_rules(dp, by_kind)
    InspectRules.model_validate(doc)  # the shape the API declares
    return doc


def policy(name: str, kind: str = "MeshTimeout") -> dict[str, Any]:
    return {"type": kind, "mesh": "default", "name": name, "labels": {}}


def service(name: str, negated: bool = False) -> dict[str, Any]:
    return {"key": "kuma.io/service", "value": name, "not": negated}


def test_overriding_meshtimeout_as_kuma_shows_it() -> None:
    doc = rules_of(OVERRIDING_MESHTIMEOUT)
    assert doc["resource"] == {"type": "Dataplane", "mesh": "default", "name": "dp-1", "labels": {}}
    assert doc["httpMatches"] == []
    [rule] = doc["rules"]
    assert rule["type"] == "MeshTimeout" and rule["warnings"] == []
    both = [policy("default"), policy("override")]
    assert rule["toRules"] == [
        {
            "matchers": [service("foo")],
            "conf": {"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "15s"}},
            "origin": both,
        },
        {
            "matchers": [service("bar")],
            "conf": {"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "20s"}},
            "origin": both,
        },
        {
            "matchers": [],
            "conf": {"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "10s"}},
            "origin": [policy("default")],
        },
    ]
    inbound = {"port": 8080, "tags": {"kuma.io/service": "foo"}}
    assert rule["fromRules"] == [
        {
            "inbound": inbound,
            "rules": [
                {
                    "matchers": [],
                    "conf": {
                        "connectionTimeout": "20s",
                        "idleTimeout": "20s",
                        "http": {"requestTimeout": "5s"},
                    },
                    "origin": both,
                }
            ],
        }
    ]
    assert rule["inboundRules"] == [
        {
            "inbound": inbound,
            "rules": [
                {
                    "conf": [
                        {"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "5s"}}
                    ],
                    "match": None,
                    "origin": [{"resourceMeta": policy("default"), "ruleIndex": 0}],
                },
                {
                    "conf": [{"connectionTimeout": "20s"}],
                    "match": None,
                    "origin": [{"resourceMeta": policy("override"), "ruleIndex": 0}],
                },
            ],
        }
    ]
    assert rule["toResourceRules"] == [
        {
            "resourceMeta": {"type": "Mesh", "mesh": "", "name": "default", "labels": {}},
            "resourceSectionName": "",
            "conf": [{"connectionTimeout": "2s", "idleTimeout": "20s", "http": {"requestTimeout": "10s"}}],
            "origin": [{"resourceMeta": policy("default"), "ruleIndex": 0}],
        }
    ]


def test_route_level_confs_show_on_the_route_rule_subset() -> None:
    doc = rules_of(ROUTE_LEVEL)
    [match] = doc["httpMatches"]
    assert match["match"] == [{"path": {"type": "PathPrefix", "value": "/api"}}]
    digest = match["hash"]
    route, timeout = doc["rules"]
    assert route["type"] == "MeshHTTPRoute"
    [route_rule] = route["toRules"]
    assert route_rule["matchers"] == [service("backend_kuma-demo_svc_3001")]
    assert route_rule["origin"] == [policy("the-http-route", "MeshHTTPRoute")]
    assert route_rule["conf"]["rules"][0]["matches"] == match["match"]
    assert timeout["type"] == "MeshTimeout"
    on_hash = {"key": "__rule-matches-hash__", "value": digest, "not": False}
    assert timeout["toRules"] == [
        {
            "matchers": [on_hash, service("backend_kuma-demo_svc_3001")],
            "conf": {"http": {"requestTimeout": "15s"}},
            "origin": [policy("on-service"), policy("on-route")],
        },
        {
            "matchers": [{**on_hash, "not": True}, service("backend_kuma-demo_svc_3001")],
            "conf": {"http": {"requestTimeout": "20s"}},
            "origin": [policy("on-service")],
        },
    ]
    text = render_rules(doc)
    assert 'to route=[{"path":{"type":"PathPrefix","value":"/api"}}], kuma.io/service=backend' in text
    assert "from: on-service, on-route" in text


def test_legacy_to_rules_follow_the_policy_order_of_madr_066() -> None:
    """aaa (to Mesh) and bbb (to MeshService backend), both top-level Mesh: for backend Kuma 2.x merges bbb then
    aaa; the Mesh resource rule lists aaa only."""
    text = """
type: Mesh
name: default
---
type: Dataplane
name: dp-1
mesh: default
networking:
  address: 127.0.0.1
  inbound: [{port: 8080, tags: {kuma.io/service: foo}}]
---
type: MeshTimeout
name: aaa
mesh: default
spec:
  targetRef: {kind: Mesh}
  to: [{targetRef: {kind: Mesh}, default: {http: {requestTimeout: 2s}}}]
---
type: MeshTimeout
name: bbb
mesh: default
spec:
  targetRef: {kind: Mesh}
  to: [{targetRef: {kind: MeshService, name: backend}, default: {http: {requestTimeout: 1s}}}]
"""
    [rule] = rules_of(text)["rules"]
    backend = rule["toRules"][0]
    assert backend["matchers"] == [service("backend")]
    assert backend["origin"] == [policy("bbb"), policy("aaa")]
    assert backend["conf"] == {"http": {"requestTimeout": "2s"}}
    assert [o["resourceMeta"]["name"] for o in rule["toResourceRules"][0]["origin"]] == ["aaa"]


def test_proxy_without_matching_policies_has_no_rules() -> None:
    doc = rules_of(OVERRIDING_MESHTIMEOUT.replace("kuma.io/service: foo", "kuma.io/service: zzz"))
    [rule] = doc["rules"]  # the Mesh-wide policy still applies, override (MeshService foo) does not
    assert all(o["name"] == "default" for r in rule["toRules"] for o in r["origin"])
