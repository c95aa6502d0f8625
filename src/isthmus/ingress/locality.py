"""MeshLoadBalancingStrategy ``localityAwareness`` as Envoy priorities (Kuma's rules, MADR 043).

* by default (no policy, or ``localityAwareness`` without ``crossZone``): the proxy's zone is priority 0 and every
  other zone priority 1, so other zones take traffic only when the local instances are not healthy enough;
* ``disabled: true`` (without ``crossZone``): every zone alike, priority 0;
* ``crossZone.failover``: the local zone first, then each entry whose ``from.zones`` includes the proxy's zone
  (or has no ``from``), in order, one priority each: ``to.type`` ``Any`` (every zone left), ``Only`` (those
  listed), ``AnyExcept`` (every zone left but those listed), ``None`` (no more zones). Zones no entry names get
  no traffic;
* ``crossZone.failoverThreshold.percentage``: the share of healthy local endpoints under which traffic spills
  over, as Envoy's overprovisioning factor (10000 / percentage; Envoy's own default is 140, ~71%).

Priorities are made contiguous from 0 (an empty local zone leaves the first failover zone at priority 0).
"""

from __future__ import annotations

from dataclasses import replace

from isthmus.ir.model import Endpoint
from isthmus.ir.traffic import Locality


def zone_priorities(zones: set[str], locality: Locality | None, local: str) -> dict[str, int]:
    """zone -> priority (the proxy's own zone, and "" for an endpoint of unknown zone, 0); zones absent get no
    traffic."""
    others = sorted(z for z in zones if z and z != local)
    if locality is not None and locality.disabled and locality.failover is None:
        return {z: 0 for z in ["", local, *others]}
    out = {"": 0, local: 0}
    if locality is None or locality.failover is None:
        out.update({z: 1 for z in others})
        return out
    level = 1
    for rule in locality.failover:
        if rule.from_zones and local not in rule.from_zones:
            continue
        if rule.to_type == "None":
            break
        left = [z for z in others if z not in out]
        if rule.to_type == "Only":
            picked = [z for z in left if z in rule.to_zones]
        elif rule.to_type == "AnyExcept":
            picked = [z for z in left if z not in rule.to_zones]
        else:
            picked = left
        if picked:
            out.update({z: level for z in picked})
            level += 1
    return out


def assign_priorities(
    endpoints: tuple[Endpoint, ...], locality: Locality | None, local: str
) -> tuple[Endpoint, ...]:
    zones = {e.locality for e in endpoints}
    if zones <= {"", local}:
        return tuple(replace(e, priority=0) if e.priority else e for e in endpoints)
    table = zone_priorities(zones, locality, local)
    kept = [(table[e.locality], e) for e in endpoints if e.locality in table]
    levels = {p: i for i, p in enumerate(sorted({p for p, _ in kept}))}
    return tuple(
        replace(e, priority=levels[p])
        for p, e in sorted(kept, key=lambda pe: (levels[pe[0]], pe[1].locality, pe[1].address, pe[1].port))
    )


def overprovisioning(locality: Locality | None) -> int | None:
    if locality is None or not locality.threshold_percent:
        return None
    return max(100, round(10000 / locality.threshold_percent))
