"""Kong entities -> Envoy resources (isthmus.gateway.translate), checked against the router and ``envoy --mode validate``."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from isthmus.dp.envoy_binary import find_envoy_binary
from isthmus.gateway.envoy_routes import cluster_name, route_configuration
from isthmus.gateway.router import Request, RouteSpec, match, sort_routes
from isthmus.gateway.translate import ListenAddress, translate
from isthmus.xds import types

WS = "default"
SVC = "6f1d0b1e-0000-4000-8000-000000000001"
SVC2 = "6f1d0b1e-0000-4000-8000-000000000002"


def _route(rid: str, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "service": {"id": fields.pop("service", SVC)}, **fields}


def _entities(routes: list[dict[str, Any]], service_path: str | None = None) -> dict[str, Any]:
    return {
        "services": {
            SVC: {"id": SVC, "host": "127.0.0.1", "port": 9000, "protocol": "http", "path": service_path,
                  "connect_timeout": 2000, "read_timeout": 30000, "write_timeout": 40000, "retries": 3},
            SVC2: {"id": SVC2, "host": "api.example.com", "port": 443, "protocol": "https", "tls_verify": True},
        },
        "routes": {r["id"]: r for r in routes},
    }  # fmt: skip


def _rid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _simulate(config: dict[str, Any], path: str, host: str = "", method: str = "GET") -> tuple[str, Any]:
    """What Envoy does with a normalised request: the first route that matches, and the path it sends."""
    for r in config["virtual_hosts"][0]["routes"]:
        m = r["match"]
        if "path" in m and m["path"] != path:
            continue
        if "prefix" in m and not path.startswith(m["prefix"]):
            continue
        if "safe_regex" in m and not re.fullmatch(m["safe_regex"]["regex"], path):
            continue
        ok = True
        for h in m.get("headers", []):
            value = {":authority": host, ":method": method}.get(h["name"], "")
            if not re.fullmatch(h["string_match"]["safe_regex"]["regex"], value):
                ok = False
        if not ok:
            continue
        if "direct_response" in r:
            return r["name"], r["direct_response"]["status"]
        rewrite = r["route"].get("regex_rewrite")
        out = path
        if rewrite:
            found = re.search(rewrite["pattern"]["regex"], path)
            assert found is not None
            out = path[: found.start()] + rewrite["substitution"] + path[found.end() :]
        return r["name"], out
    raise AssertionError("no route: the last route must catch everything")


ROUTES = [
    _route(_rid(1), name="catch-all", paths=["/"]),
    _route(_rid(2), name="host", hosts=["example.com"], paths=["/"]),
    _route(_rid(3), name="wild", hosts=["*.example.org"]),
    _route(_rid(4), name="long", paths=["/api/v1"], strip_path=True),
    _route(_rid(5), name="keep", paths=["/keep/"], strip_path=False),
    _route(_rid(6), name="regex", paths=[r"~/users/\d+"], regex_priority=5),
    _route(_rid(7), name="post", paths=["/api"], methods=["POST"]),
    _route(_rid(8), name="https", paths=["/secure"], protocols=["https"]),
]


def test_routes_follow_kong_order_and_end_with_the_404() -> None:
    config = route_configuration(WS, _entities(ROUTES))
    routes = config["virtual_hosts"][0]["routes"]
    assert config["virtual_hosts"][0]["domains"] == ["*"]
    assert routes[-1]["direct_response"]["status"] == 404
    assert json.loads(routes[-1]["direct_response"]["body"]["inline_string"]) == {
        "message": "no Route matched with those values"
    }
    names = [r["name"].split(" ")[0] for r in routes[:-1]]
    first_seen = list(dict.fromkeys(names))
    # Kong's order: more fields first, then plain hosts, regexes by regex_priority, longer prefixes first; a
    # host-only wildcard route (no path length) comes after the "/" catch-all
    assert first_seen == ["host", "post", "regex", "https", "long", "keep", "catch-all", "wild"]
    specs = [RouteSpec.from_kong(r) for r in ROUTES]
    assert first_seen == [e.route.name for e in sort_routes(specs)]


@pytest.mark.parametrize("service_path", [None, "/", "/base", "/base/"])
@pytest.mark.parametrize(
    ("path", "host", "method"),
    [
        ("/", "", "GET"),
        ("/x", "example.com", "GET"),
        ("/x", "a.example.org:8000", "GET"),
        ("/api/v1", "", "GET"),
        ("/api/v1/", "", "GET"),
        ("/api/v1/items", "", "GET"),
        ("/api/v1items", "", "GET"),
        ("/api/v2", "", "POST"),
        ("/api/v2", "", "GET"),
        ("/keep/a/b", "", "GET"),
        ("/users/42/x", "", "GET"),
        ("/users/x", "", "GET"),
    ],
)
def test_envoy_routes_pick_kong_route_and_upstream_path(
    service_path: str | None, path: str, host: str, method: str
) -> None:
    entities = _entities(ROUTES, service_path)
    config = route_configuration(WS, entities)
    name, result = _simulate(config, path, host, method)
    specs = [RouteSpec.from_kong(r, entities["services"][SVC]) for r in ROUTES]
    expected = match(specs, Request(method=method, path=path, host=host))
    assert expected is not None
    assert name.split(" ")[0] == expected.route.name
    assert result == expected.upstream_path


def test_https_only_route_answers_426_and_route_without_service_503() -> None:
    routes = [*ROUTES, {"id": _rid(9), "name": "orphan", "paths": ["/orphan"], "service": None}]
    config = route_configuration(WS, _entities(routes))
    assert _simulate(config, "/secure")[1] == 426
    assert _simulate(config, "/orphan")[1] == 503
    assert _simulate(config, "/nothing", host="other.net")[0] == "catch-all /"


def test_unmatched_request_gets_404_without_catch_all() -> None:
    config = route_configuration(WS, _entities(ROUTES[1:]))
    assert _simulate(config, "/nothing")[1] == 404


def test_clusters_listeners_and_envoy_validates(tmp_path: Path) -> None:
    entities = _entities(ROUTES, "/base")
    entities["upstreams"] = {"u1": {"id": "u1", "name": "backend.v1", "algorithm": "least-connections"}}
    entities["services"]["s3"] = {"id": "s3", "host": "backend.v1", "port": 80, "protocol": "http"}
    entities["targets"] = {
        "t1": {"id": "t1", "upstream": {"id": "u1"}, "target": "127.0.0.1:9001", "weight": 30},
        "t2": {"id": "t2", "upstream": {"id": "u1"}, "target": "127.0.0.2", "weight": 70},
        "t3": {"id": "t3", "upstream": {"id": "u1"}, "target": "127.0.0.3:9003", "weight": 0},
    }
    entities["routes"]["r-up"] = _route("r-up", name="up", paths=["/up"], service="s3")
    entities["routes"]["r-tls"] = _route("r-tls", name="tls", paths=["/tls"], service=SVC2)
    out = translate(WS, entities, [ListenAddress("127.0.0.1", 8000), ListenAddress("127.0.0.1", 8080)])
    xds = {
        t: [json_format.MessageToDict(_unpack(r.packed), preserving_proto_field_name=True) for r in res]
        for t, res in out.items()
    }
    clusters = {c["name"]: c for c in xds[types.CLUSTER]}
    plain = clusters[cluster_name(WS, SVC)]
    assert plain["type"] == "STATIC" and plain["connect_timeout"] == "2s"
    up = clusters[cluster_name(WS, "s3")]
    weights = [
        (e["endpoint"]["address"]["socket_address"]["port_value"], e["load_balancing_weight"])
        for e in up["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert weights == [(9001, 30), (8000, 70)]
    assert up["lb_policy"] == "LEAST_REQUEST"
    tls = clusters[cluster_name(WS, SVC2)]
    assert tls["type"] == "STRICT_DNS"
    context = tls["transport_socket"]["typed_config"]
    assert context["sni"] == "api.example.com"
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0][
        "matcher"
    ] == {"exact": "api.example.com"}
    routes = xds[types.ROUTE][0]["virtual_hosts"][0]["routes"]
    long = next(r for r in routes if r["name"] == "long /api/v1" and "path" not in r["match"])
    assert long["route"]["retry_policy"]["num_retries"] == 3
    assert long["route"]["idle_timeout"] == "40s"
    assert long["route"]["host_rewrite_literal"] == "127.0.0.1:9000"
    assert [x["name"] for x in xds[types.LISTENER]] == [
        "kong:http:127.0.0.1:8000",
        "kong:http:127.0.0.1:8080",
    ]
    hcm = xds[types.LISTENER][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["normalize_path"] and hcm["merge_slashes"]
    _envoy_validate(xds, tmp_path)


def test_consistent_hashing_upstream(tmp_path: Path) -> None:
    entities = _entities([_route("r-h", name="hashed", paths=["/h"], service="s3")])
    entities["upstreams"] = {
        "u1": {"id": "u1", "name": "backend.v1", "algorithm": "consistent-hashing", "slots": 100,
               "hash_on": "cookie", "hash_on_cookie": "session", "hash_on_cookie_path": "/h",
               "hash_fallback": "ip"},
        "u2": {"id": "u2", "name": "backend.v2", "algorithm": "consistent-hashing",
               "hash_on": "header", "hash_on_header": "X-User", "hash_fallback": "query_arg",
               "hash_fallback_query_arg": "user"},
    }  # fmt: skip
    entities["services"]["s3"] = {"id": "s3", "host": "backend.v1", "port": 80, "protocol": "http"}
    entities["services"]["s4"] = {"id": "s4", "host": "backend.v2", "port": 80, "protocol": "http"}
    entities["targets"] = {"t1": {"id": "t1", "upstream": {"id": "u1"}, "target": "127.0.0.1:9001"}}
    entities["routes"]["r-h2"] = _route("r-h2", name="hashed2", paths=["/h2"], service="s4")
    out = translate(WS, entities, [ListenAddress("127.0.0.1", 8000)])
    xds = {
        t: [json_format.MessageToDict(_unpack(r.packed), preserving_proto_field_name=True) for r in res]
        for t, res in out.items()
    }
    clusters = {c["name"]: c for c in xds[types.CLUSTER]}
    assert clusters[cluster_name(WS, "s3")]["lb_policy"] == "RING_HASH"
    assert clusters[cluster_name(WS, "s3")]["ring_hash_lb_config"]["minimum_ring_size"] == "100"
    routes = {r["name"]: r for r in xds[types.ROUTE][0]["virtual_hosts"][0]["routes"]}
    assert routes["hashed /h"]["route"]["hash_policy"] == [
        {"cookie": {"name": "session", "ttl": "0s", "path": "/h"}, "terminal": True},
        {"connection_properties": {"source_ip": True}},
    ]
    assert routes["hashed2 /h2"]["route"]["hash_policy"] == [
        {"header": {"header_name": "x-user"}, "terminal": True},
        {"query_parameter": {"name": "user"}},
    ]
    _envoy_validate(xds, tmp_path)


def _unpack(packed: Any) -> Any:
    from google.protobuf import symbol_database

    name = packed.type_url.rsplit("/", 1)[-1]
    msg = symbol_database.Default().GetSymbol(name)()
    packed.Unpack(msg)
    return msg


def _envoy_validate(xds: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    routes = {r["name"]: r for r in xds[types.ROUTE]}
    listeners = json.loads(json.dumps(xds[types.LISTENER]))
    for listener in listeners:
        for chain in [*listener.get("filter_chains", []), *([listener["default_filter_chain"]] if "default_filter_chain" in listener else [])]:  # fmt: skip
            hcm = next(f for f in chain["filters"] if f["name"].endswith("http_connection_manager"))[
                "typed_config"
            ]
            hcm["route_config"] = routes[hcm.pop("rds")["route_config_name"]]
            tls = chain.get("transport_socket", {}).get("typed_config", {}).get("common_tls_context", {})
            for sds in tls.get("tls_certificate_sds_secret_configs", []):
                sds.pop("sds_config")
    clusters = json.loads(json.dumps(xds[types.CLUSTER]))
    for cluster in clusters:
        tls = cluster.get("transport_socket", {}).get("typed_config", {}).get("common_tls_context", {})
        for sds in tls.get("tls_certificate_sds_secret_configs", []):
            sds.pop("sds_config")
    static = {"listeners": listeners, "clusters": clusters, "secrets": xds.get(types.SECRET, [])}
    bootstrap = {"node": {"id": "validate", "cluster": "validate"}, "static_resources": static}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    proc = subprocess.run(
        [
            str(find_envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(path),
            "-l",
            "error",
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _self_signed(name: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def test_tls_listener_selects_certificates_by_sni(tmp_path: Path) -> None:
    entities = _entities(ROUTES)
    first, second = _self_signed("a.example.com"), _self_signed("b.example.com")
    entities["certificates"] = {
        "c1": {"id": "c1", "cert": first[0], "key": first[1], "created_at": 1},
        "c2": {"id": "c2", "cert": second[0], "key": second[1], "created_at": 2},
    }
    entities["snis"] = {
        "s1": {"id": "s1", "name": "a.example.com", "certificate": {"id": "c1"}},
        "s2": {"id": "s2", "name": "*.b.example.com", "certificate": {"id": "c2"}},
    }
    assert translate(WS, {**entities, "certificates": {}}, [], [ListenAddress("127.0.0.1", 8443)])[types.LISTENER] == []  # fmt: skip
    out = translate(WS, entities, [ListenAddress("127.0.0.1", 8000)], [ListenAddress("127.0.0.1", 8443)])
    xds = {
        t: [json_format.MessageToDict(_unpack(r.packed), preserving_proto_field_name=True) for r in res]
        for t, res in out.items()
    }
    tls = next(x for x in xds[types.LISTENER] if x["name"] == "kong:https:127.0.0.1:8443")
    # Kong's selection: exact SNI, else *.<SNI without its first label>, else <SNI without its last label>.*
    assert [c["name"] for c in tls["filter_chains"]] == ["certificate:c1", "certificate:c2"]
    tree = tls["filter_chain_matcher"]["matcher_tree"]
    assert tree["exact_match_map"]["map"]["a.example.com"]["action"]["name"] == "certificate:c1"
    wildcard = tls["filter_chain_matcher"]["on_no_match"]["matcher"]["matcher_list"]["matchers"]
    assert [m["predicate"]["single_predicate"]["value_match"]["safe_regex"]["regex"] for m in wildcard] == [
        r"[^.]+\.b\.example\.com"
    ]
    default = tls["default_filter_chain"]["transport_socket"]["typed_config"]["common_tls_context"]
    assert default["tls_certificate_sds_secret_configs"][0]["name"] == "kong:default:certificate:c1"
    assert sorted(x["name"] for x in xds[types.SECRET]) == ["kong:default:certificate:c1", "kong:default:certificate:c2"]  # fmt: skip
    # on HTTPS the https-only route proxies instead of answering 426
    https = route_configuration(WS, entities, https=True)
    assert _simulate(https, "/secure")[0] == "https /secure"
    _envoy_validate(xds, tmp_path)


def test_mesh_service_host_routes_to_the_mesh_cluster() -> None:
    entities = _entities([_route("r-m", name="mesh", paths=["/m"], service="s-mesh")])
    entities["services"]["s-mesh"] = {"id": "s-mesh", "host": "backend.mesh", "port": 80, "protocol": "http"}
    out = translate(WS, entities, [ListenAddress("127.0.0.1", 8000)])
    assert cluster_name(WS, "s-mesh") not in {r.name for r in out[types.CLUSTER]}
    routes = route_configuration(WS, entities)["virtual_hosts"][0]["routes"]
    mesh = next(r for r in routes if r["name"] == "mesh /m")
    assert mesh["route"]["cluster"] == "backend"
    assert mesh["route"]["host_rewrite_literal"] == "backend.mesh"


def test_host_with_a_port_compares_with_the_listener_port(tmp_path: Path) -> None:
    routes = [
        _route(_rid(1), name="ported", hosts=["example.com:8000"]),
        _route(_rid(2), name="all", paths=["/"]),
    ]
    entities = _entities(routes)
    out = translate(WS, entities, [ListenAddress("127.0.0.1", 8000), ListenAddress("127.0.0.1", 9000)])
    assert {r.name for r in out[types.ROUTE]} == {"kong:default:8000", "kong:default:9000"}
    specs = [RouteSpec.from_kong(r, entities["services"][SVC]) for r in routes]
    for port in (8000, 9000):
        config = route_configuration(WS, entities, port=port)
        for host in ("example.com", "example.com:8000", "example.com:9000"):
            expected = match(specs, Request(method="GET", path="/x", host=host, port=port))
            assert expected is not None
            assert _simulate(config, "/x", host)[0].split(" ")[0] == expected.route.name, (port, host)
    xds = {
        t: [json_format.MessageToDict(_unpack(r.packed), preserving_proto_field_name=True) for r in res]
        for t, res in out.items()
    }
    _envoy_validate(xds, tmp_path)
