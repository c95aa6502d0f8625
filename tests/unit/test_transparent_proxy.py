"""Transparent proxying: the iptables rules the agent installs (a pure builder), Kuma's
``networking.transparentProxying`` fields, and what the control plane gives such a proxy (catch-all listeners on
the redirect ports, VIP outbounds and inbounds reached by original destination, passthrough)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from isthmus.catalog import default_registry
from isthmus.context.mesh_context import build_mesh_context
from isthmus.dp import transparent_proxy as tp
from isthmus.dp.agent import AgentError, AgentOptions, DataplaneAgent, TransparentProxyOptions
from isthmus.ir.build import build_proxy_ir
from isthmus.resources.errors import ResourceValidationError
from isthmus.resources.registry import load_documents, parse_document
from isthmus.xds import types
from isthmus.xds.snapshot import Snapshot
from isthmus.xds.translate import translate
from tests.golden.test_golden import _envoy_validate

REG = default_registry()


# -- the rules -------------------------------------------------------------------------------------------------------
def test_rules_redirect_tcp_both_ways_and_leave_envoy_alone() -> None:
    rules = tp.install_rules(tp.Redirect(uid=5678))
    assert rules == [
        ["-t", "nat", "-N", "ISTHMUS_INBOUND"],
        ["-t", "nat", "-N", "ISTHMUS_INBOUND_REDIRECT"],
        ["-t", "nat", "-N", "ISTHMUS_OUTBOUND"],
        ["-t", "nat", "-N", "ISTHMUS_OUTBOUND_REDIRECT"],
        ["-t", "nat", "-N", "ISTHMUS_DNS"],
        ["-t", "nat", "-A", "ISTHMUS_INBOUND", "-p", "tcp", "-j", "ISTHMUS_INBOUND_REDIRECT"],
        ["-t", "nat", "-A", "ISTHMUS_INBOUND_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15006"],
        ["-t", "nat", "-A", "ISTHMUS_OUTBOUND", "-s", "127.0.0.6/32", "-o", "lo", "-j", "RETURN"],
        [
            "-t", "nat", "-A", "ISTHMUS_OUTBOUND", "!", "-d", "127.0.0.1/32", "-o", "lo",
            "-m", "owner", "--uid-owner", "5678", "-j", "ISTHMUS_INBOUND_REDIRECT",
        ],
        [
            "-t", "nat", "-A", "ISTHMUS_OUTBOUND", "-o", "lo", "-m", "owner", "!", "--uid-owner", "5678",
            "-j", "RETURN",
        ],
        ["-t", "nat", "-A", "ISTHMUS_OUTBOUND", "-m", "owner", "--uid-owner", "5678", "-j", "RETURN"],
        ["-t", "nat", "-A", "ISTHMUS_OUTBOUND", "-d", "127.0.0.1/32", "-j", "RETURN"],
        ["-t", "nat", "-A", "ISTHMUS_OUTBOUND", "-j", "ISTHMUS_OUTBOUND_REDIRECT"],
        ["-t", "nat", "-A", "ISTHMUS_OUTBOUND_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
        ["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "ISTHMUS_INBOUND"],
        ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "ISTHMUS_OUTBOUND"],
    ]  # fmt: skip


def test_rules_with_dns_ports_and_exclusions() -> None:
    redirect = tp.Redirect(
        uid=1234,
        inbound_port=16006,
        outbound_port=16001,
        dns_port=15053,
        exclude_inbound_ports=(22,),
        exclude_outbound_ports=(5432, 6379),
    )
    rules = tp.install_rules(redirect)
    assert ["-t", "nat", "-A", "ISTHMUS_INBOUND", "-p", "tcp", "--dport", "22", "-j", "RETURN"] in rules
    # exclusions come before the jump to the redirect
    jump_in = rules.index(
        ["-t", "nat", "-A", "ISTHMUS_INBOUND", "-p", "tcp", "-j", "ISTHMUS_INBOUND_REDIRECT"]
    )
    assert (
        rules.index(["-t", "nat", "-A", "ISTHMUS_INBOUND", "-p", "tcp", "--dport", "22", "-j", "RETURN"])
        < jump_in
    )
    jump_out = rules.index(["-t", "nat", "-A", "ISTHMUS_OUTBOUND", "-j", "ISTHMUS_OUTBOUND_REDIRECT"])
    for port in ("5432", "6379"):
        excluded = ["-t", "nat", "-A", "ISTHMUS_OUTBOUND", "-p", "tcp", "--dport", port, "-j", "RETURN"]
        assert rules.index(excluded) < jump_out
    assert rules[-4:] == [
        ["-t", "nat", "-A", "ISTHMUS_DNS", "-p", "udp", "-j", "REDIRECT", "--to-ports", "15053"],
        ["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "ISTHMUS_INBOUND"],
        ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "ISTHMUS_OUTBOUND"],
        ["-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "ISTHMUS_DNS"],
    ]
    # Envoy's own queries (to the host's resolvers) are not sent back to it
    dns_return = ["-t", "nat", "-A", "ISTHMUS_DNS", "-m", "owner", "--uid-owner", "1234", "-j", "RETURN"]
    assert rules.index(dns_return) < len(rules) - 4
    assert "--to-ports" in rules[rules.index(dns_return) + 1]
    assert any(r[-2:] == ["--to-ports", "16006"] for r in rules)
    assert any(r[-2:] == ["--to-ports", "16001"] for r in rules)


def test_removal_undoes_every_jump_and_chain() -> None:
    removal = tp.remove_rules()
    installed = tp.install_rules(tp.Redirect(uid=5678, dns_port=9053))
    jumps = [r for r in installed if r[3] in ("PREROUTING", "OUTPUT")]
    assert [["-t", "nat", "-D", *r[3:]] for r in jumps] == removal[: len(jumps)]
    chains = [r[3] for r in installed if r[2] == "-N"]
    assert [r[3] for r in removal if r[2] == "-F"] == chains
    assert [r[3] for r in removal if r[2] == "-X"] == chains
    # jumps go first: a chain still jumped to cannot be deleted
    assert max(i for i, r in enumerate(removal) if r[2] == "-D") < min(
        i for i, r in enumerate(removal) if r[2] == "-F"
    )


def test_user_resolution() -> None:
    assert tp.resolve_user("0") == (0, 0)
    assert tp.resolve_user("root") == (0, 0)
    uid, _ = tp.resolve_user("5678")
    assert uid == 5678
    with pytest.raises(tp.TransparentProxyError, match="no such user"):
        tp.resolve_user("no-such-user-here")


# -- the agent's checks ----------------------------------------------------------------------------------------------
DATAPLANE = {
    "type": "Dataplane",
    "mesh": "default",
    "name": "web-1",
    "networking": {"address": "10.0.0.2", "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}]},
}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("iptables") is None, reason="needs root and iptables")
def test_agent_fills_kumas_transparent_proxying_and_dns() -> None:
    options = AgentOptions(dataplane=DATAPLANE, transparent_proxy=TransparentProxyOptions(redirect_dns=True))
    agent = DataplaneAgent(options)
    assert agent.resource["networking"]["transparentProxying"] == {
        "redirectPortInbound": 15006,
        "redirectPortOutbound": 15001,
    }
    assert agent.resource["labels"]["isthmus.io/dns-port"] == "15053"
    with pytest.raises(AgentError, match="not root"):
        DataplaneAgent(AgentOptions(dataplane=DATAPLANE, transparent_proxy=TransparentProxyOptions(user="0")))
    with pytest.raises(AgentError, match="only for --proxy-type sidecar"):
        gateway = {
            **DATAPLANE,
            "networking": {"address": "10.0.0.2", "gateway": {"tags": {"kuma.io/service": "g"}}},
        }
        DataplaneAgent(
            AgentOptions(dataplane=gateway, proxy_type="gateway", transparent_proxy=TransparentProxyOptions())
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_refused_without_root_in_one_line() -> None:
    """A child of the test process drops to nobody and builds the agent: refused before anything is done."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                DataplaneAgent(AgentOptions(dataplane=DATAPLANE, transparent_proxy=TransparentProxyOptions()))
            except AgentError as exc:
                os.write(write, str(exc).encode())
                code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message
    assert message.startswith("--transparent-proxy needs root: the agent installs iptables rules")
    assert "\n" not in message


