"""Protocol tests against an in-process fake Envoy."""
