"""Schema of ``MeshRateLimit``: local (per proxy) HTTP request and TCP connection rate limits on inbounds."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import (
    UINT32_MAX,
    From,
    Rule,
    check_header_name,
    check_header_value,
    mesh_ref,
    target_ref_problems,
)
from isthmus.resources.common import Model, TargetRef
from isthmus.resources.duration import Duration, duration_ms


class Rate(Model):
    num: int = Field(ge=1, le=UINT32_MAX)  # Envoy's token bucket refills at least one token
    interval: Duration

    @model_validator(mode="after")
    def _interval(self) -> Rate:
        if duration_ms(self.interval) < 50:
            raise ValueError("interval: must be at least 50ms")
        return self


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


class Headers(Model):
    set: list[Header] | None = None
    add: list[Header] | None = None


class OnRateLimit(Model):
    status: int | None = Field(default=None, ge=100, le=599)
    headers: Headers | None = None


class Http(Model):
    disabled: bool | None = None
    request_rate: Rate | None = Field(default=None, alias="requestRate")
    on_rate_limit: OnRateLimit | None = Field(default=None, alias="onRateLimit")


class Tcp(Model):
    disabled: bool | None = None
    connection_rate: Rate | None = Field(default=None, alias="connectionRate")


class Local(Model):
    http: Http | None = None
    tcp: Tcp | None = None


class Conf(Model):
    local: Local | None = None


class MeshRateLimitSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    from_: list[From[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule[Conf]] | None = None

    @model_validator(mode="after")
    def _refs(self) -> MeshRateLimitSpec:
        problem = target_ref_problems(self.target_ref, None, self.from_, rules=self.rules)
        if problem:
            raise ValueError(
                problem.replace(
                    "to: at least one of to, from and rules", "from: at least one of from and rules"
                )
            )
        return self
