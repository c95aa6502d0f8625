"""Hostnames from HostnameGenerators into a resource's ``status.addresses`` (Kuma's rules).

Generators are taken zone-origin first, then oldest first, then by name; resources oldest first, then by name.
A generator whose selector for the resource's kind matches the resource's labels renders its template; a
hostname already given to another resource of the same kind in the mesh is a collision (the condition says
so, the later resource gets none from that generator); a template that fails (a missing label, not a DNS name)
is reported in the generator's condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from isthmus.names.selection import DISPLAY_NAME, NAMESPACE, ORIGIN, ZONE, effective_labels
from isthmus.resources.hostnames import HostnameGeneratorSpec, TemplateError, hostname_problem, render


@dataclass(frozen=True)
class Generator:
    name: str
    labels: Mapping[str, str]
    created: datetime
    spec: HostnameGeneratorSpec


@dataclass(frozen=True)
class Named:
    mesh: str
    name: str
    labels: Mapping[str, str]
    created: datetime


def _generator_order(g: Generator) -> tuple[int, datetime, str]:
    return (0 if g.labels.get(ORIGIN) == "zone" else 1, g.created, g.name)


def generate(
    kind: str, generators: Sequence[Generator], resources: Sequence[Named], zone: str
) -> dict[tuple[str, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(mesh, name) -> (addresses, hostnameGenerators) as Kuma writes them in status."""
    ordered = sorted(resources, key=lambda r: (r.created, r.name))
    taken: dict[tuple[str, str], str] = {}  # (mesh, hostname) -> resource name
    per: dict[tuple[str, str], dict[str, tuple[str, dict[str, Any]]]] = {}
    for gen in sorted(generators, key=_generator_order):
        selector = gen.spec.selector.selector_for(kind)
        if selector is None:
            continue
        parts = gen.spec.parts
        for res in ordered:
            labels = effective_labels(res.labels, res.name, zone)
            if not selector.matches(labels):
                continue
            values = {
                "Name": res.name,
                "DisplayName": labels.get(DISPLAY_NAME, res.name),
                "Namespace": labels.get(NAMESPACE, ""),
                "Mesh": res.mesh,
                "Zone": labels.get(ZONE, "") or zone,
            }
            hostname = ""
            condition: dict[str, Any]
            try:
                hostname = render(parts, values, res.labels)
                problem = hostname_problem(hostname)
                if problem:
                    raise TemplateError(f"generated hostname {hostname!r} is not a valid DNS name: {problem}")
            except TemplateError as exc:
                hostname = ""
                condition = _condition("False", "TemplateError", str(exc))
            else:
                owner = taken.get((res.mesh, hostname))
                if owner is not None and owner != res.name:
                    condition = _condition("False", "Collision", f"Hostname collision with {kind}: {owner}")
                    hostname = ""
                else:
                    taken[(res.mesh, hostname)] = res.name
                    condition = _condition("True", "Generated", "")
            per.setdefault((res.mesh, res.name), {})[gen.name] = (hostname, condition)
    out: dict[tuple[str, str], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for res in resources:
        addresses: list[dict[str, Any]] = []
        statuses: list[dict[str, Any]] = []
        for gen_name, (hostname, condition) in sorted(per.get((res.mesh, res.name), {}).items()):
            ref = {"coreName": gen_name}
            if hostname:
                addresses.append(
                    {"hostname": hostname, "origin": "HostnameGenerator", "hostnameGeneratorRef": ref}
                )
            statuses.append({"hostnameGeneratorRef": ref, "conditions": [condition] if condition else []})
        out[(res.mesh, res.name)] = (addresses, statuses)
    return out


def _condition(status: str, reason: str, message: str) -> dict[str, Any]:
    out = {"type": "Generated", "status": status, "reason": reason}
    if message:
        out["message"] = message
    return out
