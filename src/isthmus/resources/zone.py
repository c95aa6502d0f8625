"""Multi-zone resources in Kuma's Universal format: ``Zone`` and ``ZoneInsight`` (kept by the global control
plane, one per zone that connected) and ``ZoneIngress`` (Kuma 2.x: a zone's entry point for traffic from other
zones, registered in its zone and synced to the global and every other zone) and ``ZoneEgress`` (Kuma 2.x: the
way out of a zone when ``Mesh.routing.zoneEgress`` is on, registered in its zone and synced to the global).

Every one is global-scoped (no mesh) with its spec fields at the top level, as in Kuma.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from isthmus.resources.common import FreeForm, IPAddress, MeshName, Model, Port, Tags

_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$"
)
ZONE_NAME_RULE = (
    "a zone name: lower-case letters, digits and '-', at most 63, starting with a letter (RFC 1035)"
)
_ZONE_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def zone_name_problem(value: object) -> str | None:
    """Why ``value`` is not a zone name (an RFC 1035 label, as Kuma 3.0 requires), or None."""
    if not isinstance(value, str) or not _ZONE_RE.match(value):
        return f"must be {ZONE_NAME_RULE}"
    return None


class ZoneSpec(Model):
    """Kuma's ``Zone``: ``enabled: false`` keeps the zone's control plane from connecting."""

    enabled: bool | None = None


class ZoneSubscription(Model):
    """One KDS connection of the zone: when it began and ended, and what was exchanged."""

    id: str = ""
    global_instance_id: str = Field(default="", alias="globalInstanceId")
    connect_time: str | None = Field(default=None, alias="connectTime")
    disconnect_time: str | None = Field(default=None, alias="disconnectTime")
    status: FreeForm = Field(default_factory=dict)
    version: FreeForm = Field(default_factory=dict)
    config: str = ""


class ZoneInsightSpec(Model):
    """Kuma's ``ZoneInsight``: the zone's KDS subscriptions, the last one first-to-last (at most 10 kept)."""

    subscriptions: list[ZoneSubscription] = Field(default_factory=list)


class ZoneIngressNetworking(Model):
    address: IPAddress
    port: Port
    advertised_address: str | None = Field(default=None, alias="advertisedAddress")
    advertised_port: Port | None = Field(default=None, alias="advertisedPort")
    admin: FreeForm | None = None

    @field_validator("advertised_address")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_RE.match(value):
            raise ValueError("must be an IP address or a DNS name")
        return value


class AvailableService(Model):
    """Instances of one service (by its tags) in one mesh behind the ingress; computed by the zone."""

    tags: Tags
    instances: int = Field(default=0, ge=0)
    mesh: MeshName
    external_service: bool | None = Field(default=None, alias="externalService")


class ZoneIngressSpec(Model):
    """Kuma 2.x ``ZoneIngress``: ``zone`` (set by the zone control plane when absent),
    ``networking.address/port`` where its Envoy listens, ``advertisedAddress/advertisedPort`` where other
    zones reach it, and ``availableServices``."""

    zone: str = ""
    networking: ZoneIngressNetworking
    available_services: list[AvailableService] = Field(default_factory=list, alias="availableServices")

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value:
            problem = zone_name_problem(value)
            if problem:
                raise ValueError(problem)
        return value


class ZoneEgressNetworking(Model):
    address: IPAddress
    port: Port
    admin: FreeForm | None = None


class ZoneEgressSpec(Model):
    """Kuma 2.x ``ZoneEgress``: ``zone`` (set by the zone control plane when absent) and
    ``networking.address/port`` where its Envoy listens, which the zone's proxies connect to."""

    zone: str = ""
    networking: ZoneEgressNetworking

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value:
            problem = zone_name_problem(value)
            if problem:
                raise ValueError(problem)
        return value


def public_address(spec: ZoneIngressSpec) -> tuple[str, int] | None:
    """Where other zones reach the ingress (``advertisedAddress:advertisedPort``), None until both are set."""
    net = spec.networking
    if net.advertised_address and net.advertised_port:
        return net.advertised_address, net.advertised_port
    return None


def subscription_online(spec: dict[str, Any], instance_id: str) -> bool:
    """A ZoneInsight (stored JSON) says its zone is connected to the global instance ``instance_id`` now."""
    subs = spec.get("subscriptions") or []
    if not subs or not isinstance(subs[-1], dict):
        return False
    last = subs[-1]
    return not last.get("disconnectTime") and last.get("globalInstanceId") == instance_id
