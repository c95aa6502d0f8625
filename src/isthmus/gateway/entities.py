"""Kong's entities as pydantic v2 models: Kong's fields, defaults and validation rules.

Each model is the full entity as the Admin API shows it (every field present, ``null`` when unset). Foreign keys
are ``{"id": "<uuid>"}``; :mod:`isthmus.gateway.store` resolves a ``{"name": ...}`` or a bare name before
validation. :func:`validate` turns pydantic's errors and the entity checks into Kong's schema-violation error
(:mod:`isthmus.gateway.errors`), with Kong's messages where Kong has one.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from isthmus.gateway.errors import schema_violation
from isthmus.policies.regex import regex_problem

NAME_RE = re.compile(r"^[A-Za-z0-9.\-_~]+$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$"
)
TAG_RE = re.compile(r"^[\x21-\x2b\x2d\x2e\x30-\x7e\x80-\U0010ffff]+$")  # printable, no ',' nor '/'
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
METHOD_RE = re.compile(r"^[A-Z]+$")
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 16
MAX_LIST = 10_000

PROTOCOLS = ("grpc", "grpcs", "http", "https", "tcp", "tls", "tls_passthrough", "udp", "ws", "wss")
HTTP_REDIRECT_CODES = (426, 301, 302, 307, 308)
# Kong protocols the gateway does not serve yet: refused at apply rather than stored and never routed
NOT_YET_PROTOCOLS = ("tcp", "tls", "tls_passthrough", "udp", "ws", "wss")

# Kong's bundled plugins (OSS 3.10, ``kong/constants.lua``): other names are refused with Kong's "not enabled"
# message; bundled ones not in isthmus.gateway.plugins.kinds() yet are refused as "not supported yet".
PLUGINS = (
    "acl",
    "acme",
    "ai-prompt-decorator",
    "ai-prompt-guard",
    "ai-prompt-template",
    "ai-proxy",
    "ai-request-transformer",
    "ai-response-transformer",
    "aws-lambda",
    "azure-functions",
    "basic-auth",
    "bot-detection",
    "correlation-id",
    "cors",
    "datadog",
    "file-log",
    "grpc-gateway",
    "grpc-web",
    "hmac-auth",
    "http-log",
    "ip-restriction",
    "jwt",
    "key-auth",
    "ldap-auth",
    "loggly",
    "oauth2",
    "opentelemetry",
    "post-function",
    "pre-function",
    "prometheus",
    "proxy-cache",
    "rate-limiting",
    "redirect",
    "request-size-limiting",
    "request-termination",
    "request-transformer",
    "response-ratelimiting",
    "response-transformer",
    "session",
    "standard-webhooks",
    "statsd",
    "syslog",
    "tcp-log",
    "udp-log",
    "zipkin",
)


def now() -> int:
    return int(time.time())


def new_id() -> str:
    return str(uuid.uuid4())


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return len(text) == 36


# -- reusable field checks (messages as Kong's) ----------------------------------------------------------------
def _uuid(value: str) -> str:
    if not is_uuid(value):
        raise ValueError("expected a valid UUID")
    return value.lower()


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"invalid value '{value}': it must only contain alphanumeric and '., -, _, ~' characters"
        )
    return value


def _tag(value: str) -> str:
    if not TAG_RE.match(value):
        raise ValueError(
            "invalid tag: expected printable ascii (except `,` and `/`) or valid utf-8 sequences"
        )
    return value


def between(lo: int, hi: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"value should be between {lo} and {hi}")
        return value

    return check


def _host(value: str) -> str:
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value
    except ValueError:
        pass
    if not HOSTNAME_RE.match(value):
        raise ValueError("invalid value: " + value)
    return value.lower()


def _wildcard_host(value: str) -> str:
    if value.count("*") > 1:
        raise ValueError("invalid wildcard: must have at most one wildcard")
    if "*" in value:
        labels = value.split(".")
        if not (labels[0] == "*" or labels[-1] == "*") or (labels[0] == "*" and labels[-1] == "*"):
            raise ValueError("invalid wildcard: must be placed at leftmost or rightmost label")
        if len(labels) < 2:
            raise ValueError("invalid wildcard: must be placed at leftmost or rightmost label")
        rest = ".".join(label for label in labels if label != "*")
        host, _, port = rest.rpartition(":") if labels[-1] != "*" and ":" in labels[-1] else (rest, "", "")
        _host(host or rest)
        return value.lower()
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        between(0, 65535)(int(port))
        return _host(host) + ":" + port
    return _host(value)


def _route_path(value: str) -> str:
    if value.startswith("~"):
        problem = regex_problem(value[1:])
        if problem:
            raise ValueError(f"invalid regex: '{value[1:]}' {problem}")
        return value
    if not value.startswith("/"):
        raise ValueError("should start with: / (fixed path) or ~/ (regex path)")
    if "//" in value:
        raise ValueError("must not have empty segments")
    return value


def _service_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("should start with: /")
    if "//" in value:
        raise ValueError("must not have empty segments")
    return value


def _method(value: str) -> str:
    if not METHOD_RE.match(value):
        raise ValueError(f"invalid value: {value}")
    return value


def _protocol(value: str) -> str:
    if value not in PROTOCOLS:
        raise ValueError("expected one of: " + ", ".join(PROTOCOLS))
    return value


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(value)
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"is larger than {MAX_CONFIG_BYTES} bytes")

    def depth(v: Any, level: int) -> None:
        if level > MAX_CONFIG_DEPTH:
            raise ValueError(f"is nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(v, dict):
            for item in v.values():
                depth(item, level + 1)
        elif isinstance(v, list):
            for item in v:
                depth(item, level + 1)

    depth(value, 0)
    return value


Uuid = Annotated[str, AfterValidator(_uuid)]
Name = Annotated[str, AfterValidator(_name)]
Tag = Annotated[str, AfterValidator(_tag)]
Tags = Annotated[list[Tag], Field(max_length=MAX_LIST)]
Port = Annotated[int, AfterValidator(between(0, 65535))]
Timeout = Annotated[int, AfterValidator(between(1, 2**31 - 2))]
Host = Annotated[str, AfterValidator(_host)]


class Ref(BaseModel):
    """A foreign key as Kong shows it: ``{"id": "<uuid>"}``."""

    model_config = ConfigDict(extra="forbid")
    id: Uuid


class Entity(BaseModel):
    """Fields every Kong entity has."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    id: Uuid = Field(default_factory=new_id)
    created_at: int = Field(default_factory=now)
    updated_at: int = Field(default_factory=now)
    tags: Tags | None = None

    def entity_errors(self) -> dict[str, Any]:
        """Kong's entity checks (across fields): field -> message, ``@entity`` -> [messages]."""
        return {}

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# -- Service --------------------------------------------------------------------------------------------------
class Service(Entity):
    name: Name | None = None
    retries: Annotated[int, AfterValidator(between(0, 32767))] = 5
    protocol: Annotated[str, AfterValidator(_protocol)] = "http"
    host: Host
    port: Port = 80
    path: Annotated[str, AfterValidator(_service_path)] | None = None
    connect_timeout: Timeout = 60000
    write_timeout: Timeout = 60000
    read_timeout: Timeout = 60000
    client_certificate: Ref | None = None
    tls_verify: bool | None = None
    tls_verify_depth: Annotated[int, AfterValidator(between(0, 64))] | None = None
    ca_certificates: list[Uuid] | None = None
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _url_shorthand(cls, data: Any) -> Any:
        """``url`` (write-only) sets protocol, host, port and path; port 443 without a scheme's port ⇒ https's."""
        if not isinstance(data, dict) or "url" not in data:
            return data
        data = dict(data)
        url = data.pop("url")
        if url is None:
            return data
        if not isinstance(url, str):
            raise ValueError("url: expected a string")
        parts = urlsplit(url)
        if not parts.scheme or not parts.hostname:
            raise ValueError(f"url: missing host in url '{url}'")
        data["protocol"] = parts.scheme
        data["host"] = parts.hostname
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"url: invalid port in url '{url}'") from None
        data["port"] = (
            port if port is not None else (443 if parts.scheme in ("https", "grpcs", "wss") else 80)
        )
        data["path"] = parts.path or None
        return data

    def entity_errors(self) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        if self.path is not None and self.protocol in (
            "tcp",
            "tls",
            "tls_passthrough",
            "udp",
            "grpc",
            "grpcs",
        ):
            errors["path"] = "value must be null"
        if self.protocol not in ("https", "tls", "wss"):
            for field in ("client_certificate", "tls_verify", "tls_verify_depth", "ca_certificates"):
                if getattr(self, field) is not None:
                    errors[field] = "value must be null"
        if self.protocol in NOT_YET_PROTOCOLS and "protocol" not in errors:
            errors["protocol"] = f"'{self.protocol}' is not supported yet"
        return errors


