"""Names the mesh generates for services (Kuma 2.x): MeshServices generated from Dataplanes, virtual IPs from
Kuma's ranges, hostnames from HostnameGenerators, and what a proxy gets from them (outbounds, clusters, DNS).

Pure parts: :mod:`~isthmus.names.generate`, :mod:`~isthmus.names.vips`, :mod:`~isthmus.names.hostnames`,
:mod:`~isthmus.names.selection`, :mod:`~isthmus.names.outbounds`, :mod:`~isthmus.names.proxy_status` (a
MeshService's ``dataplaneProxies`` and ``tls``). The control plane's loop that writes them to the store is
:mod:`~isthmus.names.controller`.
"""
