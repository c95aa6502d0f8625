"""MeshTrafficPermission: which clients may reach an inbound (Kuma's ``from[].default.action``)."""
