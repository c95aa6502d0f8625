"""Leaving a zone through its egress (issue 9): ``ZoneEgress`` and ``Mesh.routing.zoneEgress``.

``node.py`` the egress's xDS node id; ``route.py`` what a sidecar of a mesh with ``routing.zoneEgress`` does
(other zones and MeshExternalServices through its zone's egress); ``build.py`` / ``translate.py`` an egress's
configuration (TLS passthrough by SNI to other zones' ingresses; mesh mTLS terminated for MeshExternalServices,
then their own upstream); ``reconciler.py`` the control plane's loop for egress proxies; ``auth.py`` their ADS
authentication (a data-plane token of type ``egress``).
"""
