"""What syncs between the global and the zone control planes, how it is named and labelled, and the diffs.

Pure functions over store records and their wire form (``{"type", "mesh", "name", "labels", "spec"}``).

* Global -> zone ("downstream"): records of kinds whose :attr:`ResourceType.sync` is ``FROM_GLOBAL`` or
  ``FROM_GLOBAL_OR_ZONE`` made on the global (not copies from a zone), filtered per kind (of the Secrets only
  the mesh CAs), labelled ``kuma.io/origin: global``; and ``FROM_ZONE_TO_ALL`` records of *other* zones as the
  global holds them. Names are kept.
* Zone -> global ("upstream"): records of kinds ``FROM_ZONE`` and ``FROM_ZONE_TO_ALL`` made in the zone (not
  copies), labelled ``kuma.io/origin: zone`` and ``kuma.io/zone: <zone>``. On the global each gets a name
  unique per zone, ``<name>-<hash(mesh, zone, name)>`` as Kuma names them, and ``kuma.io/display-name: <name>``.

Each side remembers what the other holds as ``{key: digest}`` and sends only the difference (:func:`diff`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from isthmus.resources.registry import KdsScope, Registry, ResourceType
from isthmus.store.base import Record

ORIGIN = "kuma.io/origin"
ZONE = "kuma.io/zone"
DISPLAY_NAME = "kuma.io/display-name"
ORIGIN_GLOBAL = "global"
MANAGED_BY = "kuma.io/managed-by"  # the generator of the zone that made it: never a receiving zone's own
RELABELLED_DOWN = frozenset({"MeshService"})
ZONE_STATUS = frozenset({"MeshService"})  # a zone keeps its own status on copies (VIPs, generated hostnames)
ORIGIN_ZONE = "zone"

DOWNSTREAM = (KdsScope.FROM_GLOBAL, KdsScope.FROM_GLOBAL_OR_ZONE)
UPSTREAM = (KdsScope.FROM_ZONE, KdsScope.FROM_ZONE_TO_ALL)

Key = tuple[str, str, str]  # (type, mesh, name)
Wire = dict[str, Any]

_CA_SECRET = re.compile(r"^[^.]+\.ca-builtin-cert-.+$")

# Per kind, which records of a synced kind travel (default: all of them)
RECORD_FILTERS: dict[str, Callable[[Record], bool]] = {
    "Secret": lambda r: bool(_CA_SECRET.match(r.name)),  # the mesh CAs, never token keys or CA-switch state
}


def key_of(wire: Mapping[str, Any]) -> Key:
    return (str(wire["type"]), str(wire.get("mesh", "")), str(wire["name"]))


def key_text(key: Key) -> str:
    return "/".join(key)


def parse_key(text: str) -> Key:
    parts = text.split("/")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ValueError(f"bad resource key {text!r}")
    return parts[0], parts[1], parts[2]


def wire_of(record: Record, labels: Mapping[str, str] | None = None) -> Wire:
    return {
        "type": record.type,
        "mesh": record.mesh,
        "name": record.name,
        "labels": dict(sorted((labels if labels is not None else record.labels).items())),
        "spec": record.spec,
    }


def digest(wire: Mapping[str, Any]) -> str:
    content = [
        wire["type"],
        wire.get("mesh", ""),
        wire["name"],
        wire.get("labels") or {},
        wire.get("spec") or {},
    ]
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[
        :32
    ]


# -- which kinds ---------------------------------------------------------------------------------------------
def downstream_types(registry: Registry) -> list[ResourceType]:
    """Kinds the global sends to zones (zone-made kinds that sync across zones included)."""
    return [t for t in registry.all() if t.sync in DOWNSTREAM or t.sync is KdsScope.FROM_ZONE_TO_ALL]


def upstream_types(registry: Registry) -> list[ResourceType]:
    return [t for t in registry.all() if t.sync in UPSTREAM]


def _passes(record: Record) -> bool:
    keep = RECORD_FILTERS.get(record.type)
    return keep is None or keep(record)


# -- global side ---------------------------------------------------------------------------------------------
def downstream_wire(rtype: ResourceType, record: Record, zone: str) -> Wire | None:
    """What the global sends zone ``zone`` for ``record`` (None: nothing)."""
    if not _passes(record):
        return None
    labels = record.labels
    if rtype.sync in DOWNSTREAM:
        if labels.get(ORIGIN) == ORIGIN_ZONE:
            return None  # a copy of a zone's record
        out = {**labels, ORIGIN: ORIGIN_GLOBAL}
        out.setdefault(DISPLAY_NAME, record.name)
        return wire_of(record, out)
    if rtype.sync is KdsScope.FROM_ZONE_TO_ALL:
        owner = labels.get(ZONE)
        if not owner or owner == zone:
            return None
        if record.type in RELABELLED_DOWN:  # Kuma (MADR 057): origin global in the other zones
            down = {k: v for k, v in labels.items() if k != MANAGED_BY}
            return wire_of(record, {**down, ORIGIN: ORIGIN_GLOBAL})
        return wire_of(record)
    return None


_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # no vowels: a suffix never spells a word


def hash_suffix(*parts: str) -> str:
    """16 characters of a stable hash of ``parts``."""
    value = int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest()[:12], "big")
    out = []
    for _ in range(16):
        value, rem = divmod(value, len(_ALPHABET))
        out.append(_ALPHABET[rem])
    return "".join(out)


def global_name(name: str, mesh: str, zone: str) -> str:
    """The name on the global of a zone's resource: unique per zone, at most 253 characters."""
    head = name[:236].rstrip(".-")
    return f"{head}-{hash_suffix(mesh, zone, name)}"


