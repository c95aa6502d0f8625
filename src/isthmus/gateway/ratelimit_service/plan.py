"""What a gateway route asks the rate-limit service (pure): the plan of one rate-limiting configuration, carried
in the route's rate-limit descriptor, and how the service picks the client identifier from the descriptor.

The control plane writes each route's plan as the value of the descriptor entry ``kong_rl`` (compact JSON, so
every gateway that reads the same configuration computes the same Redis keys and shares the counts); Envoy adds
the entries the identifier needs: ``consumer`` (``x-consumer-id``), ``credential`` (``x-credential-identifier``),
``header`` (the ``header_name`` header), ``path`` (``:path``) when present, and always ``remote_address``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLAN_KEY = "kong_rl"
CONSUMER_KEY = "consumer"
CREDENTIAL_KEY = "credential"
HEADER_KEY = "header"
PATH_KEY = "path"
REMOTE_ADDRESS_KEY = "remote_address"
DOMAIN = "kong"
DEFAULT_MESSAGE = "API rate limit exceeded"


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int = 6379
    username: str | None = None
    password: str | None = None
    database: int = 0
    timeout_ms: int = 2000
    ssl: bool = False
    ssl_verify: bool = False


@dataclass(frozen=True)
class Plan:
    limits: tuple[tuple[str, float], ...]  # (window, limit), shortest window first
    redis: RedisTarget
    limit_by: str = "consumer"
    header_name: str | None = None
    path: str | None = None
    route_id: str | None = None  # the plugin's scope (Kong's conf.route_id / conf.service_id)
    service_id: str | None = None
    request_service_id: str | None = None  # the Kong Service of the route the request took
    fault_tolerant: bool = True
    hide_client_headers: bool = False
    error_code: int = 429
    error_message: str = DEFAULT_MESSAGE

    def encode(self) -> str:
        """The compact JSON of the descriptor entry (stable: equal plans give equal strings)."""
        body: dict[str, Any] = {
            "limits": [[w, v] for w, v in self.limits],
            "redis": {
                "host": self.redis.host,
                "port": self.redis.port,
                "username": self.redis.username,
                "password": self.redis.password,
                "database": self.redis.database,
                "timeout": self.redis.timeout_ms,
                "ssl": self.redis.ssl,
                "ssl_verify": self.redis.ssl_verify,
            },
            "limit_by": self.limit_by,
            "header_name": self.header_name,
            "path": self.path,
            "route_id": self.route_id,
            "service_id": self.service_id,
            "request_service_id": self.request_service_id,
            "fault_tolerant": self.fault_tolerant,
            "hide_client_headers": self.hide_client_headers,
            "error_code": self.error_code,
            "error_message": self.error_message,
        }
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> Plan:
        """The plan of a descriptor entry; ValueError when it is not one."""
        try:
            body = json.loads(text)
            redis = body["redis"]
            target = RedisTarget(
                host=str(redis["host"]),
                port=int(redis["port"]),
                username=redis.get("username"),
                password=redis.get("password"),
                database=int(redis.get("database") or 0),
                timeout_ms=int(redis.get("timeout") or 0),
                ssl=bool(redis.get("ssl")),
                ssl_verify=bool(redis.get("ssl_verify")),
            )
            limits = tuple((str(w), float(v)) for w, v in body["limits"])
            return cls(
                limits=limits,
                redis=target,
                limit_by=str(body.get("limit_by") or "consumer"),
                header_name=body.get("header_name"),
                path=body.get("path"),
                route_id=body.get("route_id"),
                service_id=body.get("service_id"),
                request_service_id=body.get("request_service_id"),
                fault_tolerant=bool(body.get("fault_tolerant", True)),
                hide_client_headers=bool(body.get("hide_client_headers", False)),
                error_code=int(body.get("error_code") or 429),
                error_message=str(body.get("error_message") or DEFAULT_MESSAGE),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a rate-limiting plan: {exc}") from None


def identifier(plan: Plan, entries: Mapping[str, str]) -> str:
    """Kong's ``get_identifier``: the consumer (else the credential), the credential, the service, the header's
    value or the configured path; whatever is missing falls back to the client address."""
    found: str | None = None
    if plan.limit_by == "consumer":
        found = entries.get(CONSUMER_KEY) or entries.get(CREDENTIAL_KEY)
    elif plan.limit_by == "credential":
        found = entries.get(CREDENTIAL_KEY)
    elif plan.limit_by == "service":
        found = plan.request_service_id
    elif plan.limit_by == "header":
        found = entries.get(HEADER_KEY)
    elif plan.limit_by == "path":
        path = entries.get(PATH_KEY, "").partition("?")[0]
        found = path if path and path == plan.path else None
    return found or entries.get(REMOTE_ADDRESS_KEY, "")
