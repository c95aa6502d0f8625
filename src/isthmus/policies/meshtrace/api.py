"""Schema of ``MeshTrace``: where the selected proxies send spans (Zipkin or OpenTelemetry), how many requests they
sample and which tags the spans carry. A single-item policy: a top-level ``default``."""

from __future__ import annotations

from enum import Enum
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from isthmus.policies.meshaccesslog.api import split_address
from isthmus.policies.sections import check_decimal, check_header_name, mesh_ref, target_ref_problems
from isthmus.resources.common import Model, TargetRef


class ApiVersion(str, Enum):
    HTTP_JSON = "httpJson"
    HTTP_PROTO = "httpProto"


class Zipkin(Model):
    url: str = Field(min_length=1)
    trace_id_128bit: bool | None = Field(default=None, alias="traceId128bit")
    api_version: ApiVersion | None = Field(default=None, alias="apiVersion")
    shared_span_context: bool | None = Field(default=None, alias="sharedSpanContext")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        zipkin_target(v)
        return v


def zipkin_target(url: str) -> tuple[str, int, str]:
    """(host, port, path) of a collector URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        raise ValueError("https collectors are not supported yet (use http)")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url[:80]!r} is not an http:// URL")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{url[:80]!r} has an invalid port") from None
    if port == 0:
        raise ValueError("port 0 is not valid")
    return parts.hostname, port, parts.path or "/"


class OpenTelemetry(Model):
    endpoint: str = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        split_address(v)
        return v


class BackendType(str, Enum):
    ZIPKIN = "Zipkin"
    DATADOG = "Datadog"
    OPEN_TELEMETRY = "OpenTelemetry"


class Backend(Model):
    type: BackendType
    zipkin: Zipkin | None = None
    open_telemetry: OpenTelemetry | None = Field(default=None, alias="openTelemetry")
    datadog: dict[str, object] | None = None

    @model_validator(mode="after")
    def _one(self) -> Backend:
        if self.type is BackendType.DATADOG:
            raise ValueError("type: Datadog is not supported yet (use Zipkin or OpenTelemetry)")
        wanted = "zipkin" if self.type is BackendType.ZIPKIN else "openTelemetry"
        values = {"zipkin": self.zipkin, "openTelemetry": self.open_telemetry, "datadog": self.datadog}
        if values[wanted] is None:
            raise ValueError(f"{wanted}: must be set with type {self.type.value}")
        for name, value in values.items():
            if name != wanted and value is not None:
                raise ValueError(f"{name}: must not be set with type {self.type.value}")
        return self


Percentage = int | float | str


class Sampling(Model):
    overall: Percentage | None = None
    client: Percentage | None = None
    random: Percentage | None = None

    @field_validator("overall", "client", "random")
    @classmethod
    def _pct(cls, v: Percentage | None) -> Percentage | None:
        if isinstance(v, bool):
            raise ValueError("must be a number between 0 and 100")
        check_decimal(v, 0, 100)
        return v


class HeaderTag(Model):
    name: str = Field(min_length=1)
    default: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_header_name(v)


class Tag(Model):
    name: str = Field(min_length=1)
    literal: str | None = None
    header: HeaderTag | None = None

    @model_validator(mode="after")
    def _one(self) -> Tag:
        if (self.literal is None) == (self.header is None):
            raise ValueError("exactly one of literal and header must be set")
        return self


class Conf(Model):
    backends: list[Backend] | None = Field(default=None, max_length=1)
    sampling: Sampling | None = None
    tags: list[Tag] | None = None


class MeshTraceSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    default: Conf

    @model_validator(mode="after")
    def _refs(self) -> MeshTraceSpec:
        problem = target_ref_problems(self.target_ref, None, None, require_section=False)
        if problem:
            raise ValueError(problem)
        return self
