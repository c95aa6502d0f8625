"""MeshLoadBalancingStrategy: the destination clusters' balancer, and the hash keys routes hand to it.

``localityAwareness`` becomes ``LoadBalancer.locality``; :mod:`isthmus.ingress.locality` turns it into Envoy
priorities per zone once the endpoints are known (the local zone first, other zones as failover).
"""

from __future__ import annotations

from typing import Literal, cast

from isthmus.ir.evolve import evolve
from isthmus.ir.model import Cluster, OutboundListener
from isthmus.ir.traffic import Failover as FailoverIR
from isthmus.ir.traffic import HashPolicy as HashPolicyIR
from isthmus.ir.traffic import LoadBalancer as LoadBalancerIR
from isthmus.ir.traffic import Locality
from isthmus.policies.engine import Resolved
from isthmus.policies.meshloadbalancingstrategy.api import (
    Conf,
    HashPolicy,
    HashType,
    LbType,
    LocalityAwareness,
    MeshLoadBalancingStrategySpec,
)
from isthmus.policies.plugin import ToFromPlugin, derived, policy_type
from isthmus.resources.duration import duration_ms


def _hash(policy: HashPolicy) -> HashPolicyIR:
    terminal = bool(policy.terminal)
    if policy.type is HashType.HEADER and policy.header:
        return HashPolicyIR("Header", policy.header.name, terminal=terminal)
    if policy.type is HashType.COOKIE and policy.cookie:
        ttl = duration_ms(policy.cookie.ttl) if policy.cookie.ttl else None
        return HashPolicyIR(
            "Cookie", policy.cookie.name, ttl_ms=ttl, path=policy.cookie.path, terminal=terminal
        )
    if policy.type is HashType.QUERY_PARAMETER and policy.query_parameter:
        return HashPolicyIR("QueryParameter", policy.query_parameter.name, terminal=terminal)
    if policy.type is HashType.FILTER_STATE and policy.filter_state:
        return HashPolicyIR("FilterState", policy.filter_state.key, terminal=terminal)
    if policy.type is HashType.SOURCE_IP or policy.type is HashType.CONNECTION:
        return HashPolicyIR("SourceIP", terminal=terminal)
    raise ValueError(f"hash policy {policy.type.value} lacks its section")


def _locality(la: LocalityAwareness) -> Locality:
    cross = la.cross_zone
    failover = None
    if cross is not None and cross.failover is not None:
        failover = tuple(
            FailoverIR(
                cast(Literal["Any", "Only", "AnyExcept", "None"], f.to.type),
                tuple(f.to.zones or ()),
                tuple(f.from_.zones) if f.from_ is not None else (),
            )
            for f in cross.failover
        )
    threshold = None
    if cross is not None and cross.failover_threshold is not None:
        threshold = max(1, round(float(cross.failover_threshold.percentage)))
    tags = (
        tuple((t.key, t.weight) for t in (la.local_zone.affinity_tags or []) if la.local_zone)
        if la.local_zone
        else ()
    )
    return Locality(bool(la.disabled), failover, threshold, tags)


LbKind = Literal["RoundRobin", "LeastRequest", "RingHash", "Random", "Maglev"]
HashFunction = Literal["XXHash", "MurmurHash2"]


def load_balancer(conf: Conf) -> LoadBalancerIR:
    lb = conf.load_balancer
    kind: LbKind = lb.type.value if lb else "RoundRobin"
    hashes = list(conf.hash_policies or [])
    la = conf.locality_awareness
    out = LoadBalancerIR(
        type=kind,
        locality_aware=la is not None and not la.disabled,
        locality=_locality(la) if la is not None else None,
    )
    if lb is not None and lb.type is LbType.LEAST_REQUEST and lb.least_request:
        bias = lb.least_request.active_request_bias
        out = evolve(
            out,
            choice_count=lb.least_request.choice_count,
            active_request_bias=float(bias) if bias is not None else None,
        )
    if lb is not None and lb.type is LbType.RING_HASH and lb.ring_hash:
        r = lb.ring_hash
        out = evolve(
            out,
            min_ring_size=r.min_ring_size,
            max_ring_size=r.max_ring_size,
            hash_function=cast(HashFunction | None, r.hash_function),
        )
        hashes = list(r.hash_policies or hashes)
    if lb is not None and lb.type is LbType.MAGLEV and lb.maglev:
        out = evolve(out, table_size=lb.maglev.table_size)
        hashes = list(lb.maglev.hash_policies or hashes)
    return evolve(out, hash_policies=tuple(_hash(h) for h in hashes))


class MeshLoadBalancingStrategyPlugin(ToFromPlugin):
    resource_type = policy_type(
        "MeshLoadBalancingStrategy", "meshloadbalancingstrategies", MeshLoadBalancingStrategySpec, "mlbs"
    )
    order = 400
    conf_model = Conf

    def edit_cluster(self, cluster: Cluster, conf: Conf, resolved: Resolved) -> Cluster:
        return evolve(cluster, lb=derived(load_balancer, conf))

    def edit_outbound(self, outbound: OutboundListener, conf: Conf, resolved: Resolved) -> OutboundListener:
        return evolve(outbound, lb=derived(load_balancer, conf))


PLUGIN = MeshLoadBalancingStrategyPlugin()
