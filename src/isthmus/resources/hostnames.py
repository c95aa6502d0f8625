"""``HostnameGenerator`` (Kuma's format) and the small template language of its ``template``.

Kuma renders templates with Go's ``text/template``; Isthmus implements only the forms Kuma documents and its
default generators use, as a tiny interpreter that never evaluates user text:

* literal text;
* ``{{ .Name }}``, ``{{ .DisplayName }}``, ``{{ .Namespace }}``, ``{{ .Mesh }}``, ``{{ .Zone }}``;
* ``{{ label "key" }}`` (double quotes or backquotes): the value of that label, an error when it is missing;
* ``{{-`` / ``-}}`` trim the whitespace beside the action, as in Go.

Anything else inside ``{{ }}`` is refused when the generator is applied, with the field named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from isthmus.resources.common import FreeForm, Labels, Model

FIELDS = ("Name", "DisplayName", "Namespace", "Mesh", "Zone")
MAX_TEMPLATE = 1024
MAX_HOSTNAME = 253
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_FIELD = re.compile(r"^\.([A-Za-z]+)$")
_LABEL = re.compile(r'^label\s+(?:"((?:[^"\\]|\\.)*)"|`([^`]*)`)$')


class TemplateError(ValueError):
    """A template Isthmus cannot parse or render; the message says where."""


@dataclass(frozen=True)
class Part:
    literal: str = ""
    field: str = ""  # one of FIELDS
    label: str = ""  # the label key of ``label "..."``

    @property
    def is_literal(self) -> bool:
        return not self.field and not self.label


def parse_template(text: str) -> tuple[Part, ...]:
    """The template's parts; TemplateError for anything outside the supported forms."""
    if len(text) > MAX_TEMPLATE:
        raise TemplateError(f"must be at most {MAX_TEMPLATE} characters")
    parts: list[Part] = []
    pos = 0
    for m in _ACTION.finditer(text):
        literal = text[pos : m.start()]
        if m.group(1):
            literal = literal.rstrip()
        if "{{" in literal or "}}" in literal:
            raise TemplateError(f"unbalanced '{{{{' or '}}}}' near {literal[:40]!r}")
        if parts and parts[-1].is_literal and parts[-1].literal == "" and literal:
            parts.pop()
        if literal:
            parts.append(Part(literal=literal))
        parts.append(_action(m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    tail = text[pos:]
    if "{{" in tail or "}}" in tail:
        raise TemplateError(f"unbalanced '{{{{' or '}}}}' near {tail[:40]!r}")
    if tail:
        parts.append(Part(literal=tail))
    return tuple(parts)


def _action(body: str) -> Part:
    if m := _FIELD.match(body):
        if m.group(1) not in FIELDS:
            raise TemplateError(f"unknown field .{m.group(1)}; known: " + ", ".join(f".{f}" for f in FIELDS))
        return Part(field=m.group(1))
    if m := _LABEL.match(body):
        key = m.group(1) if m.group(1) is not None else m.group(2)
        key = re.sub(r"\\(.)", r"\1", key)
        if not key:
            raise TemplateError("label needs a non-empty key")
        return Part(label=key)
    raise TemplateError(
        f"unsupported action {{{{ {body[:60]} }}}}: only {{{{ .Name }}}}, {{{{ .DisplayName }}}}, "
        '{{ .Namespace }}, {{ .Mesh }}, {{ .Zone }} and {{ label "key" }} are supported'
    )


def render(parts: tuple[Part, ...], values: Mapping[str, str], labels: Mapping[str, str]) -> str:
    """The rendered text; TemplateError when a ``label`` is missing (as Kuma's template)."""
    out: list[str] = []
    for part in parts:
        if part.field:
            out.append(values.get(part.field, ""))
        elif part.label:
            if part.label not in labels:
                raise TemplateError(f"label {part.label} not found")
            out.append(labels[part.label])
        else:
            out.append(part.literal)
    return "".join(out)


def hostname_problem(name: str) -> str | None:
    """Why ``name`` is not a DNS-1123 subdomain (Kuma's check of generated hostnames), or None."""
    if not name:
        return "is empty"
    if len(name) > MAX_HOSTNAME:
        return f"is longer than {MAX_HOSTNAME} characters"
    for label in name.split("."):
        if len(label) > 63 or not _DNS_LABEL.match(label):
            return (
                "must be lower-case letters, digits, '-' and '.', each dot-separated part 1-63 characters "
                "starting and ending with a letter or digit"
            )
    return None


STUB = {
    "Name": "name",
    "DisplayName": "displayname",
    "Namespace": "namespace",
    "Mesh": "mesh",
    "Zone": "zone",
}


def check_template(text: str) -> tuple[Part, ...]:
    """Parse and render with stub values, as Kuma validates a generator: the result must be a DNS name."""
    if not text:
        raise TemplateError("must not be empty")
    parts = parse_template(text)
    labels = {p.label: "label" for p in parts if p.label}
    rendered = render(parts, STUB, labels)
    problem = hostname_problem(rendered)
    if problem:
        raise TemplateError(f"template renders to {rendered!r} which is not a valid DNS name: {problem}")
    return parts


class LabelSelector(Model):
    """Kuma's ``common_api.LabelSelector``."""

    match_labels: Labels | None = Field(default=None, alias="matchLabels")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in (self.match_labels or {}).items())


class HostnameSelector(Model):
    mesh_service: LabelSelector | None = Field(default=None, alias="meshService")
    mesh_external_service: LabelSelector | None = Field(default=None, alias="meshExternalService")
    mesh_multi_zone_service: LabelSelector | None = Field(default=None, alias="meshMultiZoneService")

    @model_validator(mode="after")
    def _exactly_one(self) -> HostnameSelector:
        count = sum(
            s is not None
            for s in (self.mesh_service, self.mesh_external_service, self.mesh_multi_zone_service)
        )
        if count != 1:
            raise ValueError(
                "exactly one of meshService, meshExternalService, meshMultiZoneService must be defined"
            )
        return self

    def selector_for(self, kind: str) -> LabelSelector | None:
        return {
            "MeshService": self.mesh_service,
            "MeshExternalService": self.mesh_external_service,
            "MeshMultiZoneService": self.mesh_multi_zone_service,
        }.get(kind)


class Extension(Model):
    type: str = Field(min_length=1)
    config: FreeForm | Any | None = None


class HostnameGeneratorSpec(Model):
    selector: HostnameSelector
    template: str
    extension: Extension | None = None

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        check_template(value)
        return value

    @property
    def parts(self) -> tuple[Part, ...]:
        return parse_template(self.template)


@dataclass(frozen=True)
class DefaultGenerator:
    name: str
    kind: str  # MeshService | MeshExternalService | MeshMultiZoneService
    match_labels: Mapping[str, str]
    template: str

    def document(self, origin: str) -> dict[str, Any]:
        selector_key = {
            "MeshService": "meshService",
            "MeshExternalService": "meshExternalService",
            "MeshMultiZoneService": "meshMultiZoneService",
        }[self.kind]
        return {
            "type": "HostnameGenerator",
            "name": self.name,
            "labels": {"kuma.io/origin": origin},
            "spec": {
                "template": self.template,
                "selector": {selector_key: {"matchLabels": dict(self.match_labels)}},
            },
        }


# Kuma's defaults (pkg/defaults/hostname_generator.go): a zone (and a standalone) control plane in Universal
# creates the two ``local-*`` ones; a global control plane creates the ``synced-*`` ones, which reach the zones.
ZONE_DEFAULTS = (
    DefaultGenerator(
        "local-mesh-external-service",
        "MeshExternalService",
        {"kuma.io/origin": "zone"},
        "{{ .DisplayName }}.extsvc.mesh.local",
    ),
    DefaultGenerator(
        "local-universal-mesh-service",
        "MeshService",
        {"kuma.io/origin": "zone"},
        "{{ .DisplayName }}.svc.mesh.local",
    ),
)
GLOBAL_DEFAULTS = (
    DefaultGenerator(
        "synced-mesh-multi-zone-service",
        "MeshMultiZoneService",
        {"kuma.io/origin": "global"},
        "{{ .DisplayName }}.mzsvc.mesh.local",
    ),
    DefaultGenerator(
        "synced-kube-mesh-service",
        "MeshService",
        {"kuma.io/origin": "global", "k8s.kuma.io/is-headless-service": "false", "kuma.io/env": "kubernetes"},
        "{{ .DisplayName }}.{{ .Namespace }}.svc.{{ .Zone }}.mesh.local",
    ),
    DefaultGenerator(
        "synced-headless-kube-mesh-service",
        "MeshService",
        {"kuma.io/origin": "global", "k8s.kuma.io/is-headless-service": "true", "kuma.io/env": "kubernetes"},
        '{{ label "statefulset.kubernetes.io/pod-name" }}.{{ label "k8s.kuma.io/service-name" }}'
        ".{{ .Namespace }}.svc.{{ .Zone }}.mesh.local",
    ),
    DefaultGenerator(
        "synced-universal-mesh-service",
        "MeshService",
        {"kuma.io/origin": "global", "kuma.io/env": "universal"},
        "{{ .DisplayName }}.svc.{{ .Zone }}.mesh.local",
    ),
    DefaultGenerator(
        "synced-mesh-external-service",
        "MeshExternalService",
        {"kuma.io/origin": "global"},
        "{{ .DisplayName }}.extsvc.mesh.local",
    ),
)
