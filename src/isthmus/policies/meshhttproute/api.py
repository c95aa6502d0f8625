"""Schema of ``MeshHTTPRoute`` (Kuma 2.x, sidecars): ``to[]{targetRef, rules[]{matches[], default}}``.

Field names follow Kuma's ``pkg/plugins/policies/meshhttproute/api/v1alpha1``. Validators raise messages that
start with the sub-path they are about (``value: must start with '/'``), so every error names its field.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from isthmus.policies.regex import regex_problem
from isthmus.policies.sections import (
    TOP_LEVEL_KINDS,
    check_header_name,
    check_header_value,
    mesh_ref,
    target_ref_problems,
)
from isthmus.resources.common import Model, Port, Tags, TargetRef, TargetRefKind

PathMatchType = Literal["Exact", "PathPrefix", "RegularExpression"]
HeaderMatchType = Literal["Exact", "Present", "RegularExpression", "Absent", "Prefix"]
QueryMatchType = Literal["Exact", "RegularExpression"]
Method = Literal["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"]
FilterType = Literal[
    "RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "RequestMirror"
]
TO_KINDS = (TargetRefKind.MESH_SERVICE,)
HOSTNAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NonEmpty = Annotated[str, Field(min_length=1)]
# a header a filter sets, adds or removes: Envoy refuses to modify ':'-prefixed pseudo-headers and host
HeaderName = Annotated[str, Field(min_length=1), AfterValidator(check_header_name)]


def _hostname(value: str | None) -> str | None:
    if value is not None and (len(value) > 253 or not HOSTNAME_RE.match(value)):
        raise ValueError("must be a lower-case DNS name (letters, digits, '-' and '.'), not an IP address")
    return value


# -- matches ------------------------------------------------------------------------------------------------------
class PathMatch(Model):
    type: PathMatchType
    value: NonEmpty

    @model_validator(mode="after")
    def _value(self) -> PathMatch:
        if self.type == "RegularExpression":
            problem = regex_problem(self.value)
            if problem:
                raise ValueError(f"value: {problem}")
        elif not self.value.startswith("/"):
            raise ValueError(f"value: must start with '/' for type {self.type}")
        elif "?" in self.value or "#" in self.value:
            raise ValueError(f"value: must not contain '?' or '#' for type {self.type}")
        return self


class QueryParamsMatch(Model):
    type: QueryMatchType = "Exact"
    name: NonEmpty
    value: str

    @model_validator(mode="after")
    def _value(self) -> QueryParamsMatch:
        if self.type == "RegularExpression":
            problem = regex_problem(self.value)
            if problem:
                raise ValueError(f"value: {problem}")
        return self


class HeaderMatch(Model):
    type: HeaderMatchType = "Exact"
    name: NonEmpty
    value: str | None = None

    @model_validator(mode="after")
    def _value(self) -> HeaderMatch:
        if self.type in ("Present", "Absent"):
            if self.value is not None:
                raise ValueError(f"value: must not be set with type {self.type}")
            return self
        if self.value is None:
            raise ValueError(f"value: must be set with type {self.type}")
        if self.type == "RegularExpression":
            problem = regex_problem(self.value)
            if problem:
                raise ValueError(f"value: {problem}")
        return self


class Match(Model):
    path: PathMatch | None = None
    method: Method | None = None
    query_params: list[QueryParamsMatch] | None = Field(default=None, alias="queryParams")
    headers: list[HeaderMatch] | None = None


# -- backends -----------------------------------------------------------------------------------------------------
class BackendRef(Model):
    """A destination of the traffic: a service, or the instances of a service with some tags."""

    kind: Literal["MeshService", "MeshServiceSubset"] = "MeshService"
    name: NonEmpty
    tags: Tags | None = None
    weight: int = Field(default=1, ge=0)
    port: Port | None = None


# -- filters ------------------------------------------------------------------------------------------------------
class HeaderKeyValue(Model):
    name: HeaderName
    value: Annotated[str, AfterValidator(check_header_value)]


class HeaderModifier(Model):
    set: list[HeaderKeyValue] | None = Field(default=None, max_length=16)
    add: list[HeaderKeyValue] | None = Field(default=None, max_length=16)
    remove: list[HeaderName] | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _names(self) -> HeaderModifier:
        for field in ("set", "add"):
            seen: set[str] = set()
            for i, item in enumerate(getattr(self, field) or []):
                if item.name.lower() in seen:
                    raise ValueError(f"{field}[{i}].name: header {item.name!r} is listed twice")
                seen.add(item.name.lower())
        return self


class PathRewrite(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = Field(default=None, alias="replaceFullPath")
    replace_prefix_match: str | None = Field(default=None, alias="replacePrefixMatch")

    @model_validator(mode="after")
    def _fields(self) -> PathRewrite:
        own, other = (
            ("replaceFullPath", "replacePrefixMatch")
            if self.type == "ReplaceFullPath"
            else ("replacePrefixMatch", "replaceFullPath")
        )
        value = self.replace_full_path if self.type == "ReplaceFullPath" else self.replace_prefix_match
        if value is None:
            raise ValueError(f"{own}: must be set with type {self.type}")
        if not value.startswith("/"):
            raise ValueError(f"{own}: must start with '/'")
        if any(c in value for c in "\0\r\n"):  # Envoy's rewrite and redirect paths: ^[^\0\n\r]*$
            raise ValueError(f"{own}: must not contain NUL, CR or LF")
        if (
            self.replace_prefix_match if self.type == "ReplaceFullPath" else self.replace_full_path
        ) is not None:
            raise ValueError(f"{other}: must not be set with type {self.type}")
        return self


class RequestRedirect(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: str | None = None
    path: PathRewrite | None = None
    port: Port | None = None
    status_code: Literal[301, 302, 303, 307, 308] | None = Field(default=None, alias="statusCode")

    @field_validator("hostname")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return _hostname(value)


class URLRewrite(Model):
    hostname: str | None = None
    path: PathRewrite | None = None
    host_to_backend_hostname: bool | None = Field(default=None, alias="hostToBackendHostname")

    @field_validator("hostname")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return _hostname(value)


class RequestMirror(Model):
    percentage: float | str | None = None  # Kuma's IntOrString: 30, "0.5"
    backend_ref: BackendRef = Field(alias="backendRef")

    @field_validator("percentage")
    @classmethod
    def _percentage(cls, value: float | str | None) -> float | str | None:
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            raise ValueError("must be a number between 0 and 100") from None
        if not 0 <= number <= 100:
            raise ValueError("must be between 0 and 100")
        return value

    @property
    def percent(self) -> float:
        return 100.0 if self.percentage is None else float(self.percentage)


_FILTER_FIELDS: dict[str, str] = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "RequestMirror": "request_mirror",
}
_ALIASES = {
    "request_header_modifier": "requestHeaderModifier",
    "response_header_modifier": "responseHeaderModifier",
    "request_redirect": "requestRedirect",
    "url_rewrite": "urlRewrite",
    "request_mirror": "requestMirror",
}


class Filter(Model):
    type: FilterType
    request_header_modifier: HeaderModifier | None = Field(default=None, alias="requestHeaderModifier")
    response_header_modifier: HeaderModifier | None = Field(default=None, alias="responseHeaderModifier")
    request_redirect: RequestRedirect | None = Field(default=None, alias="requestRedirect")
    url_rewrite: URLRewrite | None = Field(default=None, alias="urlRewrite")
    request_mirror: RequestMirror | None = Field(default=None, alias="requestMirror")

    @model_validator(mode="after")
    def _one_of(self) -> Filter:
        own = _FILTER_FIELDS[self.type]
        if getattr(self, own) is None:
            raise ValueError(f"{_ALIASES[own]}: must be set with type {self.type}")
        for field, alias in _ALIASES.items():
            if field != own and getattr(self, field) is not None:
                raise ValueError(f"{alias}: must not be set with type {self.type}")
        return self


# -- rules --------------------------------------------------------------------------------------------------------
class RuleConf(Model):
    filters: list[Filter] | None = None
    backend_refs: list[BackendRef] | None = Field(default=None, alias="backendRefs")

    def of_type(self, kind: str) -> list[Filter]:
        return [f for f in self.filters or [] if f.type == kind]


class Rule(Model):
    matches: list[Match] = Field(min_length=1)
    default: RuleConf

    @model_validator(mode="after")
    def _conf(self) -> Rule:
        conf = self.default
        redirects = conf.of_type("RequestRedirect")
        rewrites = conf.of_type("URLRewrite")
        # No backendRefs (only filters, or ``default: {}``): the requests go to the destination the ``to`` item
        # names, as in Kuma. Kuma requires backendRefs (or a RequestRedirect) only on a MeshGateway's routes, a
        # top-level kind this schema does not accept yet.
        if conf.backend_refs and not any(b.weight > 0 for b in conf.backend_refs):
            raise ValueError("default.backendRefs: at least one weight must be greater than 0")
        if redirects and rewrites:
            raise ValueError("default.filters: RequestRedirect and URLRewrite cannot be used together")
        if len(redirects) > 1 or len(rewrites) > 1:
            raise ValueError("default.filters: at most one RequestRedirect and one URLRewrite filter")
        for i, f in enumerate(conf.filters or []):
            action = f.request_redirect or f.url_rewrite
            path = action.path if action is not None else None
            if path is not None and path.type == "ReplacePrefixMatch":
                if not all(m.path is not None and m.path.type == "PathPrefix" for m in self.matches):
                    raise ValueError(
                        f"default.filters[{i}]: ReplacePrefixMatch needs every match to have a PathPrefix path"
                    )
        return self


class To(Model):
    target_ref: TargetRef = Field(alias="targetRef")
    rules: list[Rule] = Field(min_length=1)


class MeshHTTPRouteSpec(Model):
    target_ref: TargetRef = Field(default_factory=mesh_ref, alias="targetRef")
    to: list[To] = Field(min_length=1)

    @model_validator(mode="after")
    def _refs(self) -> MeshHTTPRouteSpec:
        problem = target_ref_problems(
            self.target_ref, self.to, None, top_kinds=TOP_LEVEL_KINDS, to_kinds=TO_KINDS
        )
        if problem:
            raise ValueError(problem)
        return self
