"""The policies a new mesh starts with, as in Kuma: mesh-wide timeouts, retries and connection limits.

Created in the same write as the Mesh unless ``skipCreatingInitialPolicies`` lists their kind (``'*'``: all).
Only kinds this control plane knows are created.
"""

from __future__ import annotations

from typing import Any

from isthmus.resources.registry import Registry

_MESH: dict[str, Any] = {"kind": "Mesh"}

INITIAL: dict[str, tuple[str, dict[str, Any]]] = {
    "MeshTimeout": (
        "mesh-timeout-all-{mesh}",
        {
            "targetRef": _MESH,
            "to": [
                {
                    "targetRef": _MESH,
                    "default": {
                        "connectionTimeout": "5s",
                        "idleTimeout": "1h",
                        "http": {"requestTimeout": "15s", "streamIdleTimeout": "30m"},
                    },
                }
            ],
            "from": [
                {
                    "targetRef": _MESH,
                    "default": {
                        "connectionTimeout": "10s",
                        "idleTimeout": "2h",
                        "http": {
                            "requestTimeout": "0s",
                            "streamIdleTimeout": "1h",
                            "maxStreamDuration": "0s",
                        },
                    },
                }
            ],
        },
    ),
    "MeshRetry": (
        "mesh-retry-all-{mesh}",
        {
            "targetRef": _MESH,
            "to": [
                {
                    "targetRef": _MESH,
                    "default": {
                        "tcp": {"maxConnectAttempt": 5},
                        "http": {
                            "numRetries": 5,
                            "perTryTimeout": "16s",
                            "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
                        },
                        "grpc": {
                            "numRetries": 5,
                            "perTryTimeout": "16s",
                            "backOff": {"baseInterval": "25ms", "maxInterval": "250ms"},
                        },
                    },
                }
            ],
        },
    ),
    "MeshCircuitBreaker": (
        "mesh-circuit-breaker-all-{mesh}",
        {
            "targetRef": _MESH,
            "to": [
                {
                    "targetRef": _MESH,
                    "default": {
                        "connectionLimits": {
                            "maxConnections": 1024,
                            "maxPendingRequests": 1024,
                            "maxRequests": 1024,
                            "maxRetries": 3,
                        }
                    },
                }
            ],
        },
    ),
}


def initial_policies(
    mesh: str, skip: list[str] | None, registry: Registry
) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, spec) of the policies to create with a new mesh."""
    skipped = set(skip or [])
    if "*" in skipped:
        return []
    out = []
    for kind, (name, spec) in INITIAL.items():
        if kind in skipped or registry.kind(kind) is None:
            continue
        out.append((kind, name.format(mesh=mesh), spec))
    return out
