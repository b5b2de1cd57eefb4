"""Helpers for the test suite: real services started on free ports."""