# -- Route ----------------------------------------------------------------------------------------------------
class Route(Entity):
    name: Name | None = None
    protocols: Annotated[list[Annotated[str, AfterValidator(_protocol)]], Field(min_length=1)] = Field(
        default_factory=lambda: ["http", "https"]
    )
    methods: Annotated[list[Annotated[str, AfterValidator(_method)]], Field(max_length=MAX_LIST)] | None = (
        None
    )
    hosts: (
        Annotated[list[Annotated[str, AfterValidator(_wildcard_host)]], Field(max_length=MAX_LIST)] | None
    ) = None
    paths: Annotated[list[Annotated[str, AfterValidator(_route_path)]], Field(max_length=MAX_LIST)] | None = (
        None
    )
    headers: dict[str, list[str]] | None = None
    https_redirect_status_code: int = 426
    regex_priority: int = 0
    strip_path: bool = True
    path_handling: Literal["v0", "v1"] = "v0"
    preserve_host: bool = False
    request_buffering: bool = True
    response_buffering: bool = True
    snis: list[Annotated[str, AfterValidator(_wildcard_host)]] | None = None
    sources: list[dict[str, Any]] | None = None
    destinations: list[dict[str, Any]] | None = None
    service: Ref | None = None

    def entity_errors(self) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        protocols = set(self.protocols)
        if self.https_redirect_status_code not in HTTP_REDIRECT_CODES:
            errors["https_redirect_status_code"] = "expected one of: " + ", ".join(
                map(str, HTTP_REDIRECT_CODES)
            )
        if self.headers is not None:
            for name, values in self.headers.items():
                if name.lower() == "host":
                    errors["headers"] = "cannot contain 'host' header"
                elif not HEADER_NAME_RE.match(name):
                    errors["headers"] = f"invalid header name: {name}"
                elif not values:
                    errors["headers"] = f"header '{name}': length must be at least 1"
                else:
                    # Kong 3.x: a value starting with ``~*`` is a case-insensitive regex (Envoy runs it as RE2)
                    for value in values:
                        problem = regex_problem(value[2:]) if value.startswith("~*") else None
                        if problem:
                            errors["headers"] = f"invalid regex: '{value[2:]}' {problem}"
        groups = (
            {"http", "https"},
            {"tcp", "tls", "udp"},
            {"tls_passthrough"},
            {"grpc", "grpcs"},
            {"ws", "wss"},
        )
        if not any(protocols <= g for g in groups):
            errors["protocols"] = (
                "these sets are mutually exclusive: ('http', 'https'), ('tcp', 'tls', 'udp'), "
                "('tls_passthrough'), ('grpc', 'grpcs'), ('ws', 'wss')"
            )
            return errors
        if protocols & set(NOT_YET_PROTOCOLS):
            # Kong's stream routes (and Enterprise's WebSocket ones) are not served by the gateway yet
            names = ", ".join(f"'{p}'" for p in sorted(protocols & set(NOT_YET_PROTOCOLS)))
            errors["protocols"] = f"{names} not supported yet"
            return errors
        http_like = bool(protocols & {"http", "https", "grpc", "grpcs", "ws", "wss"})
        if self.snis and not protocols & {"https", "grpcs", "tls", "tls_passthrough", "wss"}:
            errors["snis"] = (
                "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls', 'tls_passthrough' or 'wss'"
            )
        if http_like:
            for field in ("sources", "destinations"):
                if getattr(self, field) is not None:
                    errors[field] = f"cannot set '{field}' when 'protocols' is 'http' or 'https'"
            if protocols & {"grpc", "grpcs"}:
                if self.strip_path:
                    errors["strip_path"] = "cannot set 'strip_path' when 'protocols' is 'grpc' or 'grpcs'"
                if self.methods:
                    errors["methods"] = "cannot set 'methods' when 'protocols' is 'grpc' or 'grpcs'"
            fields = ["methods", "hosts", "headers", "paths"]
            tls = bool(protocols & {"https", "grpcs", "wss"})
            if tls:
                fields.append("snis")
            if not any(getattr(self, f) for f in fields):
                named = ", ".join(f"'{f}'" for f in fields)
                which = "https" if tls else "http"
                errors["@entity"] = [f"must set one of {named} when 'protocols' is '{which}'"]
        else:
            for field in ("methods", "hosts", "paths", "headers"):
                if getattr(self, field) is not None:
                    errors[field] = f"cannot set '{field}' when 'protocols' is 'tcp', 'tls', 'tls_passthrough' or 'udp'"  # fmt: skip
            if not (self.sources or self.destinations or self.snis):
                errors["@entity"] = [
                    "must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp'"
                ]
        return errors