def upstream_on_global(wire: Mapping[str, Any], zone: str) -> Wire:
    """A zone's record as the global stores it."""
    name = str(wire["name"])
    labels = {**(wire.get("labels") or {}), ORIGIN: ORIGIN_ZONE, ZONE: zone}
    labels.setdefault(DISPLAY_NAME, name)
    return {
        "type": wire["type"],
        "mesh": wire.get("mesh", ""),
        "name": global_name(name, str(wire.get("mesh", "")), zone),
        "labels": dict(sorted(labels.items())),
        "spec": wire.get("spec") or {},
    }


def zone_key_on_global(record: Record, zone: str) -> Key | None:
    """The zone-local key of a global record copied from ``zone`` (None: not from that zone)."""
    labels = record.labels
    if labels.get(ORIGIN) != ORIGIN_ZONE or labels.get(ZONE) != zone:
        return None
    return (record.type, record.mesh, labels.get(DISPLAY_NAME, record.name))


# -- zone side -----------------------------------------------------------------------------------------------
def is_copy_in_zone(record: Record, zone: str) -> bool:
    """A record the zone got from the global (a global one, or another zone's): read-only there."""
    labels = record.labels
    if labels.get(ORIGIN) == ORIGIN_GLOBAL:
        return True
    owner = labels.get(ZONE)
    return bool(owner) and owner != zone


def upstream_wire(rtype: ResourceType, record: Record, zone: str) -> Wire | None:
    """What zone ``zone`` sends the global for its own ``record`` (None: nothing)."""
    if rtype.sync not in UPSTREAM or is_copy_in_zone(record, zone) or not _passes(record):
        return None
    labels = {**record.labels, ORIGIN: ORIGIN_ZONE, ZONE: zone}
    wire = wire_of(record, labels)
    if record.type == "ZoneIngress" and not record.spec.get("zone"):
        wire["spec"] = {**record.spec, "zone": zone}
    return wire


# -- diffs ---------------------------------------------------------------------------------------------------
@dataclass
class Changes:
    upsert: list[Wire] = field(default_factory=list)
    remove: list[Key] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upsert or self.remove)

    def to_message(self) -> dict[str, Any]:
        return {"upsert": self.upsert, "remove": [list(k) for k in self.remove]}

    @staticmethod
    def from_message(body: Mapping[str, Any]) -> Changes:
        upsert = body.get("upsert") or []
        remove = body.get("remove") or []
        if not isinstance(upsert, list) or not isinstance(remove, list):
            raise ValueError("changes: upsert and remove must be lists")
        for wire in upsert:
            if not isinstance(wire, dict) or not isinstance(wire.get("spec", {}), dict):
                raise ValueError("changes: every upsert must be a resource object")
            key_of(wire)
        keys: list[Key] = []
        for item in remove:
            if not isinstance(item, list) or len(item) != 3 or not all(isinstance(p, str) for p in item):
                raise ValueError("changes: every removal must be [type, mesh, name]")
            keys.append((item[0], item[1], item[2]))
        return Changes(list(upsert), keys)


def diff(have: Mapping[Key, str], want: Mapping[Key, Wire], kinds: Iterable[str] | None = None) -> Changes:
    """What turns ``have`` (key -> digest, what the other side holds) into ``want``. With ``kinds``, only keys
    of those kinds are compared (the others are left as they are)."""
    scope = set(kinds) if kinds is not None else None
    changes = Changes()
    for key, wire in sorted(want.items()):
        if (scope is None or key[0] in scope) and have.get(key) != digest(wire):
            changes.upsert.append(wire)
    for key in sorted(have):
        if (scope is None or key[0] in scope) and key not in want:
            changes.remove.append(key)
    return changes


def apply_to(have: dict[Key, str], changes: Changes) -> None:
    """Record that the other side now holds ``changes``."""
    for wire in changes.upsert:
        have[key_of(wire)] = digest(wire)
    for key in changes.remove:
        have.pop(key, None)
