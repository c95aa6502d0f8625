"""``MeshService``, ``MeshMultiZoneService`` and ``MeshExternalService`` (Kuma 2.x's Universal format).

These documents carry ``spec`` and ``status`` side by side at the top level (``type``, ``name``, ``mesh``,
``labels``, ``spec``, ``status``), so the stored record keeps both: the resource types are registered with
``spec_at_top_level`` and the models below hold ``spec`` and ``status``. The status is the control plane's
(VIPs, hostnames; :mod:`isthmus.names`); a user may omit it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal

from pydantic import Field, StrictInt, ValidationInfo, field_validator, model_validator

from isthmus.resources.common import IPAddress, Labels, Model, Port, Tags, TagValue
from isthmus.resources.hostnames import Extension, LabelSelector, hostname_problem

# Kuma's protocols a port may name; tls is proxied as TCP.
APP_PROTOCOLS = ("tcp", "tls", "http", "http2", "grpc")
MAX_PORTS = 64
MAX_ENDPOINTS = 256
MAX_DISPLAY_NAME = 63  # Kuma: a MeshService / MeshExternalService name is at most 63 characters


def _protocol(value: str) -> str:
    if value not in APP_PROTOCOLS:
        raise ValueError(f"must be one of {', '.join(APP_PROTOCOLS)}, got {value!r}")
    return value


def _short_name(info: ValidationInfo, kind: str) -> None:
    name = info.context.get("name") if isinstance(info.context, dict) else None
    if isinstance(name, str) and len(name) > MAX_DISPLAY_NAME:
        raise ValueError(f"name: a {kind} name must be at most {MAX_DISPLAY_NAME} characters")


# -- status (written by the control plane) -------------------------------------------------------------------
class Vip(Model):
    ip: IPAddress


class HostnameGeneratorRef(Model):
    core_name: str = Field(alias="coreName")


class Address(Model):
    hostname: str
    origin: str = "HostnameGenerator"
    hostname_generator_ref: HostnameGeneratorRef | None = Field(default=None, alias="hostnameGeneratorRef")


class Condition(Model):
    type: str
    status: str
    reason: str = ""
    message: str = ""


class HostnameGeneratorStatus(Model):
    hostname_generator_ref: HostnameGeneratorRef = Field(alias="hostnameGeneratorRef")
    conditions: list[Condition] = Field(default_factory=list)


class TlsStatus(Model):
    status: str | None = None


class DataplaneProxies(Model):
    connected: int | None = None
    healthy: int | None = None
    total: int | None = None


class MeshServiceStatus(Model):
    addresses: list[Address] = Field(default_factory=list)
    vips: list[Vip] = Field(default_factory=list)
    tls: TlsStatus | None = None
    hostname_generators: list[HostnameGeneratorStatus] = Field(
        default_factory=list, alias="hostnameGenerators"
    )
    dataplane_proxies: DataplaneProxies | None = Field(default=None, alias="dataplaneProxies")


# -- MeshService ----------------------------------------------------------------------------------------------
class DataplaneRef(Model):
    name: str = Field(min_length=1)


class MeshServiceSelector(Model):
    dataplane_tags: Tags | None = Field(default=None, alias="dataplaneTags")
    dataplane_ref: DataplaneRef | None = Field(default=None, alias="dataplaneRef")
    dataplane_labels: LabelSelector | None = Field(default=None, alias="dataplaneLabels")

    @model_validator(mode="after")
    def _one(self) -> MeshServiceSelector:
        if sum(x is not None for x in (self.dataplane_tags, self.dataplane_ref, self.dataplane_labels)) > 1:
            raise ValueError("must specify only one of: dataplaneTags, dataplaneRef, or dataplaneLabels")
        return self


class MeshServicePort(Model):
    name: TagValue | None = None
    port: Port
    target_port: StrictInt | TagValue | None = Field(default=None, alias="targetPort")
    app_protocol: str = Field(default="tcp", alias="appProtocol")

    @field_validator("app_protocol")
    @classmethod
    def _app_protocol(cls, value: str) -> str:
        return _protocol(value)

    @field_validator("target_port")
    @classmethod
    def _target_port(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError("must be a port number between 1 and 65535 or a port name")
        return value

    @property
    def section_name(self) -> str:
        """Kuma's ``GetName``: the name, else the port number as text."""
        return self.name or str(self.port)


