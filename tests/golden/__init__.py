"""Golden tests."""
