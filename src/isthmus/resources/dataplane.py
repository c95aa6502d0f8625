"""The ``Dataplane`` resource (Kuma Universal format; spec fields at the top level)."""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from isthmus.resources.common import (
    PROTOCOL_TAG,
    PROTOCOLS,
    SERVICE_TAG,
    FreeForm,
    IPAddress,
    Labels,
    Model,
    Port,
    Tags,
    TagValue,
    applying,
    not_supported,
)
from isthmus.resources.duration import PositiveDuration

if TYPE_CHECKING:
    from isthmus.resources.mesh import DataplaneProxyConstraints


def _ports_in(value: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Refuse a port outside 1-65535 under one of ``keys`` of a free-form map (Kuma's field names)."""
    for key in keys:
        port = value.get(key)
        if port is None:
            continue
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"{key}: must be a port number between 1 and 65535")
    return value


# Kuma sets no limit; these bound the work one Dataplane (which a data-plane token may write) costs the
# control plane per change, far above what a sidecar declares.
MAX_INBOUNDS = 256
MAX_OUTBOUNDS = 1024
LOOPBACK = "127.0.0.1"  # where outbounds listen by default, and the admin API


def _no_kafka(tags: dict[str, str], info: ValidationInfo) -> None:
    # Kuma proxies kafka as TCP with Envoy's Kafka broker filter for metrics; Isthmus's Envoy build lacks it
    if tags.get(PROTOCOL_TAG) == "kafka" and applying(info):
        raise ValueError(
            f"tag {PROTOCOL_TAG!r}: "
            + not_supported(
                "kafka", "Kuma adds Envoy's Kafka broker filter, which Isthmus's Envoy lacks; use tcp"
            )
        )


class InboundState(str, Enum):
    READY = "Ready"
    NOT_READY = "NotReady"
    IGNORED = "Ignored"


UINT32_MAX = 4_294_967_295  # Envoy's health-check thresholds are uint32


class TcpProbe(Model):
    """Kuma's ``serviceProbe.tcp``: an empty message (the probe is a TCP connect)."""


class ServiceProbe(Model):
    """Kuma's ``inbound.serviceProbe``: the control plane has the proxy check that the application accepts TCP
    connections on ``serviceAddress:servicePort`` (Envoy's Health Discovery Service) and keeps the inbound's
    ``state``/``health.ready`` up to date. Unset fields take the control plane's defaults."""

    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    unhealthy_threshold: int | None = Field(default=None, alias="unhealthyThreshold", ge=1, le=UINT32_MAX)
    healthy_threshold: int | None = Field(default=None, alias="healthyThreshold", ge=1, le=UINT32_MAX)
    tcp: TcpProbe | None = None


class Inbound(Model):
    port: Port
    service_port: Port | None = Field(default=None, alias="servicePort")
    service_address: IPAddress | None = Field(default=None, alias="serviceAddress")
    address: IPAddress | None = None
    name: TagValue | None = None
    tags: Tags
    state: InboundState | None = None
    health: FreeForm | None = None
    service_probe: ServiceProbe | None = Field(default=None, alias="serviceProbe")

    @field_validator("tags")
    @classmethod
    def _required_tags(cls, tags: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if SERVICE_TAG not in tags:
            raise ValueError(f"tag {SERVICE_TAG!r} is required")
        proto = tags.get(PROTOCOL_TAG)
        if proto is not None and proto not in PROTOCOLS:
            raise ValueError(f"tag {PROTOCOL_TAG!r} must be one of {', '.join(PROTOCOLS)}, got {proto!r}")
        _no_kafka(tags, info)
        return tags

    @property
    def service(self) -> str:
        return self.tags[SERVICE_TAG]

    @property
    def protocol(self) -> str:
        return self.tags.get(PROTOCOL_TAG, "tcp")

    @property
    def ready(self) -> bool:
        if self.state is not None:
            return self.state is InboundState.READY
        if self.health is not None and self.health.get("ready") is False:
            return False
        return True


class BackendRef(Model):
    kind: str = "MeshService"
    name: TagValue | None = None
    port: Port | None = None
    labels: Labels | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in ("MeshService", "MeshMultiZoneService", "MeshExternalService"):
            raise ValueError(
                f"kind {value!r}: must be one of MeshService, MeshMultiZoneService, MeshExternalService"
            )
        return value

    @model_validator(mode="after")
    def _name(self) -> BackendRef:
        if not self.name:
            raise ValueError("name: must be set")
        return self


class Outbound(Model):
    port: Port
    address: IPAddress | None = None
    tags: Tags | None = None
    backend_ref: BackendRef | None = Field(default=None, alias="backendRef")

    @model_validator(mode="after")
    def _target(self) -> Outbound:
        if self.tags is None and self.backend_ref is None:
            raise ValueError("either tags (with kuma.io/service) or backendRef must be set")
        if self.tags is not None and self.backend_ref is not None:
            raise ValueError("tags and backendRef are mutually exclusive")
        if self.tags is not None and SERVICE_TAG not in self.tags:
            raise ValueError(f"tags: tag {SERVICE_TAG!r} is required")
        return self

    @field_validator("tags")
    @classmethod
    def _protocol(cls, tags: dict[str, str] | None, info: ValidationInfo) -> dict[str, str] | None:
        if tags is not None:
            _no_kafka(tags, info)
        return tags

    @property
    def service(self) -> str:
        if self.backend_ref is not None:
            assert self.backend_ref.name is not None
            return self.backend_ref.name
        assert self.tags is not None
        return self.tags[SERVICE_TAG]


class Admin(Model):
    port: Port | None = None


class Gateway(Model):
    tags: Tags
    type: Literal["DELEGATED", "BUILTIN"] = "DELEGATED"


class IpFamilyMode(str, Enum):
    """Kuma's ``transparentProxying.ipFamilyMode`` (its enum names)."""

    UNSPECIFIED = "UnSpecified"
    DUAL_STACK = "DualStack"
    IPV4 = "IPv4"


class ReachableBackendRef(Model):
    kind: Literal["MeshService", "MeshExternalService", "MeshMultiZoneService"]
    name: TagValue | None = None
    namespace: TagValue | None = None
    port: Port | None = None
    labels: Labels | None = None

    @model_validator(mode="after")
    def _selects(self) -> ReachableBackendRef:
        if not self.name and not self.labels:
            raise ValueError("either name or labels must be set")
        if self.name and self.labels:
            raise ValueError("name and labels are mutually exclusive")
        return self


class ReachableBackends(Model):
    refs: list[ReachableBackendRef] = Field(default_factory=list)


# Kuma's default redirect ports (kumactl install transparent-proxy)
DEFAULT_REDIRECT_PORT_INBOUND = 15006
DEFAULT_REDIRECT_PORT_OUTBOUND = 15001


class TransparentProxying(Model):
    """Kuma's ``networking.transparentProxying``: the proxy's application traffic is redirected to Envoy by
    iptables (``isthmus dp run --transparent-proxy``); outbound connections reach ``redirectPortOutbound``,
    inbound ones ``redirectPortInbound``, and Envoy hands each to the listener of its original destination."""

    redirect_port_inbound: Port | None = Field(default=None, alias="redirectPortInbound")
    redirect_port_outbound: Port | None = Field(default=None, alias="redirectPortOutbound")
    redirect_port_inbound_v6: Port | None = Field(default=None, alias="redirectPortInboundV6")
    direct_access_services: list[str] | None = Field(default=None, alias="directAccessServices")
    reachable_services: list[TagValue] | None = Field(default=None, alias="reachableServices")
    ip_family_mode: IpFamilyMode | None = Field(default=None, alias="ipFamilyMode")
    reachable_backends: ReachableBackends | None = Field(default=None, alias="reachableBackends")

    @field_validator("redirect_port_inbound_v6")
    @classmethod
    def _v6(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and applying(info):
            raise ValueError(not_supported("redirectPortInboundV6", "Isthmus redirects IPv4 only"))
        return value

    @field_validator("ip_family_mode")
    @classmethod
    def _family(cls, value: IpFamilyMode | None, info: ValidationInfo) -> IpFamilyMode | None:
        if value is IpFamilyMode.DUAL_STACK and applying(info):
            raise ValueError(not_supported("DualStack", "Isthmus redirects IPv4 only; use IPv4"))
        return value

    @field_validator("direct_access_services")
    @classmethod
    def _direct(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value and applying(info):
            raise ValueError(not_supported("directAccessServices"))
        return value

    @property
    def inbound_port(self) -> int:
        return self.redirect_port_inbound or DEFAULT_REDIRECT_PORT_INBOUND

    @property
    def outbound_port(self) -> int:
        return self.redirect_port_outbound or DEFAULT_REDIRECT_PORT_OUTBOUND

    @model_validator(mode="after")
    def _distinct(self) -> TransparentProxying:
        if self.inbound_port == self.outbound_port:
            raise ValueError(
                f"redirectPortOutbound: port {self.outbound_port} is also the redirectPortInbound"
            )
        return self


class Networking(Model):
    address: IPAddress
    advertised_address: IPAddress | None = Field(default=None, alias="advertisedAddress")
    inbound: list[Inbound] = Field(default_factory=list)
    outbound: list[Outbound] = Field(default_factory=list)
    gateway: Gateway | None = None
    admin: Admin | None = None
    transparent_proxying: TransparentProxying | None = Field(default=None, alias="transparentProxying")

    @field_validator("inbound", "outbound", mode="before")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        """Counted before the items are validated: one Dataplane must not cost seconds of work."""
        limit = MAX_INBOUNDS if info.field_name == "inbound" else MAX_OUTBOUNDS
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(
                f"at most {limit} {info.field_name}s are allowed in one Dataplane, got {len(value)}"
            )
        return value

    @model_validator(mode="after")
    def _unique_ports(self) -> Networking:
        problem = _port_clash(self)
        if problem:
            raise ValueError(problem)
        if not self.inbound and self.gateway is None:
            raise ValueError("inbound: a Dataplane needs at least one inbound (or a gateway section)")
        return self


def _overlap(a: str, b: str) -> bool:
    """Whether two listening addresses collide: the same address, or either one a wildcard."""
    first, second = ipaddress.ip_address(a), ipaddress.ip_address(b)
    return first == second or first.is_unspecified or second.is_unspecified


def _port_clash(net: Networking) -> str | None:
    """``field.port: reason`` for the first socket Envoy (or the admin API) would bind twice, or None.

    Envoy refuses a whole listener update when two listeners share an address and port, so inbounds
    (``inbound.address`` or ``networking.address``), outbounds (``outbound.address`` or 127.0.0.1) and the admin
    API (127.0.0.1 ``admin.port``, which must also differ from the application's own port, as in Kuma) are
    checked against each other. Two addresses collide when equal or when either one is a wildcard."""
    used: list[tuple[str, int, str]] = []  # (address, port, the listener's field)
    sockets = [
        (inbound.address or net.address, inbound.port, f"inbound[{i}]")
        for i, inbound in enumerate(net.inbound)
    ]
    sockets += [(out.address or LOOPBACK, out.port, f"outbound[{i}]") for i, out in enumerate(net.outbound)]
    tp = net.transparent_proxying
    if tp is not None:  # Envoy's catch-all listeners of a transparent proxy listen on every address
        sockets += [
            ("0.0.0.0", tp.outbound_port, "transparentProxying.redirectPortOutbound"),
            ("0.0.0.0", tp.inbound_port, "transparentProxying.redirectPortInbound"),
        ]
    for address, port, field in sockets:
        for other_address, other_port, other in used:
            if port == other_port and _overlap(address, other_address):
                where = field if field.startswith("transparentProxying") else f"{field}.port"
                return f"{where}: port {port} is already used by {other}"
        used.append((address, port, field))
    admin = net.admin.port if net.admin is not None else None
    if admin is not None:
        for address, port, field in used:
            if port == admin and _overlap(LOOPBACK, address):
                return f"admin.port: port {admin} is already used by {field} (the admin API listens on {LOOPBACK})"
        for i, inbound in enumerate(net.inbound):
            app_address = inbound.service_address or LOOPBACK
            if (inbound.service_port or inbound.port) == admin and _overlap(LOOPBACK, app_address):
                return f"admin.port: port {admin} is the application's port of inbound[{i}] on {app_address}"
    return None


class DataplaneSpec(Model):
    networking: Networking
    metrics: FreeForm | None = None
    probes: FreeForm | None = None

    @field_validator("probes")
    @classmethod
    def _probe_port(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value is None:
            return None
        _ports_in(value, ("port",))
        if applying(info):
            raise ValueError(not_supported("probes", "Kuma's virtual probes, for Kubernetes"))
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value and applying(info):
            raise ValueError(not_supported("metrics", "Kuma's legacy metrics backend of the proxy"))
        return value

    def tag_sets(self) -> list[tuple[str, dict[str, str]]]:
        """(field, tags) for each inbound, then the gateway: the tag sets Kuma checks mesh constraints on."""
        sets = [
            (f"networking.inbound[{i}].tags", dict(b.tags)) for i, b in enumerate(self.networking.inbound)
        ]
        if self.networking.gateway is not None:
            sets.append(("networking.gateway.tags", dict(self.networking.gateway.tags)))
        return sets

    def membership_problem(
        self, mesh: str, constraints: DataplaneProxyConstraints | None
    ) -> tuple[str, str] | None:
        """(field, Kuma's message) when the mesh's ``constraints.dataplaneProxy`` keep this Dataplane out."""
        if constraints is None:
            return None
        for field, tags in self.tag_sets():
            shown = _tag_set(tags)
            if constraints.requirements and not any(_matches(r.tags, tags) for r in constraints.requirements):
                return field, (
                    f'dataplane cannot be a member of mesh "{mesh}" because its tags "{shown}" does not '
                    "fulfill any requirements defined on the Mesh"
                )
            for rule in constraints.restrictions:
                if _matches(rule.tags, tags):
                    return field, (
                        f'dataplane cannot be a member of mesh "{mesh}" because its tags "{shown}" matches '
                        f'restricted tags "{_tag_set(rule.tags)}" defined on the Mesh'
                    )
        return None

    @property
    def services(self) -> list[str]:
        seen: dict[str, None] = {}
        for inbound in self.networking.inbound:
            seen.setdefault(inbound.service)
        if self.networking.gateway is not None:
            seen.setdefault(self.networking.gateway.tags.get("kuma.io/service", ""))
        return [s for s in seen if s]


def _tag_set(tags: dict[str, str]) -> str:
    return " ".join(sorted(f"{k}={v}" for k, v in tags.items()))


def _matches(selector: dict[str, str], tags: dict[str, str]) -> bool:
    """Kuma's membership match: every selector tag present with that value (``*``: any non-empty value)."""
    return all(tags.get(k) == v or (v == "*" and bool(tags.get(k))) for k, v in selector.items())
