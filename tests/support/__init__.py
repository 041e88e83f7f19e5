"""Helpers the tests share (imported by name, never from a conftest)."""
