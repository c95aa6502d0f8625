"""Tests of the REST API as a contract."""
