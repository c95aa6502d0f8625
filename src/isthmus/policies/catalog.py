"""Every policy plug-in Isthmus knows, in the order they edit a proxy's IR.

Each entry names a module that exports ``PLUGIN`` (see :mod:`isthmus.policies.plugin`). Adding a policy kind
means adding its package and one line here; nothing else in the pipeline changes.
"""

from __future__ import annotations

import importlib
from functools import cache

from isthmus.policies.plugin import PolicyPlugin

PLUGIN_MODULES: tuple[str, ...] = (
    "isthmus.policies.meshtrafficpermission.plugin",
    "isthmus.policies.meshhttproute.plugin",
    "isthmus.policies.meshtcproute.plugin",
    "isthmus.policies.meshtimeout.plugin",
    "isthmus.policies.meshtls.plugin",
    "isthmus.policies.meshretry.plugin",
    "isthmus.policies.meshcircuitbreaker.plugin",
    "isthmus.policies.meshhealthcheck.plugin",
    "isthmus.policies.meshloadbalancingstrategy.plugin",
    "isthmus.policies.meshfaultinjection.plugin",
    "isthmus.policies.meshratelimit.plugin",
    "isthmus.policies.meshaccesslog.plugin",
    "isthmus.policies.meshtrace.plugin",
    "isthmus.policies.meshmetric.plugin",
    "isthmus.policies.meshproxypatch.plugin",
)


@cache
def plugins() -> tuple[PolicyPlugin, ...]:
    """The plug-ins, sorted by their order (ties by kind)."""
    loaded = [importlib.import_module(name).PLUGIN for name in PLUGIN_MODULES]
    return tuple(sorted(loaded, key=lambda p: (p.order, p.resource_type.kind)))


def plugin_for(kind: str) -> PolicyPlugin | None:
    return next((p for p in plugins() if p.resource_type.kind == kind), None)
