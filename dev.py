"""One command for the embedded default: keys, PostgreSQL, migrations, Temporal, worker, gateway.

Run ``python dev.py [--demo] [--data-dir .missive]``. Ctrl-C (or SIGTERM) stops the
gateway, the worker, Temporal and PostgreSQL, in that order. What it does lives in
``devstack/``, one module per job.
"""

import sys

from devstack.main import main

if __name__ == "__main__":
    sys.exit(main())
