"""Consumer-scoped plugin configurations as route copies (decision 2 of the gateway design).

Once kong.auth identifies a consumer it sets ``x-consumer-id`` and clears the route cache; the Kong route's Envoy
routes are preceded by a copy per consumer whose effective plugins (Kong's precedence over route, service and
consumer scopes) differ from the route's general ones, each matching ``x-consumer-id: <consumer id>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from isthmus.gateway.plugins import EnvoyRoute, Scopes

CONSUMER_HEADER = "x-consumer-id"


def consumer_copies(
    scopes: Scopes,
    route_id: str,
    service_id: str | None,
    build: Callable[[Mapping[str, Mapping[str, Any]]], list[EnvoyRoute]],
) -> list[EnvoyRoute]:
    """The consumer copies of one Kong route's Envoy routes (``build``: effective plugins -> Envoy routes)."""
    consumers = scopes.consumers(route_id, service_id)
    if not consumers:
        return []
    general = scopes.effective(route_id, service_id)
    out: list[EnvoyRoute] = []
    for consumer in consumers:
        plugins = scopes.effective(route_id, service_id, consumer)
        if plugins == general:
            continue
        header = {"name": CONSUMER_HEADER, "string_match": {"exact": consumer}}
        for route in build(plugins):
            match = {**route["match"], "headers": [*route["match"].get("headers", []), header]}
            out.append({**route, "name": f"{route.get('name', '')} consumer {consumer}", "match": match})
    return out
