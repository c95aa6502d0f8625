"""The ``Mesh`` resource (Kuma Universal format; spec fields at the top level)."""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import TYPE_CHECKING

from pydantic import Field, ValidationInfo, field_validator, model_validator

from isthmus.resources.common import FreeForm, Model, ResourceName
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


class MeshSpec(Model):
    mtls: Mtls | None = None
    logging: FreeForm | None = None
    tracing: FreeForm | None = None
    metrics: FreeForm | None = None
    networking: FreeForm | None = None
    routing: FreeForm | None = None
    constraints: FreeForm | None = None
    skip_creating_initial_policies: list[str] | None = Field(
        default=None, alias="skipCreatingInitialPolicies"
    )
    mesh_services: FreeForm | None = Field(default=None, alias="meshServices")

    @property
    def enabled_backend(self) -> CaBackend | None:
        """The CA backend in use, or None when mTLS is off."""
        if not self.mtls or not self.mtls.enabled_backend:
            return None
        return next(b for b in self.mtls.backends if b.name == self.mtls.enabled_backend)
