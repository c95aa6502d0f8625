"""Matchers Isthmus generates from user input stay within what Envoy accepts (RE2 program size at most 100).

Client-specific MeshFaultInjection: the caller test on ``x-forwarded-client-cert`` uses no regex, so long client
names and tags are accepted, and a URI never matches a longer one it is a prefix of. MeshRetry's method regex
names each method once, however often the policy repeats them. A prefix rewrite's regex ``^<prefix>/*`` is
anchored: RE2 leaves the literal prefix out of the program, so Envoy accepts it at any length (checked against
Envoy 1.40: the same pattern unanchored is refused past ~95 characters).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format
from xds.type.matcher.v3 import matcher_pb2

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.ir.build import Identity, build_proxy_ir
from isthmus.ir.model import Protocol
from isthmus.ir.traffic import HttpRetry, Retry, RouteMatch
from isthmus.policies.meshretry.api import HTTP_METHODS
from isthmus.policies.regex import fullmatch, regex_problem
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.translate import retries, routes, translate
from isthmus.xds.translate.inbound_http import FAULT, element_forms
from isthmus.xds.translate.patches import regex_fields
from tests.golden.test_golden import _cert, _envoy_validate

LONG = "svc-" + "x" * 76  # 80 characters: spiffe://default/<LONG> is far beyond the old regex's limit

RESOURCES = f"""
type: Mesh
name: default
skipCreatingInitialPolicies: ['*']
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 127.0.0.2
  inbound:
  - port: 20002
    servicePort: 8082
    tags: {{kuma.io/service: backend, kuma.io/protocol: http}}
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {{kind: Mesh}}
  from:
  - targetRef: {{kind: Mesh}}
    default: {{action: Allow}}
---
type: MeshFaultInjection
mesh: default
name: long-names
spec:
  targetRef: {{kind: MeshService, name: backend}}
  from:
  - targetRef: {{kind: MeshService, name: {LONG}}}
    default:
      http:
      - abort: {{httpStatus: 500, percentage: 100}}
  - targetRef: {{kind: MeshSubset, tags: {{kuma.io/service: {LONG}, version: {"v" * 80}}}}}
    default:
      http:
      - delay: {{value: 1s, percentage: 100}}
"""


def _backend_listener(tmp_path: Path) -> tuple[list[hcm_pb2.HttpFilter], dict[str, list[object]]]:
    registry = default_registry()
    resources = [parse_document(d, registry) for d in load_documents(RESOURCES)]
    mesh = next(r for r in resources if r.type.kind == "Mesh")
    dps = [r for r in resources if r.type.kind == "Dataplane"]
    policies = [r for r in resources if r.type.is_policy]
    ctx = build_mesh_context(mesh, dps, policies, _cert("ca.pem"))
    xds = translate(build_proxy_ir(ctx, "backend-1", Identity(_cert("cert.pem"), _cert("key.pem"))))
    (inbound,) = [lst for lst in xds[types.LISTENER] if lst.name.startswith("inbound:")]
    hcm = hcm_pb2.HttpConnectionManager()
    inbound.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    return list(hcm.http_filters), xds


def test_long_client_names_are_accepted_by_envoy(tmp_path: Path) -> None:
    filters, xds = _backend_listener(tmp_path)
    faults = [f for f in filters if f.name == FAULT]
    assert len(faults) == 2
    for f in faults:
        assert list(regex_fields(f)) == []  # nothing that grows with the client's URIs is a regex
        wrapped = extension_matcher_pb2.ExtensionWithMatcher()
        assert f.typed_config.Unpack(wrapped)
        assert wrapped.extension_config.name == FAULT
    dicts = {
        type_url: [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs]
        for type_url, msgs in xds.items()
    }
    _envoy_validate(dicts, tmp_path)  # envoy --mode validate with the packaged binary


def test_subset_client_needs_every_uri(tmp_path: Path) -> None:
    filters, _ = _backend_listener(tmp_path)
    wrapped = extension_matcher_pb2.ExtensionWithMatcher()
    filters[[f.name for f in filters].index(FAULT) + 1].typed_config.Unpack(wrapped)  # the MeshSubset one
    (field,) = wrapped.xds_matcher.matcher_list.matchers
    clients = field.predicate.not_matcher
    assert isinstance(clients, matcher_pb2.Matcher.MatcherList.Predicate)
    uris = [
        p.or_matcher.predicate[0].single_predicate.value_match.exact for p in clients.and_matcher.predicate
    ]
    assert sorted(uris) == sorted([f"URI=spiffe://default/{LONG}", f"URI=kuma://version/{'v' * 80}"])


def _accepts(element: str, header: str) -> bool:
    """Whether one of ``element_forms`` accepts ``header``, with Envoy's string-matcher semantics."""
    for m in element_forms(element):
        kind = m.WhichOneof("match_pattern")
        value = getattr(m, kind)
        if {
            "exact": header == value,
            "prefix": header.startswith(value),
            "suffix": header.endswith(value),
            "contains": value in header,
        }[kind]:
            return True
    return False


