"""Schema of ``MeshHealthCheck`` (outbound ``to`` items): active HTTP or TCP health checks of a destination."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import (
    UINT32_MAX,
    To,
    check_decimal,
    check_header_name,
    check_header_value,
    mesh_ref,
    target_ref_problems,
)
from isthmus.resources.common import Model, TargetRef
from isthmus.resources.duration import Duration, PositiveDuration


class Header(Model):
    name: str = Field(min_length=1)
    value: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_header_name(v)

    @field_validator("value")
    @classmethod
    def _value(cls, v: str) -> str:
        return check_header_value(v)


class HeadersToAdd(Model):
    add: list[Header] | None = None
    set: list[Header] | None = None


class Http(Model):
    disabled: bool | None = None
    path: str | None = None
    request_headers_to_add: HeadersToAdd | None = Field(default=None, alias="requestHeadersToAdd")
    expected_statuses: list[int] | None = Field(default=None, alias="expectedStatuses")

    @model_validator(mode="after")
    def _check(self) -> Http:
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path: must start with '/'")
        if self.path is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.path):
            raise ValueError("path: must not contain control characters")
        for code in self.expected_statuses or []:
            if not 100 <= code <= 599:
                raise ValueError(f"expectedStatuses: {code} is not an HTTP status (100-599)")
        return self


class Tcp(Model):
    disabled: bool | None = None
    send: str | None = None
    receive: list[str] | None = None


class Conf(Model):
    interval: PositiveDuration | None = None
    timeout: PositiveDuration | None = None
    unhealthy_threshold: int | None = Field(default=None, alias="unhealthyThreshold", ge=1, le=UINT32_MAX)
    healthy_threshold: int | None = Field(default=None, alias="healthyThreshold", ge=1, le=UINT32_MAX)
    initial_jitter: Duration | None = Field(default=None, alias="initialJitter")
    interval_jitter: Duration | None = Field(default=None, alias="intervalJitter")
    interval_jitter_percent: int | None = Field(default=None, alias="intervalJitterPercent", ge=0, le=100)
    healthy_panic_threshold: float | str | None = Field(default=None, alias="healthyPanicThreshold")
    fail_traffic_on_panic: bool | None = Field(default=None, alias="failTrafficOnPanic")
    no_traffic_interval: PositiveDuration | None = Field(default=None, alias="noTrafficInterval")
    event_log_path: str | None = Field(default=None, alias="eventLogPath")
    always_log_health_check_failures: bool | None = Field(default=None, alias="alwaysLogHealthCheckFailures")
    reuse_connection: bool | None = Field(default=None, alias="reuseConnection")
    tcp: Tcp | None = None
    http: Http | None = None

    @field_validator("healthy_panic_threshold")
    @classmethod
    def _panic(cls, v: float | str | None) -> float | str | None:
        return check_decimal(v, 0, 100)  # a percentage


class MeshHealthCheckSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To[Conf]] = Field(min_length=1)

    @model_validator(mode="after")
    def _refs(self) -> MeshHealthCheckSpec:
        problem = target_ref_problems(self.target_ref, self.to, None)
        if problem:
            raise ValueError(problem)
        return self
