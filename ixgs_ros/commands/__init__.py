"""Subcommands of the ixgs CLI (one module each)."""
