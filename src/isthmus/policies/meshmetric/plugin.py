"""MeshMetric: what the agent of each selected proxy serves to Prometheus.

The control plane resolves the policies into one JSON document (the Prometheus backends with Kuma's defaults,
port 5670 and path ``/metrics``, the sidecar's profiles and filters, the applications to scrape, and the labels
every sample gets: mesh, service, zone, instance; and, per Envoy cluster leading to a mesh service, that
service, which the agent adds as ``destination_service`` to the samples of the cluster) and hands it to the agent through an Envoy listener on an
abstract unix socket (Kuma's dynamic-configuration listener); the agent polls it (:mod:`isthmus.dp.metrics`).
"""

from __future__ import annotations

import json
from typing import Any

from isthmus.ir.evolve import evolve
from isthmus.ir.model import ProxyIR
from isthmus.ir.observability import Metrics, dynconf_socket
from isthmus.policies.engine import dataplane_spec, resolve_proxy
from isthmus.policies.meshmetric.api import DEFAULT_PATH, DEFAULT_PORT, Conf, MeshMetricSpec
from isthmus.policies.plugin import PolicyInputs, parse_conf, policy_type
from isthmus.resources.registry import ResourceType

ZONE_TAG = "kuma.io/zone"


def agent_document(
    conf: Conf, labels: dict[str, str], address: str, clusters: dict[str, str] | None = None
) -> dict[str, Any]:
    """The agent's configuration: every field with its default filled in. ``clusters`` maps the proxy's Envoy
    clusters to the mesh services they lead to: the agent labels a sample of such a cluster (Envoy's
    ``envoy_cluster_name``) with ``destination_service``."""
    sidecar = conf.sidecar
    profiles = sidecar.profiles if sidecar else None
    names = [p.name.value for p in (profiles.append_profiles or [])] if profiles else []
    return {
        "labels": labels,
        "clusters": dict(sorted((clusters or {}).items())),
        "sidecar": {
            "profiles": names or ["Basic"],
            "include": [s.model_dump(mode="json") for s in (profiles.include or [])] if profiles else [],
            "exclude": [s.model_dump(mode="json") for s in (profiles.exclude or [])] if profiles else [],
            "includeUnused": bool(sidecar.include_unused) if sidecar else False,
        },
        "applications": [
            {
                "name": a.name or "",
                "address": a.address or "127.0.0.1",
                "port": a.port,
                "path": a.path or DEFAULT_PATH,
            }
            for a in conf.applications or ()
        ],
        "backends": [
            {
                "type": "Prometheus",
                "address": address,
                "port": b.prometheus.port or DEFAULT_PORT,
                "path": b.prometheus.path or DEFAULT_PATH,
                "clientId": b.prometheus.client_id or "",
            }
            for b in conf.backends or ()
            if b.prometheus is not None
        ],
    }


class MeshMetricPlugin:
    resource_type: ResourceType = policy_type("MeshMetric", "meshmetrics", MeshMetricSpec, "mm")
    order = 1500

    def apply(self, ir: ProxyIR, inputs: PolicyInputs) -> ProxyIR:
        if not inputs.policies:
            return ir
        conf = parse_conf(Conf, resolve_proxy(inputs.policies, inputs.dataplane))
        if conf is None or not conf.backends:
            return ir
        dp = inputs.dataplane
        spec = dataplane_spec(dp)
        services = spec.services
        tags: dict[str, str] = {}
        for inbound in spec.networking.inbound:
            tags = {**inbound.tags, **tags}
        if spec.networking.gateway is not None:
            tags = {**spec.networking.gateway.tags, **tags}
        labels = {
            "mesh": dp.mesh,
            "service": services[0] if services else "",
            "zone": tags.get(ZONE_TAG, ""),
            "instance": dp.name,
        }
        clusters = {c.name: c.service for c in ir.clusters if c.service}
        document = agent_document(conf, labels, str(spec.networking.address), clusters)
        text = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return evolve(ir, metrics=Metrics(conf=text, socket=dynconf_socket(dp.mesh, dp.name)))

    def describe(self, inputs: PolicyInputs) -> dict[str, Any]:
        resolved = resolve_proxy(inputs.policies, inputs.dataplane)
        if resolved.empty:
            return {"inbounds": [], "outbounds": []}
        return {
            "proxy": {"conf": dict(resolved.conf), "origins": [o.as_dict() for o in resolved.origins]},
            "inbounds": [],
            "outbounds": [],
        }


PLUGIN = MeshMetricPlugin()
