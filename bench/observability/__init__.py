"""Observability benchmark (issue #10): the mesh path with MeshMetric, MeshAccessLog and MeshTrace."""