class Identity(Model):
    type: str = Field(pattern="^(ServiceTag|SpiffeID)$")
    value: str = Field(min_length=1)


class MeshServiceState(str, Enum):
    AVAILABLE = "Available"
    UNAVAILABLE = "Unavailable"


class MeshServiceSpec(Model):
    state: MeshServiceState | None = None
    selector: MeshServiceSelector = Field(default_factory=MeshServiceSelector)
    ports: list[MeshServicePort] = Field(default_factory=list, max_length=MAX_PORTS)
    identities: list[Identity] | None = None

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, ports: list[MeshServicePort]) -> list[MeshServicePort]:
        return _unique(ports)


def _unique(ports: list[Any]) -> list[Any]:
    seen: dict[int, int] = {}
    names: dict[str, int] = {}
    for i, p in enumerate(ports):
        if p.port in seen:
            raise ValueError(f"[{i}].port: port {p.port} is already used by ports[{seen[p.port]}]")
        seen[p.port] = i
        if p.name is not None:
            if p.name in names:
                raise ValueError(f"[{i}].name: name {p.name!r} is already used by ports[{names[p.name]}]")
            names[p.name] = i
    return ports


class MeshServiceDocument(Model):
    """What the store keeps of a MeshService: its ``spec`` and its ``status``."""

    spec: MeshServiceSpec
    status: MeshServiceStatus | None = None

    @model_validator(mode="after")
    def _name(self, info: ValidationInfo) -> MeshServiceDocument:
        _short_name(info, "MeshService")
        return self

    def digest_content(self) -> dict[str, Any]:
        """What the resource's digest covers: all but ``status.dataplaneProxies`` and ``status.tls``, which only
        report (they change as data planes connect; no proxy's configuration depends on them)."""
        return self.model_dump(
            by_alias=True, exclude_none=True, mode="json", exclude={"status": {"dataplane_proxies", "tls"}}
        )


# -- MeshMultiZoneService -------------------------------------------------------------------------------------
class RequiredLabels(Model):
    """A label selector that must name at least one label (a MeshMultiZoneService selects by labels)."""

    match_labels: Labels = Field(alias="matchLabels", min_length=1)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


class MultiZoneSelector(Model):
    mesh_service: RequiredLabels = Field(alias="meshService")


class MultiZonePort(Model):
    name: TagValue | None = None
    port: Port
    app_protocol: Literal["tcp", "tls", "http", "http2", "grpc"] = Field(default="tcp", alias="appProtocol")

    @property
    def section_name(self) -> str:
        return self.name or str(self.port)


class MeshMultiZoneServiceSpec(Model):
    selector: MultiZoneSelector
    ports: list[MultiZonePort] = Field(min_length=1, max_length=MAX_PORTS)

    @field_validator("ports")
    @classmethod
    def _ports(cls, ports: list[MultiZonePort]) -> list[MultiZonePort]:
        return _unique(ports)


class MatchedMeshService(Model):
    name: str
    namespace: str = ""
    zone: str = ""
    mesh: str = ""


class MeshMultiZoneServiceStatus(Model):
    addresses: list[Address] = Field(default_factory=list)
    vips: list[Vip] = Field(default_factory=list)
    mesh_services: list[MatchedMeshService] = Field(default_factory=list, alias="meshServices")
    hostname_generators: list[HostnameGeneratorStatus] = Field(
        default_factory=list, alias="hostnameGenerators"
    )
    conditions: list[Condition] = Field(default_factory=list)


class MeshMultiZoneServiceDocument(Model):
    spec: MeshMultiZoneServiceSpec
    status: MeshMultiZoneServiceStatus | None = None


# -- MeshExternalService --------------------------------------------------------------------------------------
class MatchType(str, Enum):
    HOSTNAME_GENERATOR = "HostnameGenerator"


class ExternalMatch(Model):
    type: MatchType = MatchType.HOSTNAME_GENERATOR
    port: Port
    protocol: str = "tcp"

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        if value not in ("tcp", "grpc", "http", "http2"):
            raise ValueError(f"must be one of tcp, grpc, http, http2, got {value!r}")
        return value


