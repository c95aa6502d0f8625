"""MeshHTTPRoute: L7 routing of outbound HTTP traffic (see :mod:`.plugin`)."""
