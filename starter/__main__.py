"""Entry point of ``python -m starter``; see starter/cli.py."""

import sys

from starter.cli import main

if __name__ == "__main__":
    # sys.exit only after asyncio.run has returned inside main() (sdk-python #300).
    sys.exit(main())
