"""Multi-zone benchmark (issue 9): see bench/multizone/__main__.py."""
