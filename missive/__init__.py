"""Missive: the asynchronous work behind a chat product (core, no Temporal imports)."""
