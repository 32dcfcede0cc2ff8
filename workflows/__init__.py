"""Workflows: they decide; activities do the I/O."""
