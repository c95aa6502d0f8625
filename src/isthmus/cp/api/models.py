"""The shapes of the REST API's answers, as the OpenAPI document declares them.

The handlers build plain dicts (a resource document is Kuma's Universal form, whose fields depend on the kind);
these models only describe them, so ``/openapi.json`` says what each route returns. The Schemathesis test
(``tests/api``) checks every real answer against them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Index(BaseModel):
    product: str
    version: str
    instanceId: str
    xdsAddress: str


class ResourceTypeInfo(BaseModel):
    name: str = Field(description="the kind, e.g. MeshTrafficPermission")
    path: str = Field(description="the plural used in REST paths, e.g. meshtrafficpermissions")
    scope: Literal["Global", "Mesh"]
    policy: bool


class ResourceTypes(BaseModel):
    resources: list[ResourceTypeInfo]


class ResourceDocument(BaseModel):
    """A resource in Kuma's Universal format. Besides these fields it carries its specification: under
    ``spec`` for policies, at the top level for ``Mesh`` and ``Dataplane``."""

    model_config = ConfigDict(extra="allow")

    type: str
    mesh: str | None = Field(None, description="absent for global resources (Mesh)")
    name: str
    creationTime: datetime
    modificationTime: datetime
    labels: dict[str, str] | None = None


class ResourcePage(BaseModel):
    total: int = Field(description="how many resources match, on every page")
    items: list[ResourceDocument]
    next: str | None = Field(description="the URL of the next page; null on the last page")


class Empty(BaseModel):
    """The answer to a successful DELETE: an empty object."""

    model_config = ConfigDict(extra="forbid")


class DataplaneOverview(BaseModel):
    type: Literal["DataplaneOverview"]
    mesh: str
    name: str
    creationTime: datetime
    modificationTime: datetime
    dataplane: dict[str, Any] = Field(description="the Dataplane's networking section")
    dataplaneInsight: dict[str, Any] = Field(
        description="ADS subscriptions, certificate status and the last configuration error"
    )


class DataplaneOverviewPage(BaseModel):
    total: int
    items: list[DataplaneOverview]
    next: str | None


class ProxyConfig(BaseModel):
    nodeId: str
    xds: dict[str, list[dict[str, Any]]] = Field(
        description="the xDS resources served to the proxy, by type URL (private keys redacted)"
    )
    versions: dict[str, str]
    error: str | None = Field(description="why the latest configuration could not be built, if it could not")


class ProxyPolicies(BaseModel):
    mesh: str
    name: str
    inbounds: list[dict[str, Any]]
    outbounds: list[dict[str, Any]]


class PolicyStatus(BaseModel):
    type: str
    mesh: str
    name: str
    targetRefs: list[dict[str, Any]]
    selectedDataplanes: list[str]
    ok: bool = Field(description="whether every targetRef refers to something that exists")


class Explanation(BaseModel):
    """What a request from a data plane to a service would meet: route, backends, policies on the way."""

    model_config = ConfigDict(extra="allow")

    mesh: str
    to: str
    request: dict[str, Any]


# -- GET .../dataplanes/{name}/_rules: Kuma's InspectRules shape (kumactl inspect dataplane --type=rules) --------
class RuleMeta(BaseModel):
    type: str
    mesh: str
    name: str
    labels: dict[str, str]


class RuleMatcher(BaseModel):
    key: str
    value: str
    negated: bool = Field(alias="not", description="whether the key:value pair must be absent")


class SubsetRule(BaseModel):
    matchers: list[RuleMatcher]
    conf: dict[str, Any]
    origin: list[RuleMeta] = Field(description="the policies merged into conf, in merge order")


class RuleInbound(BaseModel):
    name: str | None = None
    tags: dict[str, str]
    port: int


class FromRule(BaseModel):
    inbound: RuleInbound
    rules: list[SubsetRule]


class RuleOrigin(BaseModel):
    resourceMeta: RuleMeta
    ruleIndex: int = Field(description="index of the item in the policy's to/from/rules list")


class InboundRule(BaseModel):
    conf: list[dict[str, Any]]
    match: dict[str, Any] | None = None
    origin: list[RuleOrigin]


class InboundRulesEntry(BaseModel):
    inbound: RuleInbound
    rules: list[InboundRule] = Field(description="in merge order")


class ResourceRule(BaseModel):
    resourceMeta: RuleMeta
    resourceSectionName: str
    conf: list[dict[str, Any]]
    origin: list[RuleOrigin] = Field(description="the items merged into conf, in merge order")


class ProxyRule(BaseModel):
    conf: dict[str, Any]
    origin: list[RuleMeta]


class InspectRule(BaseModel):
    type: str
    toRules: list[SubsetRule]
    toResourceRules: list[ResourceRule]
    fromRules: list[FromRule]
    inboundRules: list[InboundRulesEntry]
    proxyRule: ProxyRule | None = None
    warnings: list[str]


class HttpMatch(BaseModel):
    hash: str
    match: list[dict[str, Any]]


class InspectRules(BaseModel):
    resource: RuleMeta
    rules: list[InspectRule]
    httpMatches: list[HttpMatch]
