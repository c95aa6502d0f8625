"""Schema of ``MeshMetric``: which of a proxy's Envoy stats and which of its applications' metrics the agent
serves, and on which Prometheus port and path. A single-item policy: a top-level ``default``."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, field_validator, model_validator

from isthmus.policies.regex import regex_problem
from isthmus.policies.sections import mesh_ref, target_ref_problems
from isthmus.resources.common import Model, TargetRef

DEFAULT_PORT = 5670  # Kuma's
DEFAULT_PATH = "/metrics"


class ProfileName(str, Enum):
    ALL = "All"
    BASIC = "Basic"
    NONE = "None"


class Profile(Model):
    name: ProfileName


class SelectorType(str, Enum):
    PREFIX = "Prefix"
    REGEX = "Regex"
    EXACT = "Exact"
    CONTAINS = "Contains"


class Selector(Model):
    type: SelectorType
    match: str = Field(min_length=1)

    @model_validator(mode="after")
    def _regex(self) -> Selector:
        if self.type is SelectorType.REGEX:
            problem = regex_problem(self.match)
            if problem:
                raise ValueError(f"match: {problem}")
        return self


class Profiles(Model):
    append_profiles: list[Profile] | None = Field(default=None, alias="appendProfiles")
    include: list[Selector] | None = None
    exclude: list[Selector] | None = None


class Sidecar(Model):
    profiles: Profiles | None = None
    include_unused: bool | None = Field(default=None, alias="includeUnused")


def _path(v: str) -> str:
    if not v.startswith("/") or any(c in v for c in " \0\r\n?#"):
        raise ValueError("must be a path starting with / (no spaces, query or fragment)")
    return v


class Application(Model):
    name: str | None = None
    path: str | None = None
    address: str | None = None
    port: int = Field(ge=1, le=65535)

    @field_validator("path")
    @classmethod
    def _p(cls, v: str | None) -> str | None:
        return None if v is None else _path(v)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        import ipaddress

        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(f"{v[:60]!r} is not an IP address") from None
        return v


class TlsMode(str, Enum):
    DISABLED = "Disabled"
    PROVIDED_TLS = "ProvidedTLS"
    ACTIVE_MTLS_BACKEND = "ActiveMTLSBackend"


class PrometheusTls(Model):
    mode: TlsMode = TlsMode.DISABLED

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: TlsMode) -> TlsMode:
        if v is not TlsMode.DISABLED:
            raise ValueError(f"{v.value} is not supported yet (only Disabled)")
        return v


class Prometheus(Model):
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str | None = None
    client_id: str | None = Field(default=None, alias="clientId")
    tls: PrometheusTls | None = None

    @field_validator("path")
    @classmethod
    def _p(cls, v: str | None) -> str | None:
        return None if v is None else _path(v)


class BackendType(str, Enum):
    PROMETHEUS = "Prometheus"
    OPEN_TELEMETRY = "OpenTelemetry"


class Backend(Model):
    type: BackendType
    prometheus: Prometheus | None = None
    open_telemetry: dict[str, object] | None = Field(default=None, alias="openTelemetry")

    @model_validator(mode="after")
    def _one(self) -> Backend:
        if self.type is BackendType.OPEN_TELEMETRY:
            raise ValueError("type: OpenTelemetry is not supported yet (use Prometheus)")
        if self.prometheus is None:
            raise ValueError("prometheus: must be set with type Prometheus")
        if self.open_telemetry is not None:
            raise ValueError("openTelemetry: must not be set with type Prometheus")
        return self


class Conf(Model):
    sidecar: Sidecar | None = None
    applications: list[Application] | None = None
    backends: list[Backend] | None = None


class MeshMetricSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    default: Conf

    @model_validator(mode="after")
    def _refs(self) -> MeshMetricSpec:
        problem = target_ref_problems(self.target_ref, None, None, require_section=False)
        if problem:
            raise ValueError(problem)
        backends = self.default.backends or []
        ports = [b.prometheus.port or DEFAULT_PORT for b in backends if b.prometheus is not None]
        if len(ports) != len(set(ports)):
            raise ValueError("default.backends: two Prometheus backends on the same port")
        return self
