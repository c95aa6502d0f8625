"""Schema of ``MeshFaultInjection``: HTTP aborts, delays and bandwidth limits injected on inbound traffic."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import From, Rule, mesh_ref, target_ref_problems
from isthmus.resources.common import Model, TargetRef, TargetRefKind
from isthmus.resources.duration import PositiveDuration

MAX_KBPS = 2**64 - 1  # Envoy's limit_kbps is a uint64
CLIENT_KINDS = (
    TargetRefKind.MESH,
    TargetRefKind.MESH_SUBSET,
    TargetRefKind.MESH_SERVICE,
    TargetRefKind.MESH_SERVICE_SUBSET,
)


def _percentage(value: float | str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not 0 <= number <= 100:
        raise ValueError("must be between 0 and 100")
    return number


class Abort(Model):
    http_status: int = Field(alias="httpStatus", ge=200, le=599)  # Envoy aborts with [200, 600) only
    percentage: float | str

    @field_validator("percentage")
    @classmethod
    def _pct(cls, v: float | str) -> float:
        return _percentage(v)


class Delay(Model):
    value: PositiveDuration
    percentage: float | str

    @field_validator("percentage")
    @classmethod
    def _pct(cls, v: float | str) -> float:
        return _percentage(v)


class ResponseBandwidth(Model):
    limit: str = Field(pattern=r"^\d+\s*(kbps|Kbps|mbps|Mbps|gbps|Gbps)$")
    percentage: float | str

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: str) -> str:
        number, unit = re.fullmatch(r"(\d+)\s*([a-zA-Z])bps", v).groups()  # type: ignore[union-attr]
        kbps = int(number) * {"k": 1, "m": 1000, "g": 1_000_000}[unit.lower()]
        if not 1 <= kbps <= MAX_KBPS:
            raise ValueError(f"must be between 1kbps and {MAX_KBPS}kbps")
        return v

    @field_validator("percentage")
    @classmethod
    def _pct(cls, v: float | str) -> float:
        return _percentage(v)


class Fault(Model):
    abort: Abort | None = None
    delay: Delay | None = None
    response_bandwidth: ResponseBandwidth | None = Field(default=None, alias="responseBandwidth")


class Conf(Model):
    http: list[Fault] | None = None


class MeshFaultInjectionSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    from_: list[From[Conf]] | None = Field(default=None, alias="from")
    rules: list[Rule[Conf]] | None = None

    @model_validator(mode="after")
    def _refs(self) -> MeshFaultInjectionSpec:
        problem = target_ref_problems(
            self.target_ref, None, self.from_, from_kinds=CLIENT_KINDS, rules=self.rules
        )
        if problem:
            raise ValueError(
                problem.replace(
                    "to: at least one of to, from and rules", "from: at least one of from and rules"
                )
            )
        return self
