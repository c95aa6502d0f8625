"""Renderers of the resource commands: tables (Rich), YAML, JSON and the ``inspect`` summary.

Every function returns text; the commands decide where it goes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from isthmus.resources.common import SERVICE_TAG

FORMATS = ("table", "yaml", "json")


# -- structured formats ------------------------------------------------------------------------------------------
def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def to_yaml_documents(docs: Sequence[Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False, allow_unicode=True, default_flow_style=False)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render(data: Any, fmt: str) -> str:
    """``yaml`` or ``json``."""
    if fmt == "json":
        return to_json(data)
    if fmt == "yaml":
        return to_yaml(data)
    raise ValueError(f"unknown format {fmt!r}")


def list_document(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The shape ``get KIND -o yaml|json`` prints for a list (kumactl's: total, items, next)."""
    return {"total": len(items), "items": list(items), "next": None}


# -- tables -------------------------------------------------------------------------------------------------------
def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A borderless table, columns three spaces apart, no wrapping (kumactl's look)."""
    table = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 3, 0, 0),
        header_style="",
        highlight=False,
    )
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row)
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]
    width = sum(widths) + 3 * len(widths) + 1
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=max(width, 20),
        color_system=None,
        force_terminal=False,
        no_color=True,
        highlight=False,
        emoji=False,
        markup=False,
        legacy_windows=False,
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def age(timestamp: Any, now: datetime | None = None) -> str:
    """``creationTime`` as a short age: ``42s``, ``5m``, ``3h``, ``12d``, ``2y``; ``-`` when unknown."""
    created = parse_time(timestamp)
    if created is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - created).total_seconds())
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def mtls_cell(mesh: Mapping[str, Any]) -> str:
    """``builtin/ca-1`` for the enabled CA backend, ``off`` when mTLS is not enabled."""
    mtls = mesh.get("mtls")
    if not isinstance(mtls, Mapping) or not mtls.get("enabledBackend"):
        return "off"
    name = str(mtls["enabledBackend"])
    for backend in mtls.get("backends") or []:
        if isinstance(backend, Mapping) and backend.get("name") == name and backend.get("type"):
            return f"{backend['type']}/{name}"
    return name


def services_of(networking: Mapping[str, Any]) -> list[str]:
    """The ``kuma.io/service`` tags of the inbounds (and of the gateway), in order, without repeats."""
    out: list[str] = []
    tagged: list[Any] = list(networking.get("inbound") or [])
    gateway = networking.get("gateway")
    if gateway:
        tagged.append(gateway)
    for item in tagged:
        tags = item.get("tags") if isinstance(item, Mapping) else None
        service = tags.get(SERVICE_TAG) if isinstance(tags, Mapping) else None
        if isinstance(service, str) and service and service not in out:
            out.append(service)
    return out


def target_ref_cell(spec: Any) -> str:
    """``kind`` or ``kind:name`` of a policy's top-level targetRef (Kuma defaults it to Mesh)."""
    ref = spec.get("targetRef") if isinstance(spec, Mapping) else None
    if not isinstance(ref, Mapping) or not ref.get("kind"):
        return "Mesh"
    return describe_target_ref(ref)


def describe_target_ref(ref: Mapping[str, Any]) -> str:
    kind = str(ref.get("kind") or "?")
    if ref.get("name"):
        return f"{kind}:{ref['name']}"
    tags = ref.get("tags")
    if isinstance(tags, Mapping) and tags:
        return f"{kind}[{','.join(f'{k}={v}' for k, v in tags.items())}]"
    return kind


def status_cell(insight: Any) -> str:
    if not isinstance(insight, Mapping):
        return "-"
    return "Online" if insight.get("online") else "Offline"


MESH_HEADERS = ("NAME", "mTLS", "AGE")
DATAPLANE_HEADERS = ("MESH", "NAME", "ADDRESS", "SERVICES", "STATUS", "AGE")
POLICY_HEADERS = ("MESH", "NAME", "TARGETREF", "AGE")
GENERIC_HEADERS = ("MESH", "NAME", "AGE")


