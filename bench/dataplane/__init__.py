"""Data-plane benchmark."""
