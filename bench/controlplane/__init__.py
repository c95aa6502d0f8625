"""Control-plane benchmark."""
