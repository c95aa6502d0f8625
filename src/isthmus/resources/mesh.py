"""The ``Mesh`` resource (Kuma Universal format; spec fields at the top level)."""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING

from pydantic import Field, ValidationInfo, field_validator, model_validator

from isthmus.resources.common import FreeForm, Model, ResourceName, Selector, applying, not_supported
from isthmus.resources.duration import Duration

if TYPE_CHECKING:
    from isthmus.resources.provided_ca import ProvidedCaConf

DEFAULT_CERT_LIFETIME = timedelta(hours=24)


class MtlsMode(str, Enum):
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"


class CaBackendType(str, Enum):
    BUILTIN = "builtin"
    PROVIDED = "provided"


class Rotation(Model):
    expiration: str | None = None

    @field_validator("expiration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            from isthmus.pki.issuer import parse_lifetime

            parse_lifetime(value)  # 10s..10y; its ValueError names the bound and pydantic names the field
        return value


class DpCert(Model):
    rotation: Rotation | None = None
    request_timeout: Duration | None = Field(default=None, alias="requestTimeout")


class CaBackend(Model):
    name: ResourceName
    type: CaBackendType
    dp_cert: DpCert | None = Field(default=None, alias="dpCert")
    conf: FreeForm | None = None
    mode: MtlsMode = MtlsMode.STRICT
    root_chain: FreeForm | None = Field(default=None, alias="rootChain")

    @model_validator(mode="after")
    def _provided_conf(self, info: ValidationInfo) -> CaBackend:
        """A provided backend's ``conf`` is Kuma's ``{cert: <data source>, key: <data source>}``; the files and
        the CA itself are checked only when the control plane accepts the Mesh (see ``provided_ca``)."""
        if self.type is CaBackendType.PROVIDED:
            from isthmus.resources.provided_ca import check_provided_conf

            check_provided_conf(self.conf, info.context)
        return self

    @property
    def provided_conf(self) -> ProvidedCaConf:
        """The parsed ``conf`` of a ``provided`` backend (ValueError for another type)."""
        from isthmus.resources.provided_ca import check_provided_conf

        if self.type is not CaBackendType.PROVIDED:
            raise ValueError(f"backend {self.name!r} is of type {self.type.value}, not provided")
        return check_provided_conf(self.conf, None)

    @property
    def cert_lifetime(self) -> timedelta:
        if self.dp_cert and self.dp_cert.rotation and self.dp_cert.rotation.expiration:
            from isthmus.pki.issuer import parse_lifetime

            return parse_lifetime(self.dp_cert.rotation.expiration)
        return DEFAULT_CERT_LIFETIME


class Mtls(Model):
    enabled_backend: str | None = Field(default=None, alias="enabledBackend")
    backends: list[CaBackend] = Field(default_factory=list)
    skip_validation: bool | None = Field(default=None, alias="skipValidation")

    @model_validator(mode="after")
    def _backend_exists(self) -> Mtls:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError("backends: names must be unique")
        if self.enabled_backend and self.enabled_backend not in names:
            raise ValueError(f"enabledBackend: backend {self.enabled_backend!r} is not defined in backends")
        return self


class ConstraintRule(Model):
    tags: Selector  # a value ``*`` matches any non-empty value


class DataplaneProxyConstraints(Model):
    """Kuma's mesh membership: a Dataplane joins only when every one of its tag sets (one per inbound, and the
    gateway's tags) matches at least one requirement (when there are any) and no restriction."""

    requirements: list[ConstraintRule] = Field(default_factory=list)
    restrictions: list[ConstraintRule] = Field(default_factory=list)


class Constraints(Model):
    dataplane_proxy: DataplaneProxyConstraints | None = Field(default=None, alias="dataplaneProxy")


class OutboundNetworking(Model):
    # what a transparent proxy does with connections to destinations outside the mesh: true (Kuma's default)
    # forwards them to their original destination, false closes them (isthmus.ir.transparent)
    passthrough: bool | None = None


class MeshNetworking(Model):
    outbound: OutboundNetworking | None = None


class Routing(Model):
    """Kuma's defaults (all false) are what Isthmus does; the other values are refused, except zoneEgress."""

    locality_aware_load_balancing: bool | None = Field(default=None, alias="localityAwareLoadBalancing")
    zone_egress: bool | None = Field(default=None, alias="zoneEgress")
    default_forbid_mesh_external_service_access: bool | None = Field(
        default=None, alias="defaultForbidMeshExternalServiceAccess"
    )

    # zoneEgress: true sends cross-zone and MeshExternalService traffic through the zone's egress (isthmus.egress)
    @field_validator("locality_aware_load_balancing", "default_forbid_mesh_external_service_access")
    @classmethod
    def _only_default(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and applying(info):
            raise ValueError(not_supported("true"))
        return value


class MeshServicesMode(str, Enum):
    """Kuma's ``Mesh.meshServices.mode``: whether MeshServices are generated from Dataplanes and used."""

    DISABLED = "Disabled"  # not generated; outbounds by kuma.io/service only
    EVERYWHERE = "Everywhere"  # generated, and every proxy reaches every MeshService by its VIP
    REACHABLE_BACKENDS = (
        "ReachableBackends"  # generated, reached where a proxy lists them in reachableBackends
    )
    EXCLUSIVE = "Exclusive"  # generated and used; kuma.io/service outbounds are not


class MeshServices(Model):
    mode: MeshServicesMode = MeshServicesMode.DISABLED


class MeshSpec(Model):
    mtls: Mtls | None = None
    logging: FreeForm | None = None
    tracing: FreeForm | None = None
    metrics: FreeForm | None = None
    networking: MeshNetworking | None = None
    routing: Routing | None = None
    constraints: Constraints | None = None
    skip_creating_initial_policies: list[str] | None = Field(
        default=None, alias="skipCreatingInitialPolicies"
    )
    mesh_services: MeshServices | None = Field(default=None, alias="meshServices")

    @field_validator("logging", "tracing", "metrics")
    @classmethod
    def _legacy_backends(
        cls, value: dict[str, object] | None, info: ValidationInfo
    ) -> dict[str, object] | None:
        if value and applying(info):
            raise ValueError(not_supported(f"{info.field_name}", "Kuma's legacy backends section"))
        return value

    @property
    def dataplane_constraints(self) -> DataplaneProxyConstraints | None:
        return self.constraints.dataplane_proxy if self.constraints is not None else None

    @property
    def passthrough(self) -> bool:
        """Kuma's ``networking.outbound.passthrough`` (default true)."""
        out = self.networking.outbound if self.networking is not None else None
        return out is None or out.passthrough is not False

    @property
    def mesh_services_mode(self) -> MeshServicesMode:
        return self.mesh_services.mode if self.mesh_services is not None else MeshServicesMode.DISABLED

    @property
    def enabled_backend(self) -> CaBackend | None:
        """The CA backend in use, or None when mTLS is off."""
        if not self.mtls or not self.mtls.enabled_backend:
            return None
        return next(b for b in self.mtls.backends if b.name == self.mtls.enabled_backend)
