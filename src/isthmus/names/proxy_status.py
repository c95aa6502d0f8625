"""A MeshService's ``status.dataplaneProxies`` and ``status.tls``, as Kuma's MeshService status updater has them.

- ``dataplaneProxies.total``: the Dataplanes the MeshService's ``spec.selector`` selects (``dataplaneTags``: a
  Dataplane with an inbound carrying all the tags; ``dataplaneRef``: the Dataplane of that name;
  ``dataplaneLabels``: the Dataplanes whose labels match), each counted once, a Dataplane with no inbound (or
  only ignored ones) never;
- ``connected``: those of them with an ADS stream open to this control plane;
- ``healthy``: those of them with, for every port of the MeshService, a selected inbound on its ``targetPort``
  that is ready (``state: Ready``, or no ``health.ready: false``); a MeshService without ports counts every
  selected Dataplane;
- ``tls.status``: ``NotReady`` when the mesh has no mTLS backend enabled; with one, ``Ready`` once every selected
  Dataplane holds a certificate of the mesh (its proxy has received it), and then ``Ready`` for as long as mTLS
  stays enabled (Kuma's rule: a new instance starts with mTLS, so its first seconds without a certificate must
  not flip the service back).

The pure part (:class:`DataplaneIndex`, :func:`members`, :func:`proxy_fields`) is computed from parsed resources
and a :class:`ProxyFacts`; :class:`LiveProxies` reads the facts from the control plane's ADS insights and
workload certificates. :mod:`isthmus.names.controller` writes the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from isthmus.names.selection import selected_inbounds, serves_port
from isthmus.resources.dataplane import DataplaneSpec, InboundState
from isthmus.resources.meshservice import MeshServiceDocument
from isthmus.resources.registry import Resource
from isthmus.xds import types
from isthmus.xds.node import node_id_or_none

if TYPE_CHECKING:
    from isthmus.cp.certificates import WorkloadCertificates
    from isthmus.cp.insights import Insights

READY = "Ready"
NOT_READY = "NotReady"


class ProxyFacts(Protocol):
    """What the control plane knows of a data plane beyond its stored Dataplane."""

    def connected(self, mesh: str, name: str) -> bool:
        """Its proxy has an xDS stream open to this control plane."""
        ...

    def certified(self, mesh: str, name: str) -> bool:
        """Its proxy has received a workload certificate of the mesh."""
        ...


class LiveProxies:
    """:class:`ProxyFacts` of a running control plane: the ADS streams (:class:`~isthmus.cp.insights.Insights`)
    and the certificates issued (:class:`~isthmus.cp.certificates.WorkloadCertificates`) that the proxy ACKed
    over SDS."""

    def __init__(self, insights: Insights, certificates: WorkloadCertificates | None = None) -> None:
        self.insights = insights
        self.certificates = certificates

    def connected(self, mesh: str, name: str) -> bool:
        nid = node_id_or_none(mesh, name)
        node = self.insights.nodes.get(nid) if nid else None
        return node is not None and node.online

    def certified(self, mesh: str, name: str) -> bool:
        nid = node_id_or_none(mesh, name)
        if nid is None or self.certificates is None or self.certificates.get(nid) is None:
            return False
        node = self.insights.nodes.get(nid)
        return node is not None and node.last_ack.get(types.SECRET) is not None


class DataplaneIndex:
    """One mesh's Dataplanes indexed for selection: by name, by inbound tag and by label, so that selecting
    for each of many MeshServices looks only at the Dataplanes that can match."""

    def __init__(self, dataplanes: Iterable[Resource]) -> None:
        self.by_name: dict[str, Resource] = {}
        self._by_tag: dict[tuple[str, str], set[str]] = {}
        self._by_label: dict[tuple[str, str], set[str]] = {}
        for dp in dataplanes:
            spec = dp.spec
            if not isinstance(spec, DataplaneSpec):
                continue
            inbounds = [i for i in spec.networking.inbound if i.state is not InboundState.IGNORED]
            if not inbounds:
                continue  # nothing of it can be selected
            self.by_name[dp.name] = dp
            for inbound in inbounds:
                for pair in inbound.tags.items():
                    self._by_tag.setdefault(pair, set()).add(dp.name)
            for pair in dp.labels.items():
                self._by_label.setdefault(pair, set()).add(dp.name)

    def candidates(self, ms: MeshServiceDocument) -> list[Resource]:
        """The Dataplanes that may be selected (a superset; :func:`members` decides), sorted by name."""
        sel = ms.spec.selector
        if sel.dataplane_ref is not None:
            dp = self.by_name.get(sel.dataplane_ref.name)
            return [dp] if dp is not None else []
        if sel.dataplane_tags is not None:
            pairs, index = list(sel.dataplane_tags.items()), self._by_tag
        elif sel.dataplane_labels is not None:
            pairs, index = list((sel.dataplane_labels.match_labels or {}).items()), self._by_label
        else:
            return []
        if not pairs:
            return [self.by_name[n] for n in sorted(self.by_name)]
        smallest: set[str] | None = None
        for pair in pairs:
            found = index.get(pair, set())
            if smallest is None or len(found) < len(smallest):
                smallest = found
        return [self.by_name[n] for n in sorted(smallest or ())]


@dataclass(frozen=True)
class Member:
    """A Dataplane a MeshService selects, and whether it serves every port of the service."""

    name: str
    healthy: bool


def members(ms: MeshServiceDocument, index: DataplaneIndex) -> tuple[Member, ...]:
    out = []
    for dp in index.candidates(ms):
        spec = dp.spec
        assert isinstance(spec, DataplaneSpec)
        inbounds = selected_inbounds(ms, dp, spec)
        if not inbounds:
            continue
        healthy = all(any(i.ready and serves_port(i, port) for i in inbounds) for port in ms.spec.ports)
        out.append(Member(dp.name, healthy))
    return tuple(out)


def dataplane_proxies(mesh: str, selected: Iterable[Member], facts: ProxyFacts) -> dict[str, int]:
    total = connected = healthy = 0
    for m in selected:
        total += 1
        connected += facts.connected(mesh, m.name)
        healthy += m.healthy
    return {"connected": connected, "healthy": healthy, "total": total}


def tls_status(
    mesh: str, selected: Iterable[Member], facts: ProxyFacts, *, mtls: bool, current: Mapping[str, Any] | None
) -> dict[str, str]:
    if not mtls:
        return {"status": NOT_READY}
    if current is not None and current.get("status") == READY:
        return {"status": READY}  # one way while mTLS stays on (see the module's docstring)
    ready = all(facts.certified(mesh, m.name) for m in selected)
    return {"status": READY if ready else NOT_READY}


def proxy_fields(
    mesh: str, selected: tuple[Member, ...], facts: ProxyFacts, *, mtls: bool, status: Mapping[str, Any]
) -> dict[str, Any]:
    """``{"dataplaneProxies": ..., "tls": ...}`` for a MeshService whose current status is ``status``."""
    current = status.get("tls")
    return {
        "dataplaneProxies": dataplane_proxies(mesh, selected, facts),
        "tls": tls_status(
            mesh, selected, facts, mtls=mtls, current=current if isinstance(current, Mapping) else None
        ),
    }