def test_cli_needs_transparent_proxy_for_its_options() -> None:
    from typer.testing import CliRunner

    from isthmus.cli.main import app

    result = CliRunner().invoke(
        app,
        ["dp", "run", "--redirect-dns", "--dataplane", "type: Dataplane\nmesh: m\nname: a\nnetworking: {}"],
    )
    assert result.exit_code == 1
    assert "--redirect-dns and --exclude-*-ports need --transparent-proxy" in result.output


# -- the resource ----------------------------------------------------------------------------------------------------
def _dataplane(tp_fields: dict[str, Any], **networking: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "Dataplane",
        "mesh": "default",
        "name": "web-1",
        "networking": {
            "address": "10.0.0.2",
            "inbound": [{"port": 8080, "tags": {"kuma.io/service": "web"}}],
            "transparentProxying": tp_fields,
            **networking,
        },
    }
    return doc


def _refusal(doc: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ResourceValidationError) as caught:
        parse_document(doc, REG)
    return caught.value.errors[0].field, caught.value.errors[0].reason


def test_kumas_transparent_proxying_is_accepted() -> None:
    # Kuma's Universal transparent proxy Dataplane, and its reachable services/backends
    doc = _dataplane(
        {
            "redirectPortInbound": 15006,
            "redirectPortOutbound": 15001,
            "ipFamilyMode": "IPv4",
            "reachableServices": ["backend", "db_svc_5432"],
            "reachableBackends": {
                "refs": [
                    {"kind": "MeshService", "name": "backend", "port": 80},
                    {"kind": "MeshExternalService", "labels": {"kuma.io/display-name": "httpbin"}},
                ]
            },
        }
    )
    spec = parse_document(doc, REG).spec.networking.transparent_proxying  # type: ignore[union-attr]
    assert (spec.inbound_port, spec.outbound_port) == (15006, 15001)
    assert parse_document(_dataplane({}), REG).spec.networking.transparent_proxying.outbound_port == 15001  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fields", "extra", "field", "reason"),
    [
        ({"redirectPortInbound": 0}, {}, "redirectPortInbound", "Input should be greater than or equal to 1"),
        ({"redirectPortOutbound": 70000}, {}, "redirectPortOutbound", "Input should be less than or equal to 65535"),
        ({"redirectPortInbound": 15001}, {}, "redirectPortOutbound", "port 15001 is also the redirectPortInbound"),
        ({"ipFamilyMode": "DualStack"}, {}, "ipFamilyMode", "DualStack is not supported yet (Isthmus redirects IPv4 only; use IPv4)"),
        ({"ipFamilyMode": "IPv5"}, {}, "ipFamilyMode", "Input should be 'UnSpecified', 'DualStack' or 'IPv4'"),
        ({"redirectPortInboundV6": 15010}, {}, "redirectPortInboundV6", "redirectPortInboundV6 is not supported yet (Isthmus redirects IPv4 only)"),
        ({"directAccessServices": ["*"]}, {}, "directAccessServices", "directAccessServices is not supported yet"),
        ({"reachableServices": ["has space"]}, {}, "reachableServices[0]", ""),
        ({"reachableBackends": {"refs": [{"kind": "Dataplane", "name": "x"}]}}, {}, "reachableBackends.refs[0].kind", ""),
        ({"reachableBackends": {"refs": [{"kind": "MeshService"}]}}, {}, "reachableBackends.refs[0]", "either name or labels must be set"),
        ({"redirectPorts": 1}, {}, "redirectPorts", ""),
        ({}, {"outbound": [{"port": 15001, "tags": {"kuma.io/service": "b"}}]}, "redirectPortOutbound", "port 15001 is already used by outbound[0]"),
    ],
)  # fmt: skip
def test_transparent_proxying_refusals_name_the_field(
    fields: dict[str, Any], extra: dict[str, Any], field: str, reason: str
) -> None:
    got_field, got_reason = _refusal(_dataplane(fields, **extra))
    assert got_field == f"networking.transparentProxying.{field}"
    if reason:
        assert got_reason == reason