def mesh_rows(items: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[list[str]]:
    return [[str(m.get("name", "")), mtls_cell(m), age(m.get("creationTime"), now)] for m in items]


def dataplane_row(
    doc: Mapping[str, Any], insight: Mapping[str, Any] | None, now: datetime | None = None
) -> list[str]:
    """One row out of a Dataplane document (or the ``dataplane`` part of an overview) and its insight."""
    networking = doc.get("networking")
    if not isinstance(networking, Mapping):
        networking = {}
    return [
        str(doc.get("mesh", "")),
        str(doc.get("name", "")),
        str(networking.get("address", "")),
        ",".join(services_of(networking)) or "-",
        status_cell(insight),
        age(doc.get("creationTime"), now),
    ]


def overview_rows(items: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[list[str]]:
    """Rows out of ``dataplanes+insights`` items."""
    rows = []
    for item in items:
        dataplane = item.get("dataplane")
        doc = {
            "mesh": item.get("mesh", ""),
            "name": item.get("name", ""),
            "creationTime": item.get("creationTime"),
            "networking": dataplane.get("networking") if isinstance(dataplane, Mapping) else None,
        }
        rows.append(dataplane_row(doc, item.get("dataplaneInsight"), now))
    return rows


def policy_rows(items: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[list[str]]:
    return [
        [
            str(p.get("mesh", "")),
            str(p.get("name", "")),
            target_ref_cell(p.get("spec")),
            age(p.get("creationTime"), now),
        ]
        for p in items
    ]


def generic_rows(items: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[list[str]]:
    return [[str(i.get("mesh", "")), str(i.get("name", "")), age(i.get("creationTime"), now)] for i in items]


# -- inspect ------------------------------------------------------------------------------------------------------
def _kv(lines: list[str], key: str, value: str) -> None:
    lines.append(f"  {key + ':':<15}{value}")


def _endpoint(item: Mapping[str, Any], default_address: str) -> str:
    return f"{item.get('address') or default_address}:{item.get('port', '?')}"


def render_insight(overview: Mapping[str, Any]) -> str:
    """The human summary of a ``dataplanes+insights`` item."""
    dataplane = overview.get("dataplane")
    networking = dataplane.get("networking") if isinstance(dataplane, Mapping) else None
    if not isinstance(networking, Mapping):
        networking = {}
    insight = overview.get("dataplaneInsight")
    if not isinstance(insight, Mapping):
        insight = {}
    address = str(networking.get("address", ""))
    lines = [f'Dataplane "{overview.get("name", "")}" in mesh "{overview.get("mesh", "")}"']

    subscriptions = [s for s in insight.get("subscriptions") or [] if isinstance(s, Mapping)]
    last = subscriptions[-1] if subscriptions else None
    if insight.get("online"):
        status = "Online"
        if last and last.get("connectTime"):
            status += f" (connected {last['connectTime']})"
    elif last is None:
        status = "Offline (never connected)"
    else:
        status = "Offline"
        if last.get("disconnectTime"):
            status += f" (disconnected {last['disconnectTime']})"
    _kv(lines, "Status", status)
    _kv(lines, "Address", address or "-")
    inbounds = [i for i in networking.get("inbound") or [] if isinstance(i, Mapping)]
    outbounds = [o for o in networking.get("outbound") or [] if isinstance(o, Mapping)]
    for label, entries in (("Inbounds", inbounds), ("Outbounds", outbounds)):
        if not entries:
            _kv(lines, label, "none")
        for n, entry in enumerate(entries):
            default = address if label == "Inbounds" else "127.0.0.1"
            tags, backend = entry.get("tags"), entry.get("backendRef")
            service = (
                (tags.get(SERVICE_TAG) if isinstance(tags, Mapping) else None)
                or (backend.get("name") if isinstance(backend, Mapping) else None)
                or "?"
            )
            _kv(lines, label if n == 0 else "", f"{_endpoint(entry, default)} -> {service}")

    acks = insight.get("lastAck")
    if isinstance(acks, Mapping) and acks:
        _kv(lines, "Last ACK", ", ".join(f"{k} {v}" for k, v in acks.items()))
    else:
        _kv(lines, "Last ACK", "none")
    nack = insight.get("lastNack")
    if isinstance(nack, Mapping) and nack:
        text = " ".join(str(nack.get("error", "")).split())
        _kv(lines, "Last NACK", f"{nack.get('typeUrl', '?')} version {nack.get('version', '?')}: {text}")
    else:
        _kv(lines, "Last NACK", "none")
    mtls = insight.get("mTLS")
    if isinstance(mtls, Mapping) and mtls:
        cert = f"expires {mtls.get('certificateExpirationTime', '?')}"
        regenerations = mtls.get("certificateRegenerations")
        if regenerations is not None:
            cert += f", {regenerations} regeneration(s)"
        if mtls.get("lastCertificateRegeneration"):
            cert += f", last {mtls['lastCertificateRegeneration']}"
        _kv(lines, "Certificate", cert)
    else:
        _kv(lines, "Certificate", "none")
    if insight.get("configError"):
        _kv(lines, "Config error", " ".join(str(insight["configError"]).split()))
    return "\n".join(lines) + "\n"


def render_policies(doc: Mapping[str, Any]) -> str:
    """The human view of ``_policies``: per inbound/outbound, the matched policies and their rules."""
    lines = ["Policies"]
    sections = [("inbound", i) for i in doc.get("inbounds") or []]
    sections += [("outbound", o) for o in doc.get("outbounds") or []]
    if not sections:
        lines.append("  (no inbounds or outbounds)")
    for direction, entry in sections:
        if not isinstance(entry, Mapping):
            continue
        where = entry.get("name") or entry.get("port", "?")
        lines.append(f"  {direction} {where} (service {entry.get('service', '?')})")
        policies = [p for p in entry.get("policies") or [] if isinstance(p, Mapping)]
        if not policies:
            lines.append("    no matching policies")
        for policy in policies:
            ptype, pname = str(policy.get("type", "?")), str(policy.get("name", "?"))
            head = f'    {ptype} "{pname}"'
            if policy.get("action"):
                head += f": {policy['action']}"
            lines.append(head)
            details = entry.get(ptype)
            rules = details.get("rules") if isinstance(details, Mapping) else None
            for rule in rules or []:
                if not isinstance(rule, Mapping) or rule.get("policy") != pname:
                    continue
                source = rule.get("from")
                if isinstance(source, Mapping):
                    lines.append(f"      from {describe_target_ref(source)}: {rule.get('action', '?')}")
                    continue
                for key in ("deny", "allow", "allowWithShadowDeny"):
                    for match in rule.get(key) or []:
                        sid = match.get("spiffeID", {}) if isinstance(match, Mapping) else {}
                        lines.append(f"      rules {key}: {sid.get('type', '?')} {sid.get('value', '?')}")
        for kind, resolved in sorted(entry.items()):
            if not isinstance(resolved, Mapping) or "conf" not in resolved:
                continue
            origins = ", ".join(
                f"{o.get('policy')} {o.get('section')}"
                for o in resolved.get("origins") or []
                if isinstance(o, Mapping)
            )
            conf = json.dumps(resolved["conf"], sort_keys=True, separators=(",", ":"))
            lines.append(f"    resolved {kind}: {conf}")
            lines.append(f"      from (lowest priority first): {origins}")
    return "\n".join(lines) + "\n"


def _matchers(matchers: Any, hashes: Mapping[str, str]) -> str:
    """``kuma.io/service=backend, !version=v2``; a route rule's hash is shown as the route match it names."""
    parts = []
    for m in matchers or []:
        if not isinstance(m, Mapping):
            continue
        key, value = str(m.get("key")), str(m.get("value"))
        if key == "__rule-matches-hash__":
            key, value = "route", hashes.get(value, value)
        parts.append(f"{'!' if m.get('not') else ''}{key}={value}")
    return ", ".join(parts) or "everything"


def _origin_names(origins: Any) -> str:
    names = []
    for o in origins or []:
        if not isinstance(o, Mapping):
            continue
        meta = o.get("resourceMeta", o)
        name = str(meta.get("name", "?")) if isinstance(meta, Mapping) else "?"
        names.append(f"{name}[{o['ruleIndex']}]" if "ruleIndex" in o else name)
    return ", ".join(names)


def _compact(conf: Any) -> str:
    return json.dumps(conf, sort_keys=True, separators=(",", ":"))


def render_rules(doc: Mapping[str, Any]) -> str:
    """The human view of ``_rules`` (Kuma's InspectRules): per policy type, each rule's subset, merged conf and
    the policies merged into it, lowest priority first."""
    found = doc.get("resource")
    resource: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    lines = [
        f"Rules of {resource.get('type', 'Dataplane')} {resource.get('mesh', '?')}/{resource.get('name', '?')}"
    ]
    hashes = {}
    for m in doc.get("httpMatches") or []:
        if isinstance(m, Mapping):
            hashes[str(m.get("hash"))] = _compact(m.get("match"))
    rules = [r for r in doc.get("rules") or [] if isinstance(r, Mapping)]
    if not rules:
        lines.append("  no policy applies")
    for rule in rules:
        lines.append(f"  {rule.get('type', '?')}")
        proxy = rule.get("proxyRule")
        if isinstance(proxy, Mapping):
            lines.append(f"    proxy: {_compact(proxy.get('conf'))}")
            lines.append(f"      from: {_origin_names(proxy.get('origin'))}")
        for to in rule.get("toRules") or []:
            lines.append(f"    to {_matchers(to.get('matchers'), hashes)}: {_compact(to.get('conf'))}")
            lines.append(f"      from: {_origin_names(to.get('origin'))}")
        for res in rule.get("toResourceRules") or []:
            meta = res.get("resourceMeta") or {}
            confs = res.get("conf") or []
            conf = _compact(confs[0] if len(confs) == 1 else confs)
            lines.append(f"    to {meta.get('type', '?')} {meta.get('name', '?')} (resource rule): {conf}")
            lines.append(f"      from: {_origin_names(res.get('origin'))}")
        for entry in rule.get("fromRules") or []:
            inbound = entry.get("inbound") or {}
            for sub in entry.get("rules") or []:
                who = _matchers(sub.get("matchers"), hashes)
                lines.append(
                    f"    inbound {inbound.get('port', '?')} from {who}: {_compact(sub.get('conf'))}"
                )
                lines.append(f"      from: {_origin_names(sub.get('origin'))}")
        for entry in rule.get("inboundRules") or []:
            inbound = entry.get("inbound") or {}
            for sub in entry.get("rules") or []:
                confs = sub.get("conf") or []
                conf = _compact(confs[0] if len(confs) == 1 else confs)
                lines.append(f"    inbound {inbound.get('port', '?')} rule: {conf}")
                lines.append(f"      from: {_origin_names(sub.get('origin'))}")
        for warning in rule.get("warnings") or []:
            lines.append(f"    warning: {warning}")
    return "\n".join(lines) + "\n"


def _flat(value: Any) -> str:
    """One line for a nested mapping: ``a=1, http=(retries=3, on=5xx,reset)``; empty values are left out."""
    if value in (None, "", [], {}, ()):
        return "-"
    if isinstance(value, Mapping):
        parts = []
        for k, v in value.items():
            if v in (None, "", [], {}, ()):
                continue
            parts.append(f"{k}=({_flat(v)})" if isinstance(v, Mapping) else f"{k}={_flat(v)}")
        return ", ".join(parts) or "-"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def render_explain(doc: Mapping[str, Any]) -> str:
    """The human view of ``_explain``."""
    req = doc.get("request") or {}
    lines = [
        f"{req.get('method', 'GET')} {req.get('path', '/')} from {doc.get('from')} to {doc.get('to')} "
        f"(mesh {doc.get('mesh')}, outbound {(doc.get('outbound') or {}).get('name', '?')})"
    ]
    route = doc.get("route") or {}
    lines.append(
        f"  route: {route.get('name', '?')}" + ("" if route.get("matched", True) else " (no rule matched)")
    )
    for backend in doc.get("backends") or []:
        lines.append(
            f"  backend {backend.get('cluster')}: weight {backend.get('weight')} ({backend.get('percent')}%)"
        )
        for key in (
            "subset",
            "timeouts",
            "connectionLimits",
            "outlierDetection",
            "healthCheck",
            "loadBalancer",
        ):
            if backend.get(key):
                lines.append(f"    {key}: {_flat(backend[key])}")
        lines.extend(render_zones(backend.get("zones") or [], "    "))
    if "timeouts" in doc:
        lines.append(f"  timeouts: {_flat(doc.get('timeouts'))}")
    if "retry" in doc:
        lines.append(f"  retry: {_flat(doc.get('retry'))}")
    for note in doc.get("kongOverrides") or []:  # a gateway proxy's leg: the Kong value wins
        lines.append(f"  kong: {note}")
    destinations = doc.get("destinations") or []
    if not destinations:
        lines.append("  no data plane serves this destination")
    for dest in destinations:
        verdict = "ALLOWED" if dest.get("allowed") else "DENIED (403)"
        lines.append(f"  at {dest.get('dataplane')} ({dest.get('inbound')}): {verdict}")
        for key in ("rateLimit", "faults", "timeouts"):
            if dest.get(key):
                lines.append(
                    f"    {key}: {_flat(dest[key]) if not isinstance(dest[key], list) else dest[key]}"
                )
    return "\n".join(lines) + "\n"


def render_zones(zones: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    """One line per zone of a cluster (isthmus.egress.inspect.cluster_zones): priority, weight, the zone proxies."""
    lines = []
    for z in zones:
        via = z.get("via") or {}
        how = str(via.get("type", "direct"))
        if via.get("egresses"):
            how += " " + ",".join(via["egresses"])
        if via.get("ingresses"):
            how += (" -> ingress " if via.get("egresses") else " ") + ",".join(via["ingresses"])
        lines.append(
            f"{indent}zone {z.get('zone') or '(local)'}: priority {z.get('priority')}, weight {z.get('weight')} "
            f"({z.get('percentOfPriority')}% of its priority), {how}"
        )
    return lines


def render_zone_proxy(view: dict[str, Any]) -> str:
    """``isthmus inspect zoneingress|zoneegress NAME``: its SNI routes, each with its zones and weighted endpoints."""
    lines = [
        f"{view.get('type')} {view.get('name')} (zone {view.get('zone') or '-'}) on {view.get('address')}"
    ]
    for route in view.get("routes") or []:
        how = "terminates mTLS" if route.get("terminate") else "passthrough"
        zones = ",".join(route.get("zones") or []) or "-"
        lines.append(
            f"  {', '.join(route.get('serverNames') or [])} -> {route.get('destination')} ({how}, zones {zones})"
        )
        for e in route.get("endpoints") or []:
            where = f" zone {e['zone']}" if e.get("zone") else ""
            lines.append(f"    {e.get('address')}:{e.get('port')} weight {e.get('weight')}{where}")
    if not view.get("routes"):
        lines.append("  no routes")
    return "\n".join(lines) + "\n"


def render_dataplane_zones(view: dict[str, Any]) -> str:
    """``isthmus inspect dataplane NAME --zones``: each cluster's zones (priority, weight, zone proxies)."""
    lines = [f"dataplane {view.get('mesh')}/{view.get('name')} in zone {view.get('zone') or '-'}"]
    for cluster in view.get("clusters") or []:
        lines.append(f"  cluster {cluster.get('cluster')} ({cluster.get('service')})")
        lines.extend(render_zones(cluster.get("zones") or [], "    "))
    return "\n".join(lines) + "\n"