URI = "spiffe://default/svc"
HEADERS = [
    "",
    f"URI={URI}",
    f"URI={URI}2",
    f"By=spiffe://default/backend;Hash=ab12;URI={URI}",
    f"By=spiffe://default/backend;Hash=ab12;URI={URI}2",
    f"By=spiffe://default/backend;Hash=ab12;URI={URI};URI=kuma://version/v1",
    f"By=spiffe://default/backend;Hash=ab12;URI={URI}2;URI=kuma://version/v1",
    f"By=spiffe://default/backend;Hash=ab12;URI=kuma://version/v1;URI={URI}",
    f"By=spiffe://default/backend;Hash=ab12;URI=kuma://version/v1;URI={URI}-x",
    f"By=x;URI=spiffe://default/other,By=y;URI={URI}",  # elements separated by ','
    f"By=x;URI={URI},By=y;URI=spiffe://default/other",
    f"By=x;URI={URI}2,By=y;URI=spiffe://default/other",
    f"By=x;URI=a{URI}",
    f"By=x;xURI={URI}",
    f"By={URI};URI=spiffe://default/other",  # the element is URI=..., not By=...
    f"URI={URI};",
    f",URI={URI}",
]


@pytest.mark.parametrize("header", HEADERS)
def test_forms_accept_what_the_old_regex_accepted(header: str) -> None:
    element = f"URI={URI}"
    old = f"(.*[;,])?{re.escape(element)}([;,].*)?"
    assert _accepts(element, header) == fullmatch(old, header)


def test_a_uri_does_not_match_a_longer_one() -> None:
    assert not _accepts(f"URI={URI}", f"By=b;Hash=h;URI={URI}2")
    assert not _accepts(f"URI={URI}", f"By=b;Hash=h;URI={URI}2;URI=kuma://version/v1")
    assert _accepts(f"URI={URI}", f"By=b;Hash=h;URI={URI}2;URI={URI}")


def test_retry_methods_regex_is_bounded() -> None:
    methods = tuple(HTTP_METHODS.values()) * 20  # a policy may repeat its retryOn entries
    action = route_components_pb2.RouteAction()
    retries.route(action, Retry(http=HttpRetry(num_retries=1, retriable_methods=methods)), Protocol.HTTP)
    ((_, pattern),) = regex_fields(action)
    assert sorted(pattern.split("|")) == sorted(HTTP_METHODS.values())
    assert regex_problem(pattern) is None


def test_prefix_rewrite_regex_is_bounded() -> None:
    action = route_components_pb2.RouteAction()
    routes._prefix_rewrite(action, RouteMatch(path_type="PathPrefix", path="/" + "api-v1." * 100), "/")
    ((_, pattern),) = regex_fields(action)
    assert len(pattern) > 700 and regex_problem(pattern) is None
