"""Every resource type Isthmus serves: the core types and one per policy plug-in.

This module sits above :mod:`isthmus.resources` (which defines what a resource type is) and
:mod:`isthmus.policies` (whose plug-ins bring their own types), so neither has to import the other's way up.
"""

from __future__ import annotations

from isthmus.gateway.store import resource_types as gateway_resource_types
from isthmus.policies.catalog import plugins
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.registry import Registry, ResourceType, Scope
from isthmus.resources.secret import SecretSpec


def default_registry() -> Registry:
    """Mesh and Dataplane, the policy types in plug-in order, and the internal Secret type."""
    return Registry(
        [
            ResourceType("Mesh", "meshes", Scope.GLOBAL, MeshSpec, spec_at_top_level=True, short_name="mesh"),
            ResourceType(
                "Dataplane", "dataplanes", Scope.MESH, DataplaneSpec, spec_at_top_level=True, short_name="dp"
            ),
            *(plugin.resource_type for plugin in plugins()),
            ResourceType("Secret", "secrets", Scope.MESH, SecretSpec, spec_at_top_level=True, internal=True),
            ResourceType(
                "GlobalSecret",
                "globalsecrets",
                Scope.GLOBAL,
                SecretSpec,
                spec_at_top_level=True,
                internal=True,
            ),
            *gateway_resource_types(),  # Kong's entities (isthmus.gateway), internal
        ]
    )
