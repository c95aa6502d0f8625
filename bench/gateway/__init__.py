"""Gateway benchmark (issue #8): see bench/gateway/__main__.py."""
