"""Snapshots: every xDS resource of one proxy, serialised once, versioned by content.

A :class:`Resource` holds its packed ``Any`` (made once, then shared by every stream that sends it) and the
SHA-256 of its deterministic bytes. The version of a type is a short hash of its sorted (name, digest) pairs, so
equal content gives equal versions, across control-plane restarts too. The cluster version is folded into the
endpoint version: any cluster change forces an EDS push, without which Envoy leaves a changed cluster warming.

Every standard type (:data:`types.ORDER`) is present in a built snapshot, empty if no message was given, so that
an empty LDS/CDS state still has a version and is sent (an omitted listener or cluster is a deleted one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

# Imported so that their messages are in the default pool when an Any is unpacked by the reference walker.
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as _hcm
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as _secret
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as _tls  # noqa: F401
from google.protobuf import any_pb2, message, message_factory, symbol_database
from google.protobuf.descriptor import FieldDescriptor

from isthmus.xds import types

__all__ = ["Resource", "Snapshot"]

_VERSION_LENGTH = 16  # hex characters of the per-type version


@dataclass(frozen=True)
class Resource:
    name: str
    type_url: str
    packed: any_pb2.Any
    digest: str  # sha256 hex of the deterministic serialisation

    @classmethod
    def of(cls, type_url: str, msg: Any) -> Resource:
        """Serialise ``msg`` once; raises ValueError if its message type does not match ``type_url``."""
        actual = types.type_url_of(msg)
        if actual != type_url:
            raise ValueError(f"a {actual} cannot be a {types.short_name(type_url)} resource")
        data = msg.SerializeToString(deterministic=True)
        packed = any_pb2.Any(type_url=type_url, value=data)
        return cls(types.resource_name(msg), type_url, packed, hashlib.sha256(data).hexdigest())


def _version(resources: Mapping[str, Resource], salt: str = "") -> str:
    h = hashlib.sha256()
    h.update(salt.encode())
    h.update(b"\n")
    for name in sorted(resources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(resources[name].digest.encode())
        h.update(b"\n")
    return h.hexdigest()[:_VERSION_LENGTH]


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, Resource]]
    versions: Mapping[str, str]

    @classmethod
    def build(cls, messages: Mapping[str, Iterable[Any]]) -> Snapshot:
        """Pack and version ``{type_url: messages}``; raises ValueError on a duplicate name or a wrong type."""
        return cls.of_resources({t: [Resource.of(t, m) for m in msgs] for t, msgs in messages.items()})

    @classmethod
    def of_resources(cls, resources: Mapping[str, Iterable[Resource]]) -> Snapshot:
        """Version already packed ``{type_url: resources}``; raises ValueError on a duplicate name or a
        resource filed under the wrong type."""
        by_type: dict[str, Mapping[str, Resource]] = {}
        for type_url in (*types.ORDER, *(t for t in resources if t not in types.ORDER)):
            named: dict[str, Resource] = {}
            for res in resources.get(type_url, ()):
                if res.type_url != type_url:
                    raise ValueError(
                        f"a {types.short_name(res.type_url)} cannot be a {types.short_name(type_url)}"
                    )
                if res.name in named:
                    raise ValueError(f"duplicate {types.short_name(type_url)} resource {res.name!r}")
                named[res.name] = res
            by_type[type_url] = MappingProxyType(named)
        versions = {t: _version(r) for t, r in by_type.items()}
        # A changed cluster needs a fresh ClusterLoadAssignment even when the endpoints did not change.
        versions[types.ENDPOINT] = _version(by_type[types.ENDPOINT], salt=versions[types.CLUSTER])
        return cls(MappingProxyType(by_type), MappingProxyType(versions))

    def version(self, type_url: str) -> str:
        """The version of a type; "" for a type the snapshot does not have."""
        return self.versions.get(type_url, "")

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.resources.get(type_url, ()))

    def get(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, MappingProxyType({}))

    def consistency_errors(self) -> list[str]:
        """Dangling references over ADS: EDS clusters without a ClusterLoadAssignment, RDS names without a
        RouteConfiguration, SDS secret names without a Secret. Empty when the snapshot is consistent."""
        errors: list[str] = []
        endpoints = self.names(types.ENDPOINT)
        routes = self.names(types.ROUTE)
        secrets = self.names(types.SECRET)
        for name, res in sorted(self.get(types.CLUSTER).items()):
            refs = _references_of(res)
            for eds in sorted(refs.clusters - endpoints):
                errors.append(
                    f"cluster {name!r} uses EDS {eds!r} but there is no ClusterLoadAssignment {eds!r}"
                )
            errors += _dangling("cluster", name, "secret", refs.secrets - secrets)
            errors += _dangling("cluster", name, "route configuration", refs.routes - routes)
        for name, res in sorted(self.get(types.LISTENER).items()):
            refs = _references_of(res)
            errors += _dangling("listener", name, "route configuration", refs.routes - routes)
            errors += _dangling("listener", name, "secret", refs.secrets - secrets)
        return errors


_REFS_CACHE: dict[tuple[str, str], _References] = {}
_REFS_CACHE_LIMIT = 50_000


def _references_of(res: Resource) -> _References:
    """The references of a resource, memoised by content digest: proxies share most of their resources."""
    key = (res.type_url, res.digest)
    refs = _REFS_CACHE.get(key)
    if refs is None:
        refs = _References()
        refs.walk(_MESSAGE_CLASSES[res.type_url].FromString(res.packed.value))
        if len(_REFS_CACHE) >= _REFS_CACHE_LIMIT:
            _REFS_CACHE.clear()
        _REFS_CACHE[key] = refs
    return refs


def _dangling(owner_kind: str, owner: str, kind: str, missing: set[str]) -> Iterator[str]:
    for ref in sorted(missing):
        yield f"{owner_kind} {owner!r} references {kind} {ref!r}, which is not in the snapshot"


_CLUSTER = cluster_pb2.Cluster.DESCRIPTOR.full_name
_RDS = _hcm.Rds.DESCRIPTOR.full_name
_SDS = _secret.SdsSecretConfig.DESCRIPTOR.full_name
_ANY = any_pb2.Any.DESCRIPTOR.full_name
_ANY_PREFIX = "type.googleapis.com/"
_MESSAGE_CLASSES: dict[str, Any] = {types.CLUSTER: cluster_pb2.Cluster, types.LISTENER: listener_pb2.Listener}


class _References:
    """Names a message refers to over ADS, found by walking all its fields (typed configs in ``Any`` included,
    when their message type is known to the protobuf runtime)."""

    def __init__(self) -> None:
        self.clusters: set[str] = set()  # EDS service names
        self.routes: set[str] = set()
        self.secrets: set[str] = set()

    def walk(self, msg: Any) -> None:
        full_name = msg.DESCRIPTOR.full_name
        if full_name == _ANY:
            self._merge(_references_in_any(msg.type_url, msg.value))
            return
        if full_name == _CLUSTER and msg.type == cluster_pb2.Cluster.EDS:
            eds = msg.eds_cluster_config
            if not eds.HasField("eds_config") or eds.eds_config.HasField("ads"):
                self.clusters.add(eds.service_name or msg.name)
        elif full_name == _RDS and msg.config_source.HasField("ads"):
            self.routes.add(msg.route_config_name)
        elif full_name == _SDS and msg.sds_config.HasField("ads"):
            self.secrets.add(msg.name)
        for field, value in msg.ListFields():
            if field.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            if field.message_type.GetOptions().map_entry:
                if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value.values():
                        self.walk(item)
            elif isinstance(value, message.Message):
                self.walk(value)
            else:  # a repeated field
                for item in value:
                    self.walk(item)

    def _merge(self, other: _References) -> None:
        self.clusters |= other.clusters
        self.routes |= other.routes
        self.secrets |= other.secrets


_ANY_REFS_CACHE: dict[tuple[str, bytes], _References] = {}


def _references_in_any(type_url: str, value: bytes) -> _References:
    """References inside a packed typed config, memoised by its bytes: filters repeat across proxies."""
    key = (type_url, value)
    refs = _ANY_REFS_CACHE.get(key)
    if refs is None:
        refs = _References()
        inner = _unpack(any_pb2.Any(type_url=type_url, value=value))
        if inner is not None:
            refs.walk(inner)
        if len(_ANY_REFS_CACHE) >= _REFS_CACHE_LIMIT:
            _ANY_REFS_CACHE.clear()
        _ANY_REFS_CACHE[key] = refs
    return refs


def _unpack(packed: any_pb2.Any) -> Any | None:
    if not packed.type_url.startswith(_ANY_PREFIX):
        return None
    try:
        descriptor = symbol_database.Default().pool.FindMessageTypeByName(packed.type_url[len(_ANY_PREFIX) :])
    except KeyError:
        return None  # a message type nobody imported cannot refer to anything we serve
    msg = message_factory.GetMessageClass(descriptor)()
    msg.ParseFromString(packed.value)
    return msg
