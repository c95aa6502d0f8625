"""Schema of ``MeshAccessLog``: access logs of inbound (``from``/``rules``) and outbound (``to``) traffic, written
to a file, sent to a TCP receiver or to an OpenTelemetry collector, in Kuma's plain or JSON formats."""

from __future__ import annotations

import re
from enum import Enum

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import From, Rule, To, mesh_ref, target_ref_problems
from isthmus.resources.common import FreeValue, Model, TargetRef, TargetRefKind

CLIENT_KINDS = (
    TargetRefKind.MESH,
    TargetRefKind.MESH_SUBSET,
    TargetRefKind.MESH_SERVICE,
    TargetRefKind.MESH_SERVICE_SUBSET,
)
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def split_address(value: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) -> (host, port); ValueError naming what is wrong."""
    match = _HOST_PORT.match(value)
    if not match:
        raise ValueError(f"{value[:80]!r} is not host:port")
    port = int(match.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")
    return match.group(1).strip("[]"), port


def _check_address(value: str) -> str:
    split_address(value)
    return value


class FormatType(str, Enum):
    PLAIN = "Plain"
    JSON = "Json"


class JsonValue(Model):
    key: str = Field(min_length=1)
    value: str


class Format(Model):
    type: FormatType
    plain: str | None = None
    json_: list[JsonValue] | None = Field(default=None, alias="json")
    omit_empty_values: bool | None = Field(default=None, alias="omitEmptyValues")

    @model_validator(mode="after")
    def _one(self) -> Format:
        if self.type is FormatType.PLAIN:
            if self.json_ is not None:
                raise ValueError("json: must not be set with type Plain")
            if not self.plain:
                raise ValueError("plain: must be set with type Plain")
        else:
            if self.plain is not None:
                raise ValueError("plain: must not be set with type Json")
            if not self.json_:
                raise ValueError("json: must have at least one item with type Json")
            keys = [j.key for j in self.json_]
            duplicate = next((k for k in keys if keys.count(k) > 1), None)
            if duplicate is not None:
                raise ValueError(f"json: key {duplicate!r} appears more than once")
        return self


class FileBackend(Model):
    path: str = Field(min_length=1)
    format: Format | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if "\0" in v or "\n" in v:
            raise ValueError("must not contain NUL or newlines")
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        return v


class TcpBackend(Model):
    address: str = Field(min_length=1)
    format: Format | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _check_address(v)


class OtelAttribute(Model):
    key: str = Field(min_length=1)
    value: str


class OtelBackend(Model):
    endpoint: str = Field(min_length=1)
    body: FreeValue = None  # an OpenTelemetry AnyValue (stringValue, kvlistValue, ...), as in Kuma
    attributes: list[OtelAttribute] | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return _check_address(v)


class BackendType(str, Enum):
    FILE = "File"
    TCP = "Tcp"
    OPEN_TELEMETRY = "OpenTelemetry"


class Backend(Model):
    type: BackendType
    file: FileBackend | None = None
    tcp: TcpBackend | None = None
    open_telemetry: OtelBackend | None = Field(default=None, alias="openTelemetry")

    @model_validator(mode="after")
    def _one(self) -> Backend:
        fields = {
            BackendType.FILE: "file",
            BackendType.TCP: "tcp",
            BackendType.OPEN_TELEMETRY: "openTelemetry",
        }
        values = {"file": self.file, "tcp": self.tcp, "openTelemetry": self.open_telemetry}
        wanted = fields[self.type]
        if values[wanted] is None:
            raise ValueError(f"{wanted}: must be set with type {self.type.value}")
        for name, value in values.items():
            if name != wanted and value is not None:
                raise ValueError(f"{name}: must not be set with type {self.type.value}")
        return self


class Conf(Model):
    backends: list[Backend] | None = None


class MeshAccessLogSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To[Conf]] | None = None
    from_: list[From[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule[Conf]] | None = None

    @model_validator(mode="after")
    def _refs(self) -> MeshAccessLogSpec:
        problem = target_ref_problems(
            self.target_ref, self.to, self.from_, from_kinds=CLIENT_KINDS, rules=self.rules
        )
        if problem:
            raise ValueError(problem)
        return self
