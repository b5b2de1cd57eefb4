"""Errors shared by the host tools."""


class UsageError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits with 2."""