def test_mesh_passthrough_false_is_accepted() -> None:
    mesh = parse_document(
        {"type": "Mesh", "name": "m", "networking": {"outbound": {"passthrough": False}}}, REG
    )
    assert mesh.spec.passthrough is False  # type: ignore[union-attr]
    assert parse_document({"type": "Mesh", "name": "m"}, REG).spec.passthrough is True  # type: ignore[union-attr]


# -- the control plane's side ----------------------------------------------------------------------------------------
MESH = """
type: Mesh
name: default
meshServices: {mode: Everywhere}
networking: {outbound: {passthrough: %s}}
---
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.1
  inbound:
  - {port: 8080, tags: {kuma.io/service: backend, kuma.io/protocol: http}}
---
type: Dataplane
mesh: default
name: client
networking:
  address: 10.0.0.2
  inbound:
  - {port: 9090, tags: {kuma.io/service: client}}
  outbound:
  - {port: 10001, tags: {kuma.io/service: backend}}
  transparentProxying: {redirectPortInbound: 15006, redirectPortOutbound: 15001%s}
---
type: MeshService
mesh: default
name: backend
spec:
  selector: {dataplaneTags: {kuma.io/service: backend}}
  ports: [{port: 8080, targetPort: 8080, appProtocol: http}]
status:
  vips: [{ip: 241.0.0.1}]
"""


