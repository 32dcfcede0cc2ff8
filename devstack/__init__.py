"""One command for the embedded default: keys, PostgreSQL, migrations, Temporal, worker, gateway.

``dev.py`` is the entry point; this package holds what it does, one module per job:
``keys`` (the secrets), ``ports`` and ``servers`` (PostgreSQL, Temporal), ``children``
(the worker, the gateway, the codec server), ``sinks`` (the notification fakes it
serves), ``stack`` (everything in order), ``banner``, ``demo`` and ``main``.
"""
