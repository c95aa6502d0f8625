"""A gateway's mesh leg: Kong Services whose host is ``<kuma.io/service>.mesh`` (pure; no I/O).

The gateway proxy reaches such a service over the mesh with its own identity, with no ``networking.outbound`` entry:
:class:`isthmus.gateway.reconciler.GatewayReconciler` tells the mesh reconciler which mesh services a gateway's
workspace names (:func:`mesh_services`), and the mesh pipeline builds, for each, a cluster (mTLS, the mesh's
cluster-level policies: MeshCircuitBreaker, MeshTimeout's connect and idle timeouts, MeshLoadBalancingStrategy,
MeshHealthCheck) and a listener-less outbound whose RouteConfiguration ``gateway-leg:<service>``
(:func:`isthmus.ir.build.gateway_leg_name`) carries the route-level ones (MeshRetry, MeshTimeout's request and stream
idle timeouts, hashing). The gateway's resources are then fused with them per proxy (:func:`fuse`):

* a Kong route to a mesh service is marked (route metadata ``isthmus.mesh_leg``, see :func:`mark`) with what its
  Kong Service sets; the mesh leg's retry policy, request/idle timeouts and hash policies replace Kong's unless the
  Service sets them: a Kong value "sets" a field when it differs from Kong's default (``retries`` 5,
  ``read_timeout``/``write_timeout`` 60000), since Kong stores every field with its default;
* a Service with its own ``connect_timeout`` (not 60000), or whose host names an Upstream (``<service>.mesh`` as an
  Upstream name: its ``algorithm`` and ``healthchecks``; its targets are not used, the endpoints are the mesh's),
  gets a cluster of its own, ``kong:<ws>:mesh-leg:<service id>``: a copy of the mesh cluster with Kong's values
  over it.

* a gateway serving Kong routes is an endpoint of its own service at its first proxy listener
  (:func:`isthmus.context.mesh_context.gateway_listen`); with mTLS the mesh pipeline builds its mesh inbound there
  (MeshTrafficPermission, the consumer-header rule, to ``localhost:<port>``), and that inbound's TLS filter chain
  joins the gateway's HTTP listener behind a TLS inspector: mesh clients (another gateway by mesh name) are
  authenticated and authorised as at any inbound, then meet the gateway's own Kong routes and plugins.

* MeshAccessLog and MeshTrace selecting the gateway proxy reach its Kong listeners' HCMs (:func:`_observe_listener`):
  each leg's ``gateway-leg:`` RouteConfiguration carries the access logs of its routes (the leg's ``to`` items,
  placeholders resolved for it) and the tracer, ``gateway-leg:*`` those of the other routes (``to: Mesh``, the
  destination ``*``), as a partial HCM in typed metadata (:mod:`isthmus.xds.translate.observability`). Equal
  logs for every destination make one access log without a filter; otherwise each distinct set of logs gets a
  CEL filter on the request's upstream cluster (``xds.cluster_name``): the leg's mesh cluster and its Services'
  own copies. A Kong zipkin or opentelemetry plugin's tracer wins over MeshTrace's.

Without a mesh leg (the mesh pipeline has not built it yet, or the service is not in the mesh) Kong's values apply.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from isthmus.gateway import envoy_routes, healthchecks
from isthmus.ir.observability import GATEWAY_ANY_DESTINATION, GATEWAY_HCM_METADATA
from isthmus.xds import types
from isthmus.xds.snapshot import Resource, Snapshot

LEG = "isthmus.mesh_leg"
LEG_ROUTES_PREFIX = "gateway-leg:"  # isthmus.ir.build.gateway_leg_name
KONG_RETRIES = 5
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
KONG_TIMEOUT_MS = 60000
HCM_FILTER = "envoy.filters.network.http_connection_manager"
CEL_FILTER = "envoy.access_loggers.extension_filters.cel"
KONG_LISTENERS = ("kong:http:", "kong:https:")
_LB = {"round-robin": "ROUND_ROBIN", "least-connections": "LEAST_REQUEST", "consistent-hashing": "RING_HASH"}


def mesh_services(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> frozenset[str]:
    """The mesh services a workspace's Kong Services name."""
    return frozenset(s for s in map(envoy_routes.mesh_service, entities.get("services", {}).values()) if s)


