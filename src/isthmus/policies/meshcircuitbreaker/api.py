"""Schema of ``MeshCircuitBreaker``: connection limits and outlier detection, per outbound (``to``) and for the
local application (``from``/``rules``)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import UINT32_MAX, From, Rule, To, check_decimal, mesh_ref, target_ref_problems
from isthmus.resources.common import Model, TargetRef
from isthmus.resources.duration import PositiveDuration

Count = int


class ConnectionLimits(Model):
    max_connections: int | None = Field(default=None, alias="maxConnections", ge=0, le=UINT32_MAX)
    max_connection_pools: int | None = Field(default=None, alias="maxConnectionPools", ge=0, le=UINT32_MAX)
    max_pending_requests: int | None = Field(default=None, alias="maxPendingRequests", ge=0, le=UINT32_MAX)
    max_requests: int | None = Field(default=None, alias="maxRequests", ge=0, le=UINT32_MAX)
    max_retries: int | None = Field(default=None, alias="maxRetries", ge=0, le=UINT32_MAX)


class Consecutive(Model):
    consecutive: int | None = Field(default=None, ge=0, le=UINT32_MAX)


class SuccessRate(Model):
    minimum_hosts: int | None = Field(default=None, alias="minimumHosts", ge=0, le=UINT32_MAX)
    request_volume: int | None = Field(default=None, alias="requestVolume", ge=0, le=UINT32_MAX)
    standard_deviation_factor: float | str | None = Field(default=None, alias="standardDeviationFactor")

    @field_validator("standard_deviation_factor")
    @classmethod
    def _factor(cls, v: float | str | None) -> float | str | None:
        return check_decimal(v, 0, UINT32_MAX / 1000)  # Envoy takes it in thousandths, as a uint32


class FailurePercentage(Model):
    request_volume: int | None = Field(default=None, alias="requestVolume", ge=0, le=UINT32_MAX)
    minimum_hosts: int | None = Field(default=None, alias="minimumHosts", ge=0, le=UINT32_MAX)
    threshold: int | None = Field(default=None, ge=0, le=100)


class Detectors(Model):
    total_failures: Consecutive | None = Field(default=None, alias="totalFailures")
    gateway_failures: Consecutive | None = Field(default=None, alias="gatewayFailures")
    local_origin_failures: Consecutive | None = Field(default=None, alias="localOriginFailures")
    success_rate: SuccessRate | None = Field(default=None, alias="successRate")
    failure_percentage: FailurePercentage | None = Field(default=None, alias="failurePercentage")


class OutlierDetection(Model):
    disabled: bool | None = None
    interval: PositiveDuration | None = None
    base_ejection_time: PositiveDuration | None = Field(default=None, alias="baseEjectionTime")
    max_ejection_percent: int | None = Field(default=None, alias="maxEjectionPercent", ge=0, le=100)
    split_external_and_local_errors: bool | None = Field(default=None, alias="splitExternalAndLocalErrors")
    detectors: Detectors | None = None


class Conf(Model):
    connection_limits: ConnectionLimits | None = Field(default=None, alias="connectionLimits")
    outlier_detection: OutlierDetection | None = Field(default=None, alias="outlierDetection")


class MeshCircuitBreakerSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To[Conf]] | None = None
    from_: list[From[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule[Conf]] | None = None

    @model_validator(mode="after")
    def _refs(self) -> MeshCircuitBreakerSpec:
        problem = target_ref_problems(self.target_ref, self.to, self.from_, rules=self.rules)
        if problem:
            raise ValueError(problem)
        return self
