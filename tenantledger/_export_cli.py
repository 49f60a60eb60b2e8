"""`tenantledger export focus`: FOCUS CSV/Parquet for finance (filled in with the ledger's exporter)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    return None
