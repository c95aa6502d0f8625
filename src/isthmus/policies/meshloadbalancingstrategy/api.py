"""Schema of ``MeshLoadBalancingStrategy`` (outbound ``to`` items): the balancing algorithm and hash keys."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, field_validator, model_validator

from isthmus.policies.sections import (
    UINT32_MAX,
    To,
    check_decimal,
    conf_problem,
    mesh_ref,
    target_ref_problems,
)
from isthmus.resources.common import Model, TargetRef
from isthmus.resources.duration import Duration


class HashType(str, Enum):
    HEADER = "Header"
    COOKIE = "Cookie"
    CONNECTION = "Connection"
    SOURCE_IP = "SourceIP"
    QUERY_PARAMETER = "QueryParameter"
    FILTER_STATE = "FilterState"


class Named(Model):
    name: str = Field(min_length=1)


class Cookie(Model):
    name: str = Field(min_length=1)
    ttl: Duration | None = None
    path: str | None = None


class Connection(Model):
    source_ip: bool | None = Field(default=None, alias="sourceIP")


class FilterState(Model):
    key: str = Field(min_length=1)


class HashPolicy(Model):
    type: HashType
    terminal: bool | None = None
    header: Named | None = None
    cookie: Cookie | None = None
    connection: Connection | None = None
    query_parameter: Named | None = Field(default=None, alias="queryParameter")
    filter_state: FilterState | None = Field(default=None, alias="filterState")

    @model_validator(mode="after")
    def _section(self) -> HashPolicy:
        needed = {
            HashType.HEADER: ("header", self.header),
            HashType.COOKIE: ("cookie", self.cookie),
            HashType.QUERY_PARAMETER: ("queryParameter", self.query_parameter),
            HashType.FILTER_STATE: ("filterState", self.filter_state),
        }.get(self.type)
        if needed is not None and needed[1] is None:
            raise ValueError(f"{needed[0]}: required with type {self.type.value}")
        return self


class LbType(str, Enum):
    ROUND_ROBIN = "RoundRobin"
    LEAST_REQUEST = "LeastRequest"
    RING_HASH = "RingHash"
    RANDOM = "Random"
    MAGLEV = "Maglev"


class LeastRequest(Model):
    choice_count: int | None = Field(default=None, alias="choiceCount", ge=2, le=UINT32_MAX)
    active_request_bias: float | str | None = Field(default=None, alias="activeRequestBias")

    @field_validator("active_request_bias")
    @classmethod
    def _bias(cls, v: float | str | None) -> float | str | None:
        return check_decimal(v, 0, 1e6)


class RingHash(Model):
    hash_function: str | None = Field(default=None, alias="hashFunction", pattern="^(XXHash|MurmurHash2)$")
    min_ring_size: int | None = Field(default=None, alias="minRingSize", ge=1, le=8388608)
    max_ring_size: int | None = Field(default=None, alias="maxRingSize", ge=1, le=8388608)
    hash_policies: list[HashPolicy] | None = Field(default=None, alias="hashPolicies")


class Maglev(Model):
    table_size: int | None = Field(default=None, alias="tableSize", ge=1, le=5000011)
    hash_policies: list[HashPolicy] | None = Field(default=None, alias="hashPolicies")


class LoadBalancer(Model):
    type: LbType
    least_request: LeastRequest | None = Field(default=None, alias="leastRequest")
    ring_hash: RingHash | None = Field(default=None, alias="ringHash")
    maglev: Maglev | None = None


class AffinityTag(Model):
    key: str = Field(min_length=1)
    weight: int | None = Field(default=None, ge=1, le=UINT32_MAX)


class LocalZone(Model):
    affinity_tags: list[AffinityTag] | None = Field(default=None, alias="affinityTags")


class ToZones(Model):
    type: str = Field(pattern="^(Any|Only|AnyExcept|None)$")
    zones: list[str] | None = None

    @model_validator(mode="after")
    def _zones(self) -> ToZones:
        if self.type in ("Only", "AnyExcept") and not self.zones:
            raise ValueError(f"zones: required (at least one) with type {self.type}")
        if self.type in ("Any", "None") and self.zones:
            raise ValueError(f"zones: not allowed with type {self.type}")
        return self


class FromZones(Model):
    zones: list[str] = Field(min_length=1)


class Failover(Model):
    from_: FromZones | None = Field(default=None, alias="from")
    to: ToZones


class FailoverThreshold(Model):
    percentage: int | str

    @field_validator("percentage")
    @classmethod
    def _percent(cls, v: int | str) -> int | str:
        try:
            value = float(v)
        except ValueError:
            raise ValueError("must be a number between 0 and 100") from None
        if not 0 < value <= 100:
            raise ValueError("must be greater than 0 and at most 100")
        return v


class CrossZone(Model):
    failover: list[Failover] | None = None
    failover_threshold: FailoverThreshold | None = Field(default=None, alias="failoverThreshold")


class LocalityAwareness(Model):
    disabled: bool | None = None
    local_zone: LocalZone | None = Field(default=None, alias="localZone")
    cross_zone: CrossZone | None = Field(default=None, alias="crossZone")


class Conf(Model):
    load_balancer: LoadBalancer | None = Field(default=None, alias="loadBalancer")
    locality_awareness: LocalityAwareness | None = Field(default=None, alias="localityAwareness")
    hash_policies: list[HashPolicy] | None = Field(default=None, alias="hashPolicies")


def _ring_problem(conf: Conf) -> str | None:
    ring = conf.load_balancer.ring_hash if conf.load_balancer else None
    if ring and ring.min_ring_size and ring.max_ring_size and ring.min_ring_size > ring.max_ring_size:
        return f"loadBalancer.ringHash.minRingSize: {ring.min_ring_size} is larger than maxRingSize {ring.max_ring_size}"
    return None


class MeshLoadBalancingStrategySpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To[Conf]] = Field(min_length=1)

    @model_validator(mode="after")
    def _refs(self) -> MeshLoadBalancingStrategySpec:
        problem = target_ref_problems(self.target_ref, self.to, None) or conf_problem(self, _ring_problem)
        if problem:
            raise ValueError(problem)
        return self
