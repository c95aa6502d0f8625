"""MeshTCPRoute: weighted L4 traffic split of outbound traffic (see :mod:`.plugin`)."""
