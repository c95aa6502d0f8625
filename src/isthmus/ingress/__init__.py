"""Cross-zone traffic (issue 9): zone ingresses and what other zones' proxies get from them.

``zones.py`` reads the ZoneIngresses a control plane holds into what a mesh's proxies need (pure);
``sni.py`` the server names that carry a connection's destination through an ingress; ``available.py`` the
``availableServices`` a zone computes for its own ingresses; ``build.py`` / ``translate.py`` an ingress proxy's
configuration (TLS passthrough routed by SNI); ``remote.py`` the remote endpoints and locality priorities of a
sidecar's clusters; ``reconciler.py`` the control plane's loop for ingress proxies.
"""