_HOST_RE = re.compile(
    r"^[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9_]*[A-Za-z0-9])?)*\.?$"
)


class ExternalEndpoint(Model):
    address: str = Field(min_length=1, max_length=253)
    port: Port
    priority: int | None = Field(default=None, ge=0, le=4_294_967_295)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if not _HOST_RE.match(value):
            raise ValueError(f"{value[:80]!r}: address has to be a valid IP or hostname")
        return value

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            return False
        return True


class DataSource(Model):
    """Kuma's data source: exactly one of ``secret``, ``inline`` (base64), ``inlineString``."""

    secret: str | None = None
    inline: str | None = None
    inline_string: str | None = Field(default=None, alias="inlineString", max_length=256 * 1024)

    @model_validator(mode="after")
    def _one(self) -> DataSource:
        if sum(x is not None for x in (self.secret, self.inline, self.inline_string)) != 1:
            raise ValueError("exactly one of secret, inline, inlineString must be set")
        if self.secret is not None:
            from isthmus.resources.common import not_supported

            raise ValueError(not_supported("secret", "use inline or inlineString"))
        return self

    def text(self) -> str:
        if self.inline_string is not None:
            return self.inline_string
        import base64

        return base64.b64decode(self.inline or "").decode()

    @field_validator("inline")
    @classmethod
    def _b64(cls, value: str | None) -> str | None:
        if value is not None:
            import base64
            import binascii

            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64") from None
        return value


class SanMatch(Model):
    type: str = Field(pattern="^(Exact|Prefix)$")
    value: str = Field(min_length=1)


class VerificationMode(str, Enum):
    SKIP_SAN = "SkipSAN"
    SKIP_CA = "SkipCA"
    SKIP_ALL = "SkipAll"
    SECURED = "Secured"


class Verification(Model):
    mode: VerificationMode = VerificationMode.SECURED
    server_name: str | None = Field(default=None, alias="serverName")
    subject_alt_names: list[SanMatch] | None = Field(default=None, alias="subjectAltNames")
    ca_cert: DataSource | None = Field(default=None, alias="caCert")
    client_cert: DataSource | None = Field(default=None, alias="clientCert")
    client_key: DataSource | None = Field(default=None, alias="clientKey")

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is not None and hostname_problem(value.lower()):
            raise ValueError("must be a valid DNS name")
        return value

    @model_validator(mode="after")
    def _pair(self) -> Verification:
        if self.client_cert is not None and self.client_key is None:
            raise ValueError("clientKey: must be defined when clientCert is defined")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("clientCert: must be defined when clientKey is defined")
        return self


class TlsVersion(Model):
    min: str | None = Field(default=None, pattern="^(TLSAuto|TLS10|TLS11|TLS12|TLS13)$")
    max: str | None = Field(default=None, pattern="^(TLSAuto|TLS10|TLS11|TLS12|TLS13)$")


class ExternalTls(Model):
    enabled: bool = False
    version: TlsVersion | None = None
    allow_renegotiation: bool = Field(default=False, alias="allowRenegotiation")
    verification: Verification | None = None


class MeshExternalServiceSpec(Model):
    match: ExternalMatch
    extension: Extension | None = None
    endpoints: list[ExternalEndpoint] | None = Field(default=None, max_length=MAX_ENDPOINTS)
    tls: ExternalTls | None = None


class ExternalVip(Model):
    ip: IPAddress | None = None


class MeshExternalServiceStatus(Model):
    vip: ExternalVip | None = None
    addresses: list[Address] = Field(default_factory=list)
    hostname_generators: list[HostnameGeneratorStatus] = Field(
        default_factory=list, alias="hostnameGenerators"
    )


class MeshExternalServiceDocument(Model):
    spec: MeshExternalServiceSpec
    status: MeshExternalServiceStatus | None = None

    @model_validator(mode="after")
    def _name(self, info: ValidationInfo) -> MeshExternalServiceDocument:
        _short_name(info, "MeshExternalService")
        if self.spec.extension is None and not self.spec.endpoints:
            raise ValueError("spec.endpoints: must be defined (at least one endpoint) without an extension")
        return self


NAME_KINDS = ("MeshService", "MeshMultiZoneService", "MeshExternalService")
"""The mesh-scoped kinds of this module: the generation loop reads them with Dataplanes and policies."""
