"""Every resource type Isthmus serves: the core types and one per policy plug-in.

This module sits above :mod:`isthmus.resources` (which defines what a resource type is) and
:mod:`isthmus.policies` (whose plug-ins bring their own types), so neither has to import the other's way up.
"""

from __future__ import annotations

from isthmus.gateway.store import resource_types as gateway_resource_types
from isthmus.policies.catalog import plugins
from isthmus.resources.dataplane import DataplaneSpec
from isthmus.resources.hostnames import HostnameGeneratorSpec
from isthmus.resources.mesh import MeshSpec
from isthmus.resources.meshservice import (
    MeshExternalServiceDocument,
    MeshMultiZoneServiceDocument,
    MeshServiceDocument,
)
from isthmus.resources.registry import KdsScope, Registry, ResourceType, Scope
from isthmus.resources.secret import SecretSpec
from isthmus.resources.zone import ZoneEgressSpec, ZoneIngressSpec, ZoneInsightSpec, ZoneSpec


def default_registry() -> Registry:
    """Mesh and Dataplane, the policy types in plug-in order, and the internal Secret type."""
    return Registry(
        [
            ResourceType(
                "Mesh",
                "meshes",
                Scope.GLOBAL,
                MeshSpec,
                spec_at_top_level=True,
                short_name="mesh",
                kds_scope=KdsScope.FROM_GLOBAL,
            ),
            ResourceType(
                "Dataplane",
                "dataplanes",
                Scope.MESH,
                DataplaneSpec,
                spec_at_top_level=True,
                short_name="dp",
                kds_scope=KdsScope.FROM_ZONE,
            ),
            *(plugin.resource_type for plugin in plugins()),
            *_name_types(),
            # the mesh CAs go to the zones (isthmus.kds filters the Secrets it syncs)
            ResourceType(
                "Secret",
                "secrets",
                Scope.MESH,
                SecretSpec,
                spec_at_top_level=True,
                internal=True,
                kds_scope=KdsScope.FROM_GLOBAL,
            ),
            ResourceType(
                "GlobalSecret",
                "globalsecrets",
                Scope.GLOBAL,
                SecretSpec,
                spec_at_top_level=True,
                internal=True,
            ),
            # multi-zone (isthmus.kds)
            ResourceType("Zone", "zones", Scope.GLOBAL, ZoneSpec, spec_at_top_level=True),
            ResourceType(
                "ZoneInsight", "zoneinsights", Scope.GLOBAL, ZoneInsightSpec, spec_at_top_level=True
            ),
            ResourceType(
                "ZoneIngress",
                "zoneingresses",
                Scope.GLOBAL,
                ZoneIngressSpec,
                spec_at_top_level=True,
                short_name="zi",
                kds_scope=KdsScope.FROM_ZONE_TO_ALL,
            ),
            ResourceType(
                "ZoneEgress",
                "zoneegresses",
                Scope.GLOBAL,
                ZoneEgressSpec,
                spec_at_top_level=True,
                short_name="ze",
                kds_scope=KdsScope.FROM_ZONE,  # Kuma: zone -> global only (its zone's proxies use it)
            ),
            *gateway_resource_types(),  # Kong's entities (isthmus.gateway), internal
        ]
    )


def _name_types() -> list[ResourceType]:
    """Kuma's service names (isthmus.names): the first three keep ``spec`` and ``status`` side by side."""
    return [
        ResourceType(
            "MeshService",
            "meshservices",
            Scope.MESH,
            MeshServiceDocument,
            spec_at_top_level=True,
            short_name="ms",
            kds_scope=KdsScope.FROM_ZONE_TO_ALL,  # Kuma: zone -> global -> other zones (labelled origin global)
        ),
        ResourceType(
            "MeshMultiZoneService",
            "meshmultizoneservices",
            Scope.MESH,
            MeshMultiZoneServiceDocument,
            spec_at_top_level=True,
            short_name="mzms",
        ),
        ResourceType(
            "MeshExternalService",
            "meshexternalservices",
            Scope.MESH,
            MeshExternalServiceDocument,
            spec_at_top_level=True,
            short_name="mes",
        ),
        ResourceType(  # the global's (Kuma's synced-* defaults) reach the zones; a zone's own stay there
            "HostnameGenerator",
            "hostnamegenerators",
            Scope.GLOBAL,
            HostnameGeneratorSpec,
            kds_scope=KdsScope.FROM_GLOBAL_OR_ZONE,
        ),
    ]
