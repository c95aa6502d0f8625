"""Schema of ``MeshTimeout`` (Kuma 2.x: ``to`` for outbound, ``from`` for inbound traffic)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from isthmus.policies.sections import (
    From,
    Rule,
    To,
    conf_problem,
    mesh_ref,
    refuse_unknown_forms,
    route_target_problems,
    target_ref_problems,
)
from isthmus.resources.common import Model, TargetRef, TargetRefKind
from isthmus.resources.duration import Duration


class Http(Model):
    request_timeout: Duration | None = Field(default=None, alias="requestTimeout")
    stream_idle_timeout: Duration | None = Field(default=None, alias="streamIdleTimeout")
    max_stream_duration: Duration | None = Field(default=None, alias="maxStreamDuration")
    max_connection_duration: Duration | None = Field(default=None, alias="maxConnectionDuration")
    request_headers_timeout: Duration | None = Field(default=None, alias="requestHeadersTimeout")


class Conf(Model):
    connection_timeout: Duration | None = Field(default=None, alias="connectionTimeout")
    idle_timeout: Duration | None = Field(default=None, alias="idleTimeout")
    http: Http | None = None


def _route_conf_problem(conf: Conf) -> str | None:
    """With a top-level targetRef of kind MeshHTTPRoute, Kuma refuses the connection-level fields. It accepts
    ``http.requestHeadersTimeout`` there but only ever reads it per listener, so it is refused here too rather
    than accepted without effect."""
    http = conf.http or Http()
    for name, value in (
        ("connectionTimeout", conf.connection_timeout),
        ("idleTimeout", conf.idle_timeout),
        ("http.maxStreamDuration", http.max_stream_duration),
        ("http.maxConnectionDuration", http.max_connection_duration),
        ("http.requestHeadersTimeout", http.request_headers_timeout),
    ):
        if value is not None:
            return (
                f"{name}: cannot be set when the top-level targetRef is a MeshHTTPRoute "
                "(only http.requestTimeout and http.streamIdleTimeout apply per route)"
            )
    return None


class MeshTimeoutSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To[Conf]] | None = None
    from_: list[From[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule[Conf]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return refuse_unknown_forms(data)

    @model_validator(mode="after")
    def _refs(self) -> MeshTimeoutSpec:
        if self.target_ref.kind is TargetRefKind.MESH_HTTP_ROUTE:
            problem: str | None = route_target_problems(self.target_ref, self.to, self.from_, self.rules)
            problem = problem or conf_problem(self, _route_conf_problem)
        else:
            problem = target_ref_problems(self.target_ref, self.to, self.from_, rules=self.rules)
        if problem:
            raise ValueError(problem)
        return self
