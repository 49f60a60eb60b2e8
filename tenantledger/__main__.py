"""Allows `python -m tenantledger`."""

import sys

from tenantledger.cli import main

sys.exit(main())
