"""Subcommands of `energo`: each module defines `register(subparsers)`."""
