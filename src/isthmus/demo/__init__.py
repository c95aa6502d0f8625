"""The local demo: a control plane, demo services and their sidecars on loopback."""