def _set(service: Mapping[str, Any], field: str, default: int) -> bool:
    value = service.get(field)
    return value is not None and value != default


def leg_cluster_name(workspace: str, service_id: str) -> str:
    return f"kong:{workspace}:mesh-leg:{service_id}"


def own_cluster(service: Mapping[str, Any], upstreams: Mapping[str, Mapping[str, Any]]) -> bool:
    """Does this mesh-name Service need a cluster of its own (Kong values over the mesh cluster's)?"""
    return _set(service, "connect_timeout", KONG_TIMEOUT_MS) or str(service.get("host") or "") in upstreams


def cluster_for(
    workspace: str, service: Mapping[str, Any], upstreams: Mapping[str, Mapping[str, Any]]
) -> str:
    """The cluster a route to a mesh-name Service uses: the mesh's, or the Service's own copy of it."""
    name = envoy_routes.mesh_service(service)
    assert name is not None
    return leg_cluster_name(workspace, str(service["id"])) if own_cluster(service, upstreams) else name


def kong_overrides(service: Mapping[str, Any], upstreams: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What a mesh-name Service sets itself, over the mesh's policies for that leg (for ``mark`` and ``explain``)."""
    out: dict[str, Any] = {}
    if _set(service, "retries", KONG_RETRIES):
        out["retries"] = service["retries"]
    for field in ("connect_timeout", "read_timeout", "write_timeout"):
        if _set(service, field, KONG_TIMEOUT_MS):
            out[field] = service[field]
    upstream = upstreams.get(str(service.get("host") or ""))
    if upstream is not None:
        out["upstream"] = str(upstream.get("name"))
        out["algorithm"] = upstream.get("algorithm") or "round-robin"
        hc = upstream.get("healthchecks")
        if isinstance(hc, Mapping) and (healthchecks.active_enabled(hc) or healthchecks.passive_enabled(hc)):
            out["healthchecks"] = True
    return out


def mark(routes: Iterable[dict[str, Any]], service: Mapping[str, Any], upstreams: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """Mark the Envoy routes (dicts) of a mesh-name Service with the leg and what Kong sets for it."""
    name = envoy_routes.mesh_service(service)
    out = list(routes)
    if name is None:
        return out
    sets = kong_overrides(service, upstreams)
    leg = {
        "service": name,
        "retries": "retries" in sets,
        "timeouts": "read_timeout" in sets or "write_timeout" in sets,
        "hash": "upstream" in sets,
    }
    for route in out:
        if "route" in route:
            route.setdefault("metadata", {}).setdefault("filter_metadata", {})[LEG] = leg
    return out


def clusters(workspace: str, services: Iterable[Mapping[str, Any]], upstreams: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """Placeholders of the Services' own mesh-leg clusters: only Kong's values, laid over the mesh cluster by
    :func:`fuse` (never served as they are)."""
    out = []
    for service in services:
        name = envoy_routes.mesh_service(service)
        if name is None or not own_cluster(service, upstreams):
            continue
        cluster: dict[str, Any] = {
            "name": leg_cluster_name(workspace, str(service["id"])),
            "metadata": {
                "filter_metadata": {LEG: {"service": name, "lb": str(service.get("host")) in upstreams}}
            },
            "load_assignment": {"cluster_name": name, "endpoints": []},
        }
        if _set(service, "connect_timeout", KONG_TIMEOUT_MS):
            cluster["connect_timeout"] = envoy_routes.seconds(service.get("connect_timeout"), KONG_TIMEOUT_MS)
        upstream = upstreams.get(str(service.get("host") or ""))
        if upstream is not None:
            cluster["lb_policy"] = _LB.get(str(upstream.get("algorithm") or "round-robin"), "ROUND_ROBIN")
            if cluster["lb_policy"] == "RING_HASH":
                cluster["ring_hash_lb_config"] = {"minimum_ring_size": int(upstream.get("slots") or 10000)}
            hc = upstream.get("healthchecks")
            if isinstance(hc, Mapping):
                healthchecks.apply(
                    cluster, hc, str(upstream["host_header"]) if upstream.get("host_header") else None
                )
                # probes go through the cluster's own (mesh mTLS) socket: a sidecar accepts nothing else
                cluster.pop("transport_socket_matches", None)
                for check in cluster.get("health_checks", ()):
                    check.pop("transport_socket_match_criteria", None)
        cluster.pop("load_assignment", None)
        out.append(cluster)
    return out


# -- per proxy: the gateway's resources fused with its mesh legs --------------------------------------------------

_FUSED: dict[tuple[str, str, tuple[str, ...]], Resource] = {}
_FUSED_LIMIT = 4096


def _leg_actions(base: Snapshot) -> dict[str, tuple[str, route_components_pb2.RouteAction]]:
    out = {}
    for name, res in base.resources.get(types.ROUTE, {}).items():
        if name.startswith(LEG_ROUTES_PREFIX):
            rc = route_pb2.RouteConfiguration()
            res.packed.Unpack(rc)
            routes = [r for vh in rc.virtual_hosts for r in vh.routes if r.HasField("route")]
            if routes:  # the leg's default route (MeshHTTPRoute rules before it are Kong's business)
                out[name[len(LEG_ROUTES_PREFIX) :]] = (res.digest, routes[-1].route)
    return out


def _fuse_routes(res: Resource, legs: Mapping[str, tuple[str, route_components_pb2.RouteAction]]) -> Resource:
    key = (res.digest, "routes", tuple(f"{s}={d}" for s, (d, _) in sorted(legs.items())))
    hit = _FUSED.get(key)
    if hit is not None:
        return hit
    rc = route_pb2.RouteConfiguration()
    res.packed.Unpack(rc)
    for vh in rc.virtual_hosts:
        for route in vh.routes:
            meta = route.metadata.filter_metadata
            if LEG not in meta:
                continue
            mark_ = meta[LEG]
            leg = legs.get(mark_.fields["service"].string_value)
            kong = {k: mark_.fields[k].bool_value for k in ("retries", "timeouts", "hash")}
            del meta[LEG]
            if not meta:
                route.ClearField("metadata")
            if leg is None:
                continue
            action, mesh = route.route, leg[1]
            if not kong["retries"] and mesh.HasField("retry_policy"):
                action.retry_policy.CopyFrom(mesh.retry_policy)
            if not kong["timeouts"]:
                for field in ("timeout", "idle_timeout"):
                    if mesh.HasField(field):
                        getattr(action, field).CopyFrom(getattr(mesh, field))
            if not kong["hash"] and not action.hash_policy and mesh.hash_policy:
                action.hash_policy.extend(mesh.hash_policy)
    out = Resource.of(types.ROUTE, rc)
    _remember(key, out)
    return out


def _fuse_cluster(res: Resource, base: Mapping[str, Resource]) -> Resource | None:
    placeholder = cluster_pb2.Cluster()
    res.packed.Unpack(placeholder)
    service = placeholder.metadata.filter_metadata[LEG].fields["service"].string_value
    mesh = base.get(service)
    if mesh is None:
        return None
    key = (res.digest, mesh.digest, ())
    hit = _FUSED.get(key)
    if hit is not None:
        return hit
    merged = cluster_pb2.Cluster()
    mesh.packed.Unpack(merged)
    merged.name = placeholder.name
    merged.eds_cluster_config.service_name = (
        service  # the mesh's endpoints (EDS under the mesh cluster's name)
    )
    if placeholder.metadata.filter_metadata[LEG].fields["lb"].bool_value:  # an Upstream's algorithm
        which = merged.WhichOneof("lb_config")
        if which:
            merged.ClearField(which)  # type: ignore[arg-type]
        merged.lb_policy = placeholder.lb_policy  # ROUND_ROBIN (0) is not among ListFields below
    for field, value in placeholder.ListFields():
        if field.name in ("name", "metadata"):
            continue
        merged.ClearField(field.name)  # type: ignore[arg-type]
        if field.is_repeated:
            getattr(merged, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(merged, field.name).CopyFrom(value)
        else:
            setattr(merged, field.name, value)
    out = Resource.of(types.CLUSTER, merged)
    _remember(key, out)
    return out


def _fuse_listener(res: Resource, inbound: Resource) -> Resource:
    """The gateway's HTTP listener also accepting mesh mTLS: the mesh inbound's TLS filter chain (its permissions,
    XFCC, consumer-header rule; to the listener's plaintext side) chosen by the TLS inspector for TLS clients."""
    key = (res.digest, inbound.digest, ("listener",))
    hit = _FUSED.get(key)
    if hit is not None:
        return hit
    kong = listener_pb2.Listener()
    res.packed.Unpack(kong)
    mesh = listener_pb2.Listener()
    inbound.packed.Unpack(mesh)
    secure = [c for c in mesh.filter_chains if c.HasField("transport_socket")]
    if secure:
        chain = listener_components_pb2.FilterChain()
        chain.CopyFrom(secure[0])
        chain.filter_chain_match.transport_protocol = "tls"
        chain.name = "mesh"
        chains = [chain, *kong.filter_chains]
        kong.ClearField("filter_chains")
        kong.filter_chains.extend(chains)
        if not any(f.name == TLS_INSPECTOR for f in kong.listener_filters):
            kong.listener_filters.add(name=TLS_INSPECTOR).typed_config.Pack(tls_inspector_pb2.TlsInspector())
    out = Resource.of(types.LISTENER, kong)
    _remember(key, out)
    return out


def _observed(base: Snapshot) -> tuple[dict[str, Resource], tuple[str, ...]]:
    """(the ``gateway-leg:`` RouteConfigurations carrying access logs or a tracer, by destination; every leg)."""
    marker = GATEWAY_HCM_METADATA.encode()
    found: dict[str, Resource] = {}
    legs = []
    for name, res in base.resources.get(types.ROUTE, {}).items():
        if not name.startswith(LEG_ROUTES_PREFIX):
            continue
        destination = name[len(LEG_ROUTES_PREFIX) :]
        if destination != GATEWAY_ANY_DESTINATION:
            legs.append(destination)
        if marker in res.packed.value:
            found[destination] = res
    return found, tuple(sorted(legs))


def _own_clusters(overlay: Mapping[str, list[Resource]]) -> tuple[tuple[str, str], ...]:
    """(cluster, leg service) of the Services' own mesh-leg clusters (their routes' upstream clusters)."""
    out = []
    for r in overlay.get(types.CLUSTER, ()):
        if ":mesh-leg:" in r.name:
            placeholder = cluster_pb2.Cluster()
            r.packed.Unpack(placeholder)
            out.append((r.name, placeholder.metadata.filter_metadata[LEG].fields["service"].string_value))
    return tuple(sorted(out))


def _cel(expression: str) -> accesslog_pb2.AccessLogFilter:
    out = accesslog_pb2.AccessLogFilter()
    out.extension_filter.name = CEL_FILTER
    out.extension_filter.typed_config.Pack(cel_pb2.ExpressionFilter(expression=expression))
    return out


def _gateway_logs(
    observed: Mapping[str, Resource], legs: tuple[str, ...], own: tuple[tuple[str, str], ...]
) -> tuple[list[accesslog_pb2.AccessLog], hcm_pb2.HttpConnectionManager.Tracing | None]:
    """The access logs (filtered by upstream cluster where destinations differ) and the tracer of Kong's HCMs."""
    parts: dict[str, hcm_pb2.HttpConnectionManager] = {}
    for destination, res in observed.items():
        rc = route_pb2.RouteConfiguration()
        res.packed.Unpack(rc)
        hcm = hcm_pb2.HttpConnectionManager()
        rc.metadata.typed_filter_metadata[GATEWAY_HCM_METADATA].Unpack(hcm)
        parts[destination] = hcm
    destinations = [*legs, GATEWAY_ANY_DESTINATION]
    groups: dict[bytes, tuple[list[accesslog_pb2.AccessLog], list[str]]] = {}
    for d in destinations:
        logs = list(parts[d].access_log) if d in parts else []
        if logs:
            key = b"\0".join(log.SerializeToString(deterministic=True) for log in logs)
            groups.setdefault(key, (logs, []))[1].append(d)
    clusters: dict[str, list[str]] = {leg: [leg] for leg in legs}
    for cluster, service in own:
        clusters.setdefault(service, [service]).append(cluster)

    def names(services: Iterable[str]) -> str:
        return "[" + ", ".join(json.dumps(c) for s in services for c in clusters.get(s, [s])) + "]"

    out: list[accesslog_pb2.AccessLog] = []
    for logs, chosen in sorted(groups.values(), key=lambda g: g[1]):
        if len(chosen) == len(destinations):  # every route logs the same: no filter
            out.extend(logs)
            continue
        if GATEWAY_ANY_DESTINATION in chosen:  # the routes outside the mesh, and maybe some legs
            others = [leg for leg in legs if leg not in chosen]
            expression = f"!(xds.cluster_name in {names(others)})"
        else:
            expression = f"xds.cluster_name in {names(chosen)}"
        for log in logs:
            filtered = accesslog_pb2.AccessLog()
            filtered.CopyFrom(log)
            filtered.filter.CopyFrom(_cel(expression))
            out.append(filtered)
    tracers = [parts[d].tracing for d in (GATEWAY_ANY_DESTINATION, *legs) if d in parts and parts[d].HasField("tracing")]  # fmt: skip
    return out, tracers[0] if tracers else None


def _observe_listener(
    res: Resource, observed: Mapping[str, Resource], legs: tuple[str, ...], own: tuple[tuple[str, str], ...]
) -> Resource:
    """A Kong listener whose HCMs (not the fused mesh inbound's) also log and trace as the mesh policies say."""
    key = (res.digest, "observe", (*(f"{d}={r.digest}" for d, r in sorted(observed.items())), "|", *legs, "|", *(f"{c}>{s}" for c, s in own)))  # fmt: skip
    hit = _FUSED.get(key)
    if hit is not None:
        return hit
    logs, tracing = _gateway_logs(observed, legs, own)
    listener = listener_pb2.Listener()
    res.packed.Unpack(listener)
    chains = [c for c in listener.filter_chains if c.name != "mesh"]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for f in chain.filters:
            if f.name != HCM_FILTER:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            hcm.access_log.extend(logs)
            if tracing is not None and not hcm.HasField("tracing"):  # a Kong zipkin/opentelemetry plugin wins
                hcm.tracing.CopyFrom(tracing)
            f.typed_config.Pack(hcm)
    out = Resource.of(types.LISTENER, listener)
    _remember(key, out)
    return out


def _remember(key: tuple[str, str, tuple[str, ...]], value: Resource) -> None:
    if len(_FUSED) >= _FUSED_LIMIT:
        _FUSED.clear()
    _FUSED[key] = value


def fuse(base: Snapshot, overlay: Mapping[str, list[Resource]]) -> dict[str, list[Resource]]:
    """The proxy's resources: its mesh snapshot with the gateway's over it (same names: the gateway's), the Kong
    routes to mesh services given the mesh leg's route policies where Kong sets none, the Services' own mesh-leg
    clusters built from the mesh clusters, the Kong listeners logging and tracing as MeshAccessLog and MeshTrace
    say; the ``gateway-leg:`` RouteConfigurations are not served."""
    merged: dict[str, list[Resource]] = {}
    legs = _leg_actions(base)
    observed, leg_names = _observed(base)  # MeshAccessLog, MeshTrace on the Kong listeners
    own = _own_clusters(overlay) if observed else ()
    base_clusters = base.resources.get(types.CLUSTER, {})
    base_listeners = base.resources.get(types.LISTENER, {})
    # the gateway's mesh inbounds (isthmus.ir.build) share a port with its HTTP listeners: fused into them
    inbounds: dict[str, Resource] = {}
    for r in overlay.get(types.LISTENER, ()):
        address = r.name.removeprefix("kong:http:")
        if address != r.name and f"inbound:{address}" in base_listeners:
            inbounds[r.name] = base_listeners[f"inbound:{address}"]
    shared = {i.name for i in inbounds.values()}
    for type_url, by_name in base.resources.items():
        if type_url == types.ROUTE:
            merged[type_url] = [r for n, r in by_name.items() if not n.startswith(LEG_ROUTES_PREFIX)]
        elif type_url == types.LISTENER:
            merged[type_url] = [r for n, r in by_name.items() if n not in shared]
        else:
            merged[type_url] = list(by_name.values())
    for type_url, resources in overlay.items():
        names = {r.name for r in resources}
        kept = [r for r in merged.get(type_url, []) if r.name not in names]
        fused: list[Resource] = []
        for r in resources:
            if type_url == types.ROUTE and _has_legs(r):
                fused.append(_fuse_routes(r, legs))
            elif type_url == types.LISTENER and (r.name in inbounds or observed):
                if r.name in inbounds:
                    r = _fuse_listener(r, inbounds[r.name])
                if observed and r.name.startswith(KONG_LISTENERS):
                    r = _observe_listener(r, observed, leg_names, own)
                fused.append(r)
            elif type_url == types.CLUSTER and ":mesh-leg:" in r.name:
                c = _fuse_cluster(r, base_clusters)
                if c is not None:
                    fused.append(c)
            else:
                fused.append(r)
        merged[type_url] = kept + fused
    return merged


def _has_legs(res: Resource) -> bool:
    return LEG.encode() in res.packed.value


def explain(service: Mapping[str, Any], upstreams: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What a mesh-name Service's Kong values override, in words (for ``isthmus explain`` of a gateway proxy)."""
    sets = kong_overrides(service, upstreams)
    name = str(service.get("name") or service.get("id"))
    out = []
    if "retries" in sets:
        out.append(
            f"Kong Service {name!r} sets retries={sets['retries']}: it overrides MeshRetry for this leg"
        )
    for field in ("read_timeout", "write_timeout"):
        if field in sets:
            out.append(f"Kong Service {name!r} sets {field}={sets[field]}: it overrides MeshTimeout's request and idle timeouts for this leg")  # fmt: skip
    if "connect_timeout" in sets:
        out.append(f"Kong Service {name!r} sets connect_timeout={sets['connect_timeout']}: it overrides MeshTimeout's connectTimeout for this leg")  # fmt: skip
    if "upstream" in sets:
        out.append(f"Kong Upstream {sets['upstream']!r} sets algorithm={sets['algorithm']}: it overrides MeshLoadBalancingStrategy for this leg")  # fmt: skip
    if sets.get("healthchecks"):
        out.append(f"Kong Upstream {sets['upstream']!r} sets healthchecks: they override MeshHealthCheck and MeshCircuitBreaker's outlier detection for this leg")  # fmt: skip
    if not out:
        out.append(f"Kong Service {name!r} sets none of retries, timeouts, algorithm, healthchecks: the mesh's policies apply")  # fmt: skip
    return out


def notes(entities: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, list[str]]:
    """Per mesh service, what the workspace's Kong Services to it set over the mesh's policies (:func:`explain`)."""
    upstreams = {str(u["name"]): u for u in entities.get("upstreams", {}).values()}
    out: dict[str, list[str]] = {}
    for _, service in sorted(entities.get("services", {}).items()):
        name = envoy_routes.mesh_service(service)
        if name:
            out.setdefault(name, []).extend(explain(service, upstreams))
    return out
