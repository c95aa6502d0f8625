"""Schema of ``MeshRetry`` (outbound ``to`` items): TCP connect attempts, HTTP and gRPC retries."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import (
    UINT32_MAX,
    To,
    conf_problem,
    mesh_ref,
    refuse_unknown_forms,
    route_target_problems,
    target_ref_problems,
)
from isthmus.resources.common import Model, TargetRef, TargetRefKind
from isthmus.resources.duration import Duration, PositiveDuration, duration_ms

# Kuma's retryOn values -> Envoy's retry_on conditions
HTTP_RETRY_ON = {
    "5xx": "5xx",
    "5XX": "5xx",
    "All5xx": "5xx",
    "GatewayError": "gateway-error",
    "Reset": "reset",
    "Retriable4xx": "retriable-4xx",
    "ConnectFailure": "connect-failure",
    "EnvoyRatelimited": "envoy-ratelimited",
    "RefusedStream": "refused-stream",
    "Http3PostConnectFailure": "http3-post-connect-failure",
}
HTTP_METHODS = {
    f"HttpMethod{m.capitalize()}": m
    for m in ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
}
GRPC_RETRY_ON = {
    "Canceled": "cancelled",
    "DeadlineExceeded": "deadline-exceeded",
    "Internal": "internal",
    "ResourceExhausted": "resource-exhausted",
    "Unavailable": "unavailable",
}


class BackOff(Model):
    base_interval: PositiveDuration | None = Field(default=None, alias="baseInterval")
    max_interval: PositiveDuration | None = Field(default=None, alias="maxInterval")


def _back_off_problem(conf: Conf) -> str | None:
    for name, section in (("http", conf.http), ("grpc", conf.grpc)):
        b = section.back_off if section is not None else None
        if b and b.base_interval and b.max_interval:
            if duration_ms(b.max_interval) < duration_ms(b.base_interval):
                return f"{name}.backOff.maxInterval: {b.max_interval} is shorter than baseInterval {b.base_interval}"
    return None


class Http(Model):
    num_retries: int | None = Field(default=None, alias="numRetries", ge=0, le=UINT32_MAX)
    per_try_timeout: Duration | None = Field(default=None, alias="perTryTimeout")
    back_off: BackOff | None = Field(default=None, alias="backOff")
    retry_on: list[str] | None = Field(default=None, alias="retryOn")

    @field_validator("retry_on")
    @classmethod
    def _retry_on(cls, values: list[str] | None) -> list[str] | None:
        for v in values or []:
            if (
                v not in HTTP_RETRY_ON
                and v not in HTTP_METHODS
                and not (v.isdigit() and 100 <= int(v) <= 599)
            ):
                known = ", ".join([*HTTP_RETRY_ON, *HTTP_METHODS])
                raise ValueError(f"{v!r} is not a retry condition ({known}, or a status code such as 503)")
        return values


class Grpc(Model):
    num_retries: int | None = Field(default=None, alias="numRetries", ge=0, le=UINT32_MAX)
    per_try_timeout: Duration | None = Field(default=None, alias="perTryTimeout")
    back_off: BackOff | None = Field(default=None, alias="backOff")
    retry_on: list[str] | None = Field(default=None, alias="retryOn")

    @field_validator("retry_on")
    @classmethod
    def _retry_on(cls, values: list[str] | None) -> list[str] | None:
        for v in values or []:
            if v not in GRPC_RETRY_ON:
                raise ValueError(f"{v!r} is not a gRPC retry condition ({', '.join(GRPC_RETRY_ON)})")
        return values


class Tcp(Model):
    max_connect_attempt: int | None = Field(default=None, alias="maxConnectAttempt", ge=1, le=UINT32_MAX)


class Conf(Model):
    tcp: Tcp | None = None
    http: Http | None = None
    grpc: Grpc | None = None


def _route_conf_problem(conf: Conf) -> str | None:
    """Routes carry HTTP and gRPC retries; Kuma accepts ``tcp`` on a MeshHTTPRoute but never reads it there."""
    if conf.tcp is not None:
        return (
            "tcp: cannot be set when the top-level targetRef is a MeshHTTPRoute "
            "(a route's requests are HTTP: use http or grpc)"
        )
    return None


class MeshRetrySpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To[Conf]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return refuse_unknown_forms(data)

    @model_validator(mode="after")
    def _refs(self) -> MeshRetrySpec:
        if self.target_ref.kind is TargetRefKind.MESH_HTTP_ROUTE:
            problem = route_target_problems(self.target_ref, self.to, None, None)
            problem = problem or conf_problem(self, _route_conf_problem)
        else:
            problem = target_ref_problems(self.target_ref, self.to, None)
            if problem and problem.startswith("to: at least one"):
                problem = "to: must have at least one item"
        problem = problem or conf_problem(self, _back_off_problem)
        if problem:
            raise ValueError(problem)
        return self
