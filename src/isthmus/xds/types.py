"""xDS type URLs, the order in which a snapshot change is pushed, and how resources are named."""

from __future__ import annotations

from typing import Any

_PREFIX = "type.googleapis.com/"

CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Envoy's extension config discovery (ECDS): filter configurations a listener names (the gateway's credentials)
EXTENSION_CONFIG = _PREFIX + "envoy.config.core.v3.TypedExtensionConfig"

# Make before break: a cluster exists before its endpoints, both before the listeners and routes that use them.
ORDER = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
# The order of a push: a filter configuration (ECDS) changes before the routes that start using it, so a new route
# never serves before the credentials it checks.
PUSH_ORDER = (CLUSTER, ENDPOINT, LISTENER, EXTENSION_CONFIG, ROUTE, SECRET)

# In state-of-the-world xDS, LDS and CDS responses carry the full state (an omitted resource is deleted), and an
# empty list of names in a request means "everything" (legacy wildcard).
FULL_STATE = frozenset({CLUSTER, LISTENER})

_ENDPOINT_MESSAGE = "envoy.config.endpoint.v3.ClusterLoadAssignment"


def type_url_of(msg: Any) -> str:
    """The type URL ``Any.Pack`` would give ``msg``."""
    return _PREFIX + str(msg.DESCRIPTOR.full_name)


def resource_name(msg: Any) -> str:
    """The name a resource is known by in xDS (a ClusterLoadAssignment is named by its ``cluster_name``)."""
    if msg.DESCRIPTOR.full_name == _ENDPOINT_MESSAGE:
        return str(msg.cluster_name)
    return str(msg.name)


def short_name(type_url: str) -> str:
    """``Cluster`` for the cluster type URL: for logs and error messages."""
    return type_url.rsplit(".", 1)[-1]