# -- Upstream and Target -------------------------------------------------------------------------------------
def default_healthchecks() -> dict[str, Any]:
    return {
        "threshold": 0,
        "active": {
            "type": "http",
            "timeout": 1,
            "concurrency": 10,
            "http_path": "/",
            "https_sni": None,
            "https_verify_certificate": True,
            "headers": None,
            "healthy": {"interval": 0, "http_statuses": [200, 302], "successes": 0},
            "unhealthy": {
                "interval": 0,
                "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
                "tcp_failures": 0,
                "timeouts": 0,
                "http_failures": 0,
            },
        },
        "passive": {
            "type": "http",
            "healthy": {
                "http_statuses": [
                    200,
                    201,
                    202,
                    203,
                    204,
                    205,
                    206,
                    207,
                    208,
                    226,
                    300,
                    301,
                    302,
                    303,
                    304,
                    305,
                    306,
                    307,
                    308,
                ],
                "successes": 0,
            },
            "unhealthy": {
                "http_statuses": [429, 500, 503],
                "tcp_failures": 0,
                "timeouts": 0,
                "http_failures": 0,
            },
        },
    }


def _merge_defaults(defaults: dict[str, Any], given: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise ValueError(f"{path}{key}: unknown field")
        if isinstance(defaults[key], dict) and isinstance(value, dict):
            out[key] = _merge_defaults(defaults[key], value, f"{path}{key}.")
        else:
            out[key] = value
    return out


HashOn = Literal["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"]


class Upstream(Entity):
    name: Annotated[str, AfterValidator(_host)]
    algorithm: Literal["round-robin", "consistent-hashing", "least-connections", "latency"] = "round-robin"
    hash_on: HashOn = "none"
    hash_fallback: HashOn = "none"
    hash_on_header: str | None = None
    hash_fallback_header: str | None = None
    hash_on_cookie: str | None = None
    hash_on_cookie_path: str = "/"
    hash_on_query_arg: str | None = None
    hash_fallback_query_arg: str | None = None
    hash_on_uri_capture: str | None = None
    hash_fallback_uri_capture: str | None = None
    slots: Annotated[int, AfterValidator(between(10, 65536))] = 10000
    healthchecks: dict[str, Any] = Field(default_factory=default_healthchecks)
    host_header: Host | None = None
    client_certificate: Ref | None = None
    use_srv_name: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("hash_on") not in (None, "none") and "algorithm" not in data:
            data["algorithm"] = "consistent-hashing"
        hc = data.get("healthchecks")
        if isinstance(hc, dict):
            data["healthchecks"] = _merge_defaults(default_healthchecks(), hc, "healthchecks.")
        return data

    def entity_errors(self) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        for prefix in ("hash_on", "hash_fallback"):
            kind = getattr(self, prefix)
            needs = {"header": "header", "query_arg": "query_arg", "uri_capture": "uri_capture"}.get(kind)
            if needs and not getattr(self, f"{prefix}_{needs}"):
                errors[f"{prefix}_{needs}"] = "required field missing"
        if self.hash_on == "cookie" and not self.hash_on_cookie:
            errors["hash_on_cookie"] = "required field missing"
        if self.hash_on == "none" and self.hash_fallback != "none":
            errors["hash_fallback"] = "must be 'none' when 'hash_on' is 'none'"
        if self.hash_on != "none" and self.algorithm != "consistent-hashing":
            errors["algorithm"] = "must be 'consistent-hashing' when 'hash_on' is set"
        if self.algorithm == "latency":  # Envoy has no latency (EWMA) balancer
            errors["algorithm"] = "'latency' is not supported yet"
        from isthmus.gateway.healthchecks import problems  # routing's checks of healthchecks

        if health := problems(self.healthchecks):
            errors["healthchecks"] = health
        return errors


def _target(value: str) -> str:
    """``host[:port]``; Kong adds ``:8000`` when the port is missing."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        ipaddress.IPv6Address(host)
        port = rest[1:] if rest.startswith(":") else "8000"
        between(0, 65535)(int(port))
        return f"[{host}]:{port}"
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "8000"
    if not port.isdigit():
        raise ValueError(f"Invalid target ('{value}'); not a valid hostname or ip address")
    between(0, 65535)(int(port))
    try:
        _host(host)
    except ValueError:
        raise ValueError(f"Invalid target ('{value}'); not a valid hostname or ip address") from None
    return f"{host.lower()}:{port}"


class Target(Entity):
    created_at: float = Field(default_factory=lambda: round(time.time(), 3))  # type: ignore[assignment]
    updated_at: float = Field(default_factory=lambda: round(time.time(), 3))  # type: ignore[assignment]
    upstream: Ref
    target: Annotated[str, AfterValidator(_target)]
    weight: Annotated[int, AfterValidator(between(0, 65535))] = 100


# -- Consumer and credentials --------------------------------------------------------------------------------
class Consumer(Entity):
    username: str | None = None
    custom_id: str | None = None

    def entity_errors(self) -> dict[str, Any]:
        if not self.username and not self.custom_id:
            return {"@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]}
        return {}


def random_key() -> str:
    return secrets.token_hex(16)


class KeyAuthCredential(Entity):
    consumer: Ref
    key: Annotated[str, Field(min_length=1, max_length=1024)] = Field(default_factory=random_key)
    ttl: int | None = None


class BasicAuthCredential(Entity):
    consumer: Ref
    username: Annotated[str, Field(min_length=1)]
    password: Annotated[str, Field(min_length=1)]


class JwtCredential(Entity):
    consumer: Ref
    key: str = Field(default_factory=random_key)
    secret: str = Field(default_factory=random_key)
    algorithm: Literal[
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"
    ] = "HS256"  # fmt: skip
    rsa_public_key: str | None = None

    def entity_errors(self) -> dict[str, Any]:
        if not self.algorithm.startswith("HS") and not self.rsa_public_key:
            return {"rsa_public_key": f"required field missing (algorithm {self.algorithm} is asymmetric)"}
        if self.rsa_public_key:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            try:
                load_pem_public_key(self.rsa_public_key.encode())
            except ValueError:
                return {"rsa_public_key": "invalid key"}
        return {}


class AclCredential(Entity):
    consumer: Ref
    group: Annotated[str, Field(min_length=1)]


# -- Plugin ---------------------------------------------------------------------------------------------------
class Plugin(Entity):
    name: str
    instance_name: Name | None = None
    service: Ref | None = None
    route: Ref | None = None
    consumer: Ref | None = None
    config: Annotated[dict[str, Any], AfterValidator(_bounded_json)] = Field(default_factory=dict)
    protocols: list[Annotated[str, AfterValidator(_protocol)]] = Field(
        default_factory=lambda: ["grpc", "grpcs", "http", "https"]
    )
    enabled: bool = True
    ordering: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("config") is None and "config" in data:
            data = {k: v for k, v in data.items() if k != "config"}
        return data

    def entity_errors(self) -> dict[str, Any]:
        from isthmus.gateway import plugins

        if self.name not in PLUGINS:
            return {
                "name": f"plugin '{self.name}' not enabled; add it to the 'plugins' configuration property"
            }
        if self.name not in plugins.kinds():  # refused, never accepted and ignored
            return {"name": f"plugin '{self.name}' is not supported yet"}
        if self.consumer is not None and plugins.kinds()[self.name].no_consumer:
            return {"consumer": "value must be null"}
        return plugins.config_errors(self.name, self.config)


# -- Certificates ---------------------------------------------------------------------------------------------
def _cert_problem(pem: str) -> str | None:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return "invalid certificate: x509.new: asn1 lib"
    return None


def _key_problem(pem: str) -> str | None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return "invalid key"
    return None


def _key_matches(cert_pem: str, key_pem: str) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    key = load_pem_private_key(key_pem.encode(), password=None)
    fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return bool(cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt))


class Certificate(Entity):
    cert: str
    key: str
    cert_alt: str | None = None
    key_alt: str | None = None
    snis: list[Annotated[str, AfterValidator(_wildcard_host)]] | None = None  # written as SNI entities

    def entity_errors(self) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        for cert_field, key_field in (("cert", "key"), ("cert_alt", "key_alt")):
            cert, key = getattr(self, cert_field), getattr(self, key_field)
            if (cert is None) != (key is None):
                missing = key_field if cert is not None else cert_field
                errors["@entity"] = [
                    f"all or none of these fields must be set: '{cert_field}', '{key_field}'"
                ]
                errors.setdefault(missing, "required field missing")
                continue
            if cert is None or is_reference(cert) or is_reference(key):
                continue  # a vault reference is resolved when the gateway uses it, as in Kong
            problem = _cert_problem(cert)
            if problem:
                errors[cert_field] = problem
            key_problem = _key_problem(key)
            if key_problem:
                errors[key_field] = key_problem
            if not problem and not key_problem and not _key_matches(cert, key):
                errors.setdefault("@entity", []).append(
                    "certificate does not match key"
                    if cert_field == "cert"
                    else "alternative certificate does not match key"
                )
        return errors


class Sni(Entity):
    name: Annotated[str, AfterValidator(_wildcard_host)]
    certificate: Ref


class CaCertificate(Entity):
    cert: str
    cert_digest: str | None = None

    def entity_errors(self) -> dict[str, Any]:
        from cryptography import x509

        problem = _cert_problem(self.cert)
        if problem:
            return {"cert": problem}
        cert = x509.load_pem_x509_certificate(self.cert.encode())
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            return {"cert": "certificate does not appear to be a CA because it is missing the \"CA\" basic constraint"}  # fmt: skip
        if not constraints.ca:
            return {"cert": "certificate does not appear to be a CA because it is missing the \"CA\" basic constraint"}  # fmt: skip
        if cert.not_valid_after_utc.timestamp() < time.time():
            return {"cert": 'certificate expired, "Not After" time is in the past'}
        return {}

    def fill_digest(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cert = x509.load_pem_x509_certificate(self.cert.encode())
        self.cert_digest = cert.fingerprint(hashes.SHA256()).hex()


# -- Vaults, key sets, keys, consumer groups -------------------------------------------------------------------
VAULT_REFERENCE_RE = re.compile(r"^\{vault://[a-z][a-z0-9-]*[a-z0-9]+/[^{}]+\}$")
VAULT_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]+$")
VAULTS = ("env",)  # the vault implementations bundled with Kong OSS


def is_reference(value: Any) -> bool:
    """A Kong vault reference: ``{vault://<prefix>/<resource>[/<key>][?opts][#version]}``."""
    return isinstance(value, str) and VAULT_REFERENCE_RE.match(value) is not None


def _vault_prefix(value: str) -> str:
    if not VAULT_PREFIX_RE.match(value):
        raise ValueError(f"invalid value: {value}")
    if value in VAULTS:
        raise ValueError("must not be one of: " + ", ".join(VAULTS))
    return value


class Vault(Entity):
    prefix: Annotated[str, AfterValidator(_vault_prefix)]
    name: str
    description: str | None = None
    config: Annotated[dict[str, Any], AfterValidator(_bounded_json)] = Field(default_factory=dict)

    def entity_errors(self) -> dict[str, Any]:
        if self.name not in VAULTS:
            return {"name": f"vault '{self.name}' is not installed"}
        errors: dict[str, Any] = {}
        for key, value in self.config.items():  # the env vault's fields
            if key == "prefix" and not isinstance(value, str):
                errors[key] = "expected a string"
            elif key == "base64_decode" and not isinstance(value, bool):
                errors[key] = "expected a boolean"
            elif key not in ("prefix", "base64_decode"):
                errors[key] = "unknown field"
        return {"config": errors} if errors else {}


class KeySet(Entity):
    name: str | None = None


class Key(Entity):
    set: Ref | None = None
    name: str | None = None
    kid: str
    jwk: str | None = None
    pem: dict[str, str] | None = None

    def entity_errors(self) -> dict[str, Any]:
        if (self.jwk is None) == (self.pem is None):
            which = "only one of" if self.jwk is not None else "at least one of"
            return {"@entity": [f"{which} these fields must be non-empty: 'jwk', 'pem'"]}
        if self.jwk is not None and not is_reference(self.jwk):
            try:
                jwk = json.loads(self.jwk)
            except ValueError:
                return {"@entity": ["could not json decode jwk string"]}
            if not isinstance(jwk, dict) or jwk.get("kid") != self.kid:
                return {"@entity": ["kid in jwk.kid must be equal to keys.kid"]}
        if self.pem is not None and not (self.pem.get("private_key") or self.pem.get("public_key")):
            return {"@entity": ["need to supply a PEM formatted public and/or private key."]}
        return {}


class ConsumerGroup(Entity):
    """Kong Enterprise's consumer group (kept so that decK files with them apply; no behaviour yet)."""

    name: Name


# -- validation -----------------------------------------------------------------------------------------------
_TYPE_MESSAGES = {
    "missing": "required field missing",
    "extra_forbidden": "unknown field",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected a boolean",
    "bool_parsing": "expected a boolean",
    "string_type": "expected a string",
    "list_type": "expected an array",
    "dict_type": "expected a record",
    "model_type": "expected a record",
    "model_attributes_type": "expected a record",
}


def _message(error: Any) -> str:
    kind = error["type"]
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "literal_error":
        return "expected one of: " + str(error["ctx"]["expected"]).replace("'", "").replace(" or ", ", ")
    if kind == "too_short":
        return f"length must be at least {error['ctx']['min_length']}"
    if kind == "too_long":
        return f"length must be at most {error['ctx']['max_length']}"
    if kind == "string_too_short":
        return f"length must be at least {error['ctx']['min_length']}"
    if kind == "string_too_long":
        return f"length must be at most {error['ctx']['max_length']}"
    return str(error["msg"])


def _place(fields: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    """Put ``message`` at ``loc`` in Kong's nested ``fields`` (list positions as arrays with nulls)."""
    if not loc:
        fields.setdefault("@entity", []).append(message)
        return
    head, *rest = loc
    key = str(head)
    if not rest:
        if key not in fields:
            fields[key] = message
        return
    if isinstance(rest[0], int):
        index = rest[0]
        current = fields.get(key)
        if not isinstance(current, list):
            current = []
            fields[key] = current
        while len(current) <= index:
            current.append(None)
        if len(rest) == 1:
            current[index] = message
        else:
            sub = current[index] if isinstance(current[index], dict) else {}
            current[index] = sub
            _place(sub, tuple(rest[1:]), message)
        return
    sub = fields.get(key)
    if not isinstance(sub, dict):
        sub = {}
        fields[key] = sub
    _place(sub, tuple(rest), message)


def pydantic_fields(exc: ValidationError) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for error in exc.errors():
        loc = tuple(error["loc"])
        # tagged unions and Annotated wrappers add function names to loc; keep field names and indexes
        loc = tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "union[")))
        message = _message(error)
        if not loc and message.startswith(("url: ", "healthchecks.")):  # a before-validator naming its field
            field, _, message = message.partition(": ")
            loc = tuple(field.split("."))
        _place(fields, loc, message)
    return fields


M = TypeVar("M", bound=Entity)


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or :class:`~isthmus.gateway.errors.KongError` (schema violation)."""
    if not isinstance(data, dict):
        raise schema_violation({"@entity": ["expected a record"]})
    try:
        entity = model.model_validate(data)
    except ValidationError as exc:
        raise schema_violation(pydantic_fields(exc)) from None
    except ValueError as exc:
        raise schema_violation({"@entity": [str(exc)]}) from None
    errors = entity.entity_errors()
    if errors:
        raise schema_violation(errors)
    return entity
