"""Temporal plumbing shared by the worker, the gateway and the starter: client, codec."""
