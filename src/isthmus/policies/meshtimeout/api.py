"""Schema of ``MeshTimeout`` (Kuma 2.x: ``to`` for outbound, ``from`` for inbound traffic)."""

from __future__ import annotations

from pydantic import Field, model_validator

from isthmus.policies.sections import From, Rule, To, mesh_ref, route_target_problems, target_ref_problems
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


class MeshTimeoutSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To[Conf]] | None = None
    from_: list[From[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule[Conf]] | None = None
    default: Conf | None = None  # with targetRef kind MeshHTTPRoute: the timeouts of that route's requests

    @model_validator(mode="after")
    def _refs(self) -> MeshTimeoutSpec:
        if self.target_ref.kind is TargetRefKind.MESH_HTTP_ROUTE:
            problem = route_target_problems(self.target_ref, self.default, self.to, self.from_, self.rules)
        elif self.default is not None:
            problem = "default: only with targetRef kind MeshHTTPRoute (use to, from or rules)"
        else:
            problem = target_ref_problems(self.target_ref, self.to, self.from_, rules=self.rules)
        if problem:
            raise ValueError(problem)
        return self
