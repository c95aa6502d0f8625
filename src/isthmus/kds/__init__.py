"""Multi-zone: the sync between the global control plane and the zone control planes (Kuma's KDS).

``sync.py`` (what syncs which way, names, labels, diffs; pure), ``protocol.py`` (the gRPC stream's messages
and the publishing loop), ``global_server.py`` (the global's KDS server), ``zone_client.py`` (a zone's
connection to the global), ``ownership.py`` (which writes the REST API refuses in a zone or on the global),
``insights.py`` (Zone and ZoneInsight on the global), ``api.py`` (``/tokens/zone``, ``/zones+insights``).
"""