def _proxy(passthrough: bool = True, reachable: str = "") -> Any:
    docs = [parse_document(d, REG) for d in load_documents(MESH % (str(passthrough).lower(), reachable))]
    ctx = build_mesh_context(docs[0], [d for d in docs if d.type.kind == "Dataplane"], docs[3:])
    return build_proxy_ir(ctx, "client", None), ctx


def _by_name(messages: list[Any]) -> dict[str, dict[str, Any]]:
    return {m.name: json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages}


def test_catch_all_listeners_and_original_destination(tmp_path: Path) -> None:
    ir, _ = _proxy()
    assert ir.transparent is not None and ir.transparent.passthrough
    messages = translate(ir)
    assert Snapshot.build(messages).consistency_errors() == []
    listeners = _by_name(messages[types.LISTENER])
    clusters = _by_name(messages[types.CLUSTER])
    outbound = listeners["outbound:passthrough:ipv4"]
    assert outbound["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15001}
    assert outbound["use_original_dst"] is True
    assert "outbound:passthrough:ipv4" in str(outbound["filter_chains"])
    inbound = listeners["inbound:passthrough:ipv4"]
    assert inbound["address"]["socket_address"]["port_value"] == 15006 and inbound["use_original_dst"]
    assert clusters["outbound:passthrough:ipv4"]["type"] == "ORIGINAL_DST"
    assert (
        clusters["inbound:passthrough:ipv4"]["upstream_bind_config"]["source_address"]["address"]
        == "127.0.0.6"
    )
    # VIP listeners (the MeshService's and the legacy <service>.mesh one) are reached by original destination
    vips = [n for n in listeners if n.startswith("outbound:24")]
    assert "outbound:241.0.0.1:8080" in vips and any(n.startswith("outbound:240.") for n in vips)
    for name in vips:
        assert listeners[name]["bind_to_port"] is False, name
    # the inbound too; the explicit loopback outbound keeps its socket (traffic to 127.0.0.1 is not redirected)
    assert listeners["inbound:10.0.0.2:9090"]["bind_to_port"] is False
    assert "bind_to_port" not in listeners["outbound:127.0.0.1:10001"]
    xds = {
        t: [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in ms]
        for t, ms in messages.items()
    }
    _envoy_validate(xds, tmp_path)


def test_passthrough_false_closes_unknown_destinations(tmp_path: Path) -> None:
    ir, _ = _proxy(passthrough=False)
    assert ir.transparent is not None and not ir.transparent.passthrough
    messages = translate(ir)
    assert Snapshot.build(messages).consistency_errors() == []
    listeners = _by_name(messages[types.LISTENER])
    clusters = _by_name(messages[types.CLUSTER])
    assert "outbound:passthrough:ipv4" not in clusters
    blackhole = clusters["outbound:passthrough:blackhole"]
    assert blackhole["type"] == "STATIC" and "load_assignment" not in blackhole
    assert "outbound:passthrough:blackhole" in str(listeners["outbound:passthrough:ipv4"])
    xds = {
        t: [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in ms]
        for t, ms in messages.items()
    }
    _envoy_validate(xds, tmp_path)


def test_reachable_services_limit_legacy_vips() -> None:
    ir, _ = _proxy(reachable=", reachableServices: [client]")
    legacy = {o.service for o in ir.outbounds if o.address.startswith("240.")}
    assert legacy == {"client"}
    everything, _ = _proxy()
    assert {o.service for o in everything.outbounds if o.address.startswith("240.")} == {"backend", "client"}


def test_proxies_without_transparent_proxying_are_unchanged() -> None:
    _, ctx = _proxy()
    ir = build_proxy_ir(ctx, "backend-1", None)
    assert ir.transparent is None
    assert all(i.bind for i in ir.inbounds) and all(o.bind for o in ir.outbounds)
    names = {m.name for m in translate(ir)[types.LISTENER]}
    assert not {n for n in names if "passthrough" in n}
